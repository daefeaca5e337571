//! The `/orders` routes. Every query binds the client's values as parameters; the only SQL text
//! that varies is column names and sort directions picked from fixed lists here ([`Column`],
//! [`SORTABLE`]), never copied from the request.
//!
//! Rows leave PostgreSQL as `to_jsonb(orders)`: the response has the table's own column names
//! and types (`amount` as a JSON number, timestamps in ISO 8601), with no Rust row type to
//! keep in step with the schema.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use protocol::filter::{Predicate, SqlTest};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tracing::warn;

use crate::{
    body::{self, Column, Field},
    problem::Problem,
};

/// `GET /orders` returns this many rows unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit`: a bigger page is one the client should ask for in parts.
const MAX_LIMIT: i64 = 1000;
/// The table's columns and their SQL types: what `order=<column>.<asc|desc>` may sort by and
/// PostgREST filters may test, and the type a filter's literal is cast to.
const COLUMNS: [(&str, &str); 7] = [
    ("id", "bigint"),
    ("customer_name", "text"),
    ("product_name", "text"),
    ("status", "text"),
    ("amount", "numeric"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
];
/// Columns whose plain `column=value` is an equality test (other columns take only
/// PostgREST filters, `amount=gte.100`).
const PLAIN_EQUALITY: [&str; 2] = ["status", "customer_name"];

/// The column named `name`, as this module's own `'static` text, and its SQL type.
fn column(name: &str) -> Option<(&'static str, &'static str)> {
    COLUMNS.into_iter().find(|(c, _)| *c == name)
}

fn column_names() -> String {
    COLUMNS.map(|(c, _)| c).join(", ")
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) pool: PgPool,
    /// `API_MAX_BODY_BYTES`, for the 413 message (the limit itself is a layer).
    pub(crate) max_body_bytes: usize,
}

type Result<T, E = Problem> = std::result::Result<T, E>;

/// The `/orders` routes.
pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/orders", get(list).post(create))
        .route("/orders/{id}", get(read).put(update).patch(update).delete(remove))
        .route("/orders/{id}/amount", post(add_amount))
        .with_state(app)
}

fn json(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// The body, or the problem with reading it (413 past the limit).
fn body(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(app.max_body_bytes)
        } else {
            Problem::bad_request(rejection.body_text())
        }
    })
}

fn order_id(raw: &str) -> Result<i64> {
    raw.parse().map_err(|_| Problem::bad_request(format!("the order id must be an integer, not {raw:?}")).field("id"))
}

/// The query of `GET /orders`, checked.
#[derive(Debug)]
struct ListQuery {
    /// ANDed: PostgREST filters and plain equalities (as `eq` filters).
    filters: Vec<Predicate>,
    limit: i64,
    sort: &'static str,
    descending: bool,
}

impl ListQuery {
    fn parse(raw: Option<&str>) -> Result<Self> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| Problem::bad_request(format!("the query string cannot be read: {e}")))?;
        let mut query = Self { filters: Vec::new(), limit: DEFAULT_LIMIT, sort: "updated_at", descending: true };
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    query.limit = value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                        Problem::bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}")).field("limit")
                    })?;
                }
                "order" => {
                    let bad = || {
                        Problem::bad_request(format!(
                            "order must be <column>.asc or <column>.desc, with a column among {}",
                            column_names()
                        ))
                        .field("order")
                    };
                    let (column, direction) = value.split_once('.').unwrap_or((&value, "asc"));
                    query.sort = self::column(column).ok_or_else(bad)?.0;
                    query.descending = match direction {
                        "asc" => false,
                        "desc" => true,
                        _ => return Err(bad()),
                    };
                }
                name if column(name).is_some() => query.filters.push(filter(name, &value)?),
                _ => {
                    return Err(Problem::bad_request(format!(
                        "unknown query parameter {key:?}: use limit, order, or a column ({}) to filter on",
                        column_names()
                    ))
                    .field(&key));
                }
            }
        }
        Ok(query)
    }
}

/// `name=value` as a filter: a PostgREST filter when `value` is one (`eq.paid`, `gte.100`,
/// `in.(a,b)`), else, for [`PLAIN_EQUALITY`] columns, the value itself is an equality test
/// (`status=paid`).
fn filter(name: &str, value: &str) -> Result<Predicate> {
    let bad = |detail: String| Problem::bad_request(detail).field(name);
    let predicate = match Predicate::parse(&format!("{name}={value}")) {
        Ok(p) => p,
        Err(_) if PLAIN_EQUALITY.contains(&name) => {
            Predicate::parse(&format!("{name}=eq.{value}")).map_err(|e| bad(e.to_string()))?
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    // No column of the table is boolean: PostgreSQL would reject `IS TRUE` on one with an error
    // that is the client's, so it is refused here.
    if let (_, SqlTest::Is("TRUE" | "FALSE" | "UNKNOWN")) = predicate.sql_test() {
        return Err(bad(format!("{name} is not a boolean column: use is.null or is.not_null")));
    }
    Ok(predicate)
}

/// Appends ` AND <predicate>` to `sql`: the column and its type from [`COLUMNS`], the
/// operator from the filter module's fixed set, every literal bound.
fn push_predicate(sql: &mut QueryBuilder<'_, Postgres>, predicate: &Predicate) {
    let (col, ty) = column(predicate.column()).expect("filters are made only for known columns");
    let (negated, test) = predicate.sql_test();
    sql.push(if negated { " AND NOT (" } else { " AND (" });
    match test {
        SqlTest::Compare { op, value } => {
            sql.push(format_args!("o.{col} {op} CAST(")).push_bind(value.to_owned()).push(format_args!(" AS {ty})"));
        }
        SqlTest::In(values) => {
            let values: Vec<String> = values.into_iter().map(str::to_owned).collect();
            sql.push(format_args!("o.{col} = ANY(CAST(")).push_bind(values).push(format_args!(" AS {ty}[]))"));
        }
        SqlTest::Is(what) => {
            sql.push(format_args!("o.{col} IS {what}"));
        }
        SqlTest::Like { pattern, case_insensitive } => {
            // Numbers and timestamps match by their text, as the filter module's own matching does.
            let like = if case_insensitive { "ILIKE" } else { "LIKE" };
            sql.push(format_args!("o.{col}::text {like} ")).push_bind(pattern);
        }
    }
    sql.push(")");
}

/// `GET /orders`: the newest-updated orders first, optionally only those matching filters:
/// `status=paid`, `customer_name=Ada` (equality), or PostgREST filters on any column
/// (`amount=gte.100`, `id=in.(1,2)`, `product_name=ilike.*lamp*`).
async fn list(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Result<Response> {
    let query = ListQuery::parse(raw.as_deref())?;
    let mut sql = QueryBuilder::<Postgres>::new("SELECT to_jsonb(o) FROM orders o WHERE true");
    for predicate in &query.filters {
        push_predicate(&mut sql, predicate);
    }
    // `sort` and the direction come from the fixed lists above; the id breaks ties, so pages
    // are stable.
    let direction = if query.descending { "DESC" } else { "ASC" };
    sql.push(format_args!(" ORDER BY o.{} {direction}, o.id {direction} LIMIT ", query.sort));
    sql.push_bind(query.limit);
    let rows: Vec<Value> = sql.build_query_scalar().fetch_all(&app.pool).await.map_err(|e| Problem::from_db(&e))?;
    Ok(json(StatusCode::OK, &Value::Array(rows)))
}

/// `POST /orders`: 201 with the new order and its `Location`. `customer_name` and
/// `product_name` are required; `id`, `status` and `amount` take the table's defaults.
async fn create(State(app): State<Arc<App>>, raw: Result<Bytes, BytesRejection>) -> Result<Response> {
    let order = body::order(&body(&app, raw)?, true)?;
    for required in [Column::CustomerName, Column::ProductName] {
        if !order.has(required) {
            return Err(Problem::invalid(format!("{} is required", required.name())).field(required.name()));
        }
    }
    let mut sql = QueryBuilder::<Postgres>::new("INSERT INTO orders (");
    let mut columns = sql.separated(", ");
    if order.id.is_some() {
        columns.push("id");
    }
    for (column, _) in &order.fields {
        columns.push(column.name());
    }
    sql.push(") VALUES (");
    let mut values = sql.separated(", ");
    if let Some(id) = order.id {
        values.push_bind(id);
    }
    for (_, field) in order.fields {
        match field {
            Field::Text(s) => values.push_bind(s),
            Field::Integer(n) => values.push_bind(n),
        };
    }
    sql.push(") RETURNING to_jsonb(orders.*)");
    let row: Value = sql.build_query_scalar().fetch_one(&app.pool).await.map_err(|e| Problem::from_db(&e))?;
    let id = row["id"].as_i64().unwrap_or_default();
    if order.id.is_some() {
        advance_id_sequence(&app.pool, id).await;
    }
    let mut response = json(StatusCode::CREATED, &row);
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// After an insert with a chosen id, moves the id sequence past it: otherwise a later insert
/// without an id would be given the same one, and fail as a duplicate.
async fn advance_id_sequence(pool: &PgPool, id: i64) {
    let advanced = sqlx::query(
        "SELECT setval(s, $1) FROM pg_get_serial_sequence('orders', 'id') s \
         WHERE $1 > COALESCE(pg_sequence_last_value(s::regclass), 0)",
    )
    .bind(id)
    .execute(pool)
    .await;
    if let Err(e) = advanced {
        // The order exists; only later id-less inserts may collide (and get a 409).
        warn!(error = %e, id, "could not advance the orders id sequence");
    }
}

/// `GET /orders/{id}`.
async fn read(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response> {
    let id = order_id(&id)?;
    let row: Option<Value> = sqlx::query_scalar("SELECT to_jsonb(o) FROM orders o WHERE o.id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await
        .map_err(|e| Problem::from_db(&e))?;
    row.map(|r| json(StatusCode::OK, &r)).ok_or_else(|| Problem::not_found(id))
}

/// `PUT`/`PATCH /orders/{id}`: sets the members given among `customer_name`, `product_name`,
/// `status` and `amount`, leaving the others; the updated order. An empty object changes
/// nothing and returns the order as it is.
async fn update(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let id = order_id(&id)?;
    let order = body::order(&body(&app, raw)?, false)?;
    if order.fields.is_empty() {
        return read(State(app), Path(id.to_string())).await;
    }
    let mut sql = QueryBuilder::<Postgres>::new("UPDATE orders SET ");
    let mut sets = sql.separated(", ");
    for (column, field) in order.fields {
        sets.push(format_args!("{} = ", column.name()));
        match field {
            Field::Text(s) => sets.push_bind_unseparated(s),
            Field::Integer(n) => sets.push_bind_unseparated(n),
        };
    }
    sql.push(" WHERE id = ").push_bind(id).push(" RETURNING to_jsonb(orders.*)");
    let row: Option<Value> =
        sql.build_query_scalar().fetch_optional(&app.pool).await.map_err(|e| Problem::from_db(&e))?;
    row.map(|r| json(StatusCode::OK, &r)).ok_or_else(|| Problem::not_found(id))
}

/// `DELETE /orders/{id}`: 204.
async fn remove(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response> {
    let id = order_id(&id)?;
    let deleted = sqlx::query("DELETE FROM orders WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .map_err(|e| Problem::from_db(&e))?;
    if deleted.rows_affected() == 0 {
        return Err(Problem::not_found(id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /orders/{id}/amount` with `{"amount": n}`: adds `n` (may be negative) in one
/// statement, so concurrent additions never lose one another; the updated order.
async fn add_amount(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let id = order_id(&id)?;
    let delta = body::amount_delta(&body(&app, raw)?)?;
    let row: Option<Value> =
        sqlx::query_scalar("UPDATE orders SET amount = amount + $1 WHERE id = $2 RETURNING to_jsonb(orders.*)")
            .bind(delta)
            .bind(id)
            .fetch_optional(&app.pool)
            .await
            .map_err(|e| Problem::from_db(&e))?;
    row.map(|r| json(StatusCode::OK, &r)).ok_or_else(|| Problem::not_found(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_are_checked() {
        let q = ListQuery::parse(None).unwrap();
        assert_eq!((q.limit, q.sort, q.descending), (100, "updated_at", true));
        let q =
            ListQuery::parse(Some("status=paid&limit=5&order=amount.asc&customer_name=Ada%20L&amount=gte.5")).unwrap();
        let filters: Vec<_> = q.filters.iter().map(Predicate::as_str).collect();
        assert_eq!(filters, ["status=eq.paid", "customer_name=eq.Ada L", "amount=gte.5"]);
        assert_eq!((q.limit, q.sort, q.descending), (5, "amount", false));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "order=secret.desc",
            "order=id.sideways",
            "colour=red",
            "amount=100",
            "id=between.1.2",
            "status=is.true",
        ] {
            assert_eq!(ListQuery::parse(Some(bad)).unwrap_err().status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
