//! Errors as RFC 9457 problem details (`application/problem+json`): `type`, `title`,
//! `status`, `detail`, and the `field` or `constraint` at fault where there is one.
//!
//! Every way a request can fail maps to one [`Problem`], so bad input never surfaces as a
//! 500: database errors caused by the values sent (a check constraint, a number out of range)
//! become 422, a duplicate id 409, and a database or schema that is not there 503.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};
use tracing::{error, warn};

/// One failed request, as the client sees it.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    status: StatusCode,
    /// The last segment of the `type` URI, e.g. `not-found`.
    kind: &'static str,
    title: &'static str,
    detail: String,
    /// Extra members: `field`, `constraint`. Boxed, as the rarer part: a `Problem` is the
    /// error of most functions here and stays small.
    extra: Box<Map<String, Value>>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), extra: Box::default() }
    }

    /// The problem concerns request member `field`.
    #[must_use]
    pub(crate) fn field(mut self, field: &str) -> Self {
        self.extra.insert("field".into(), field.into());
        self
    }

    /// The HTTP status it is sent with.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// 404: no order has this id.
    pub(crate) fn not_found(id: i64) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Order not found", format!("no order has id {id}"))
    }

    /// 404: no route at this path.
    pub(crate) fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "no-route", "Not found", format!("nothing is served at {path}"))
    }

    /// 405: the path exists but not with this method.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this path does not take that method",
        )
    }

    /// 400: the body is not JSON, or a path or query parameter cannot be read.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    /// 400: an amount that is not a whole number.
    pub(crate) fn amount_not_integer() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "amount-not-integer", "Bad request", "amount must be an integer")
            .field("amount")
    }

    /// 422: well-formed JSON with a member that is unknown, missing or of the wrong type.
    pub(crate) fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid request body", detail)
    }

    /// 413: the body is larger than `API_MAX_BODY_BYTES`.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the body must be at most {limit} bytes"),
        )
    }

    /// 503: PostgreSQL is unreachable, or the `orders` table is not there.
    pub(crate) fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }

    /// The problem a failed query means for the client.
    pub(crate) fn from_db(err: &sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let constraint = db.constraint().map(str::to_owned);
                let with_constraint = |mut p: Self| {
                    if let Some(c) = &constraint {
                        p.extra.insert("constraint".into(), c.clone().into());
                    }
                    p
                };
                match &*code {
                    // unique_violation: the only unique key is the primary key, the id.
                    "23505" => with_constraint(
                        Self::new(StatusCode::CONFLICT, "duplicate-id", "Duplicate id", "an order with this id exists")
                            .field("id"),
                    ),
                    "23514" => with_constraint(Self::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "constraint-violation",
                        "Constraint violated",
                        format!("the values break constraint {}", constraint.as_deref().unwrap_or("(unnamed)")),
                    )),
                    "23502" => {
                        let column = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().and_then(|e| e.column());
                        let p = Self::invalid(format!("{} must not be null", column.unwrap_or("a column")));
                        match column {
                            Some(c) => p.field(c),
                            None => p,
                        }
                    }
                    // Class 22, data exception: a value out of range for its column (an amount
                    // past NUMERIC(12,2), say). The client's value, not our fault.
                    c if c.starts_with("22") => Self::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid-value",
                        "Invalid value",
                        db.message().to_owned(),
                    ),
                    // undefined_table, undefined_column: the schema is not (yet) migrated.
                    "42P01" | "42703" => {
                        warn!(error = %db, "orders table missing or not migrated");
                        Self::unavailable("the orders table is missing: run the publisher's migrations")
                    }
                    // Shutting down, too many connections, read-only standby…
                    c if c.starts_with("57") || c.starts_with("53") || c == "25006" => {
                        warn!(error = %db, "database unavailable");
                        Self::unavailable("the database cannot serve this request now")
                    }
                    _ => Self::internal(err),
                }
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
                warn!(error = %err, "database unreachable");
                Self::unavailable("the database is unreachable")
            }
            _ => Self::internal(err),
        }
    }

    fn internal(err: &sqlx::Error) -> Self {
        // The details stay in the log: they may show the query or the schema.
        error!(error = %err, "query failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error", "the request failed")
    }

    /// The JSON body.
    pub(crate) fn to_json(&self) -> Value {
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(map) = &mut body {
            map.extend(self.extra.as_ref().clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = self.to_json().to_string();
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
    }
}
