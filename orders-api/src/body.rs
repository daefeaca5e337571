//! Request bodies, read by hand from a JSON object rather than derived with serde, so every
//! problem can name the member at fault (serde's type errors name only a line and column) and
//! an amount that is not a whole number gets its own message.

use serde_json::{Map, Value};

use crate::problem::Problem;

/// The largest id a create request may choose: 2^53 - 1, the largest integer JavaScript clients
/// (the dashboard) read exactly. It also keeps the id sequence, which is moved past a chosen id,
/// from being pushed to its end, where every later insert without an id would fail.
pub(crate) const MAX_CHOSEN_ID: i64 = (1 << 53) - 1;

/// The writable columns and what each holds; also the allow-list of column names the API
/// ever puts in SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    /// `customer_name`, text.
    CustomerName,
    /// `product_name`, text.
    ProductName,
    /// `status`, text.
    Status,
    /// `amount`, a whole number here (the column is NUMERIC(12,2)).
    Amount,
}

impl Column {
    /// The writable columns, in table order.
    pub(crate) const ALL: [Column; 4] = [Column::CustomerName, Column::ProductName, Column::Status, Column::Amount];

    /// The column's name in SQL and in JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::CustomerName => "customer_name",
            Self::ProductName => "product_name",
            Self::Status => "status",
            Self::Amount => "amount",
        }
    }

    fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// A value for one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    /// For a text column.
    Text(String),
    /// For `amount`.
    Integer(i64),
}

/// The members of an order body that were given.
#[derive(Debug, Default)]
pub(crate) struct OrderBody {
    /// `id`, when the create request chooses it.
    pub id: Option<i64>,
    /// The column values given, in table order.
    pub fields: Vec<(Column, Field)>,
}

impl OrderBody {
    /// Whether `column` was given.
    pub(crate) fn has(&self, column: Column) -> bool {
        self.fields.iter().any(|(c, _)| *c == column)
    }
}

/// Parses `bytes` as a JSON object.
///
/// # Errors
/// 400 when it is not JSON; 422 when it is JSON but not an object.
pub(crate) fn object(bytes: &[u8]) -> Result<Map<String, Value>, Problem> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Problem::invalid("the body must be a JSON object")),
        Err(e) => Err(Problem::bad_request(format!("the body is not valid JSON: {e}"))),
    }
}

/// Reads an order body: `id` only when `allow_id` (create), the writable columns, nothing else.
///
/// # Errors
/// 400 for bad JSON or an amount that is not an integer; 422 for an unknown member or a value
/// of the wrong type, naming the member.
pub(crate) fn order(bytes: &[u8], allow_id: bool) -> Result<OrderBody, Problem> {
    let map = object(bytes)?;
    let mut body = OrderBody::default();
    for (key, value) in &map {
        if key == "id" && allow_id {
            // null: let the database choose, as if it were absent.
            body.id = match value {
                Value::Null => None,
                v => Some(whole(v).filter(|id| (1..=MAX_CHOSEN_ID).contains(id)).ok_or_else(|| {
                    Problem::invalid(format!("id must be an integer from 1 to {MAX_CHOSEN_ID}")).field("id")
                })?),
            };
            continue;
        }
        let Some(column) = Column::named(key) else {
            let hint = if key == "id" { "the id cannot be changed" } else { "unknown member" };
            return Err(Problem::invalid(format!("{key}: {hint}")).field(key));
        };
        body.fields.push((column, field(column, value)?));
    }
    body.fields.sort_by_key(|(c, _)| Column::ALL.iter().position(|a| a == c));
    Ok(body)
}

/// Reads the body of `POST /orders/{id}/amount`: exactly `{"amount": <integer>}`.
///
/// # Errors
/// As [`order`]; also 422 when `amount` is missing.
pub(crate) fn amount_delta(bytes: &[u8]) -> Result<i64, Problem> {
    let map = object(bytes)?;
    if let Some(key) = map.keys().find(|k| *k != "amount") {
        return Err(Problem::invalid(format!("{key}: unknown member (only amount is taken)")).field(key));
    }
    match map.get("amount") {
        None => Err(Problem::invalid("amount is required").field("amount")),
        Some(v) => integer(v),
    }
}

fn field(column: Column, value: &Value) -> Result<Field, Problem> {
    match column {
        Column::Amount => integer(value).map(Field::Integer),
        _ => match value {
            Value::String(s) => Ok(Field::Text(s.clone())),
            _ => Err(Problem::invalid(format!("{} must be a string", column.name())).field(column.name())),
        },
    }
}

fn integer(value: &Value) -> Result<i64, Problem> {
    whole(value).ok_or_else(Problem::amount_not_integer)
}

/// `value` as a whole number: `3`, and also `3.0` or `3e2`, which JSON (and JavaScript, the
/// original design's `Number.isInteger`) count as integers too. `None` for fractions, numbers
/// past i64 and anything that is not a number.
fn whole(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_f64().and_then(exact))
}

/// A whole `f64` within ±2^53, where every integer is exactly representable; past it a JSON
/// number in float notation may already have been rounded, so it is not taken as a value.
pub(crate) fn exact(f: f64) -> Option<i64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0;
    #[allow(clippy::cast_possible_truncation)] // Whole and within ±2^53: exact.
    (f.fract() == 0.0 && (-LIMIT..=LIMIT).contains(&f)).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_checked_and_named() {
        let body = order(br#"{"status":"paid","id":7,"customer_name":"Ada"}"#, true).unwrap();
        assert_eq!(body.id, Some(7));
        assert_eq!(
            body.fields,
            [(Column::CustomerName, Field::Text("Ada".into())), (Column::Status, Field::Text("paid".into()))],
            "in table order"
        );
        for (input, status, field) in [
            (&br#"{"amount": 2.5}"#[..], 400, "amount"),
            (br#"{"amount": "3"}"#, 400, "amount"),
            (br#"{"status": 3}"#, 422, "status"),
            (br#"{"colour": "red"}"#, 422, "colour"),
            (br#"{"id": 1}"#, 422, "id"),
        ] {
            let p = order(input, false).unwrap_err();
            assert_eq!(p.status().as_u16(), status, "{}", String::from_utf8_lossy(input));
            assert_eq!(p.to_json()["field"], field);
        }
        assert_eq!(order(br#"{"id": 7.0}"#, true).unwrap().id, Some(7), "7.0 is an integer");
        assert_eq!(order(br#"{"id": 9007199254740991}"#, true).unwrap().id, Some(MAX_CHOSEN_ID));
        for id in ["0", "-1", "9007199254740992", "1.5"] {
            let p = order(format!(r#"{{"id": {id}}}"#).as_bytes(), true).unwrap_err();
            assert_eq!((p.status().as_u16(), &p.to_json()["field"]), (422, &Value::from("id")), "{id}");
        }
        assert_eq!(order(b"{nope", true).unwrap_err().status().as_u16(), 400);
        assert_eq!(order(b"[1]", true).unwrap_err().status().as_u16(), 422);
    }

    #[test]
    fn an_amount_delta_is_one_integer() {
        assert_eq!(amount_delta(br#"{"amount": -3}"#).unwrap(), -3);
        for (whole, n) in [(&br#"{"amount": 3.0}"#[..], 3), (br#"{"amount": 1e3}"#, 1000), (br#"{"amount": -0.0}"#, 0)]
        {
            assert_eq!(amount_delta(whole).unwrap(), n, "{}", String::from_utf8_lossy(whole));
        }
        for not in [
            &br#"{"amount": 1e-3}"#[..],
            br#"{"amount": 1e19}"#,
            br#"{"amount": 9223372036854775808}"#,
            br#"{"amount": 1e17}"#,
        ] {
            assert_eq!(amount_delta(not).unwrap_err().status().as_u16(), 400, "{}", String::from_utf8_lossy(not));
        }
        let p = amount_delta(br#"{"amount": 1.5}"#).unwrap_err();
        assert_eq!(p.to_json()["detail"], "amount must be an integer");
        assert_eq!(amount_delta(b"{}").unwrap_err().status().as_u16(), 422);
        assert_eq!(amount_delta(br#"{"amount":1,"x":2}"#).unwrap_err().status().as_u16(), 422);
    }
}
