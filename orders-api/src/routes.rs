//! The `/orders` routes. Every query binds the client's values as parameters; the only SQL text
//! that varies is column names and sort directions picked from fixed lists ([`Column`],
//! [`query::COLUMNS`]), never copied from the request.
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
use protocol::filter::{Predicate, Select, SqlTest};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tracing::warn;

use crate::{
    body::{self, Column, Field},
    cursor::Cursor,
    problem::Problem,
    query::{self, ListQuery, column},
};

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

/// The `{id}` of a path: an integer (`7`, or `7.0` as some clients write integers).
fn order_id(raw: &str) -> Result<i64> {
    raw.parse()
        .ok()
        .or_else(|| raw.parse().ok().and_then(body::exact))
        .ok_or_else(|| Problem::bad_request(format!("the order id must be an integer, not {raw:?}")).field("id"))
}

/// Appends ` AND <predicate>` to `sql`: the column and its type from [`query::COLUMNS`], the
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
/// (`amount=gte.100`, `id=in.(1,2)`, `product_name=ilike.*lamp*`); `select` picks columns.
/// When more rows follow, a `Link: <…>; rel="next"` header gives the next page's URL.
#[utoipa::path(get, path = "/orders", tag = "orders", params(crate::openapi::ListParams), responses(
    (status = 200, description = "A page of orders", body = [crate::openapi::Order],
        headers(("Link" = String, description = "`</orders?…&cursor=…>; rel=\"next\"` (RFC 8288) when more rows follow"))),
    (status = 400, description = "A parameter, filter, select or cursor that cannot be read", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 422, description = "A filter literal that is not of its column's type", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL is down or the orders table is missing", body = crate::openapi::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn list(State(app): State<Arc<App>>, RawQuery(raw): RawQuery) -> Result<Response> {
    let query = ListQuery::parse(raw.as_deref())?;
    let (sort, _) = query.sort;
    // The sort value goes out as PostgreSQL's own text of it, so the cursor casts back to
    // exactly that value (a number or timestamp through JSON might not).
    let mut sql = QueryBuilder::<Postgres>::new(format!("SELECT to_jsonb(o), o.{sort}::text FROM orders o WHERE true"));
    for predicate in &query.filters {
        push_predicate(&mut sql, predicate);
    }
    if let Some(after) = &query.after {
        push_after(&mut sql, query.sort, query.descending, after);
    }
    // `sort` and the direction come from fixed lists; the id breaks ties, so the order is
    // total and a cursor names one place in it. NULLs (a table upgraded from the original
    // design may hold some) sort last ascending and first descending, PostgreSQL's default,
    // spelled out because `push_after` relies on it.
    let direction = if query.descending { "DESC NULLS FIRST" } else { "ASC NULLS LAST" };
    let id_direction = if query.descending { "DESC" } else { "ASC" };
    sql.push(format_args!(" ORDER BY o.{sort} {direction}, o.id {id_direction} LIMIT "));
    // One row more than the page tells whether another page follows.
    sql.push_bind(query.limit + 1);
    let mut rows: Vec<(Value, Option<String>)> =
        sql.build_query_as().fetch_all(&app.pool).await.map_err(|e| Problem::from_db(&e))?;
    let limit = usize::try_from(query.limit).expect("limit is checked to be 1 to 1000");
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = match rows.last() {
        Some((last, value)) if more => Some(Cursor {
            order: query.order(),
            filters: query.fingerprint(),
            value: value.clone(),
            id: last["id"].as_i64().unwrap_or_default(),
        }),
        _ => None,
    };
    let page = rows.into_iter().map(|(row, _)| project(&query.select, row)).collect();
    let mut response = json(StatusCode::OK, &Value::Array(page));
    if let Some(next) = next {
        let mut params = query.kept;
        params.push(("cursor".to_owned(), next.encode()));
        let link = format!("</orders?{}>; rel=\"next\"", serde_urlencoded::to_string(&params).unwrap_or_default());
        if let Ok(link) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// Appends the keyset condition: rows after `after` in the order `ORDER BY <sort> <dir> NULLS
/// (LAST for ASC, FIRST for DESC), id <dir>`. Rows written elsewhere meanwhile never shift it.
fn push_after(
    sql: &mut QueryBuilder<'_, Postgres>,
    (col, ty): (&'static str, &'static str),
    descending: bool,
    after: &Cursor,
) {
    let id = after.id;
    match (&after.value, descending) {
        // Ascending: larger values, then equal ones with a larger id, then every NULL.
        (Some(v), false) => {
            sql.push(format_args!(" AND (o.{col} > CAST(")).push_bind(v.clone()).push(format_args!(" AS {ty})"));
            sql.push(format_args!(" OR (o.{col} = CAST(")).push_bind(v.clone()).push(format_args!(" AS {ty})"));
            sql.push(" AND o.id > ").push_bind(id).push(format_args!(") OR o.{col} IS NULL)"));
        }
        // Ascending, among the NULLs at the end: only the rest of them.
        (None, false) => {
            sql.push(format_args!(" AND (o.{col} IS NULL AND o.id > ")).push_bind(id).push(")");
        }
        // Descending: smaller values, then equal ones with a smaller id (the NULLs came first).
        (Some(v), true) => {
            sql.push(format_args!(" AND (o.{col} < CAST(")).push_bind(v.clone()).push(format_args!(" AS {ty})"));
            sql.push(format_args!(" OR (o.{col} = CAST(")).push_bind(v.clone()).push(format_args!(" AS {ty})"));
            sql.push(" AND o.id < ").push_bind(id).push("))");
        }
        // Descending, among the NULLs at the start: the rest of them, then every value.
        (None, true) => {
            sql.push(format_args!(" AND ((o.{col} IS NULL AND o.id < ")).push_bind(id);
            sql.push(format_args!(") OR o.{col} IS NOT NULL)"));
        }
    }
}

/// The row with only the selected columns (and `id`).
fn project(select: &Select, row: Value) -> Value {
    match row {
        Value::Object(map) if !select.is_all() => Value::Object(select.project(&map)),
        row => row,
    }
}

/// `POST /orders`: 201 with the new order and its `Location`. `customer_name` and
/// `product_name` are required; `id`, `status` and `amount` take the table's defaults.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = crate::openapi::NewOrder, responses(
    (status = 201, description = "The new order", body = crate::openapi::Order,
        headers(("Location" = String, description = "`/orders/{id}`"))),
    (status = 400, description = "Not JSON, or an amount that is not an integer", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 409, description = "An order with this id exists", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 413, description = "A body over API_MAX_BODY_BYTES", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 422, description = "A member unknown, missing or of the wrong type; a broken check constraint", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL is down or the orders table is missing", body = crate::openapi::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn create(State(app): State<Arc<App>>, raw: Result<Bytes, BytesRejection>) -> Result<Response> {
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

/// `GET /orders/{id}`, optionally with `select`.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id"), crate::openapi::ReadParams), responses(
    (status = 200, description = "The order", body = crate::openapi::Order),
    (status = 400, description = "An id that is not an integer, or a bad select", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 404, description = "No order has this id", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL is down or the orders table is missing", body = crate::openapi::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn read(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let id = order_id(&id)?;
    let select = query::select_only(raw.as_deref())?;
    let row = fetch(&app.pool, id).await?;
    Ok(json(StatusCode::OK, &project(&select, row)))
}

/// The order with `id`, or 404.
async fn fetch(pool: &PgPool, id: i64) -> Result<Value> {
    let row: Option<Value> = sqlx::query_scalar("SELECT to_jsonb(o) FROM orders o WHERE o.id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| Problem::from_db(&e))?;
    row.ok_or_else(|| Problem::not_found(id))
}

/// `PUT`/`PATCH /orders/{id}`: sets the members given among `customer_name`, `product_name`,
/// `status` and `amount`, leaving the others; the updated order. An empty object changes
/// nothing and returns the order as it is.
#[utoipa::path(method(put, patch), path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    request_body = crate::openapi::OrderChanges, responses(
    (status = 200, description = "The updated order", body = crate::openapi::Order),
    (status = 400, description = "Not JSON, an id or an amount that is not an integer", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 404, description = "No order has this id", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 413, description = "A body over API_MAX_BODY_BYTES", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 422, description = "A member unknown or of the wrong type; a broken check constraint", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL is down or the orders table is missing", body = crate::openapi::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn update(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let id = order_id(&id)?;
    let order = body::order(&body(&app, raw)?, false)?;
    if order.fields.is_empty() {
        return Ok(json(StatusCode::OK, &fetch(&app.pool, id).await?));
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
#[utoipa::path(delete, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")), responses(
    (status = 204, description = "Deleted"),
    (status = 400, description = "An id that is not an integer", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 404, description = "No order has this id", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL is down or the orders table is missing", body = crate::openapi::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn remove(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response> {
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
#[utoipa::path(post, path = "/orders/{id}/amount", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    request_body = crate::openapi::AmountChange, responses(
    (status = 200, description = "The order with its new amount", body = crate::openapi::Order),
    (status = 400, description = "Not JSON, an id or an amount that is not an integer", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 404, description = "No order has this id", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 413, description = "A body over API_MAX_BODY_BYTES", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 422, description = "A member other than amount; a result below 0 or too large", body = crate::openapi::Problem, content_type = "application/problem+json"),
    (status = 503, description = "PostgreSQL is down or the orders table is missing", body = crate::openapi::Problem, content_type = "application/problem+json"),
))]
pub(crate) async fn add_amount(
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
