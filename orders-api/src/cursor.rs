//! The `cursor` of `GET /orders`: an opaque token naming the last row of a page (its sort
//! value and id), so the next page starts right after it (keyset pagination). Rows inserted or
//! deleted elsewhere never shift a page the way an `OFFSET` would: each row is seen once.
//!
//! The token is base64url of a small JSON array and a checksum of it. The checksum catches a
//! cursor that was cut short or edited by hand (400 rather than a page from somewhere else);
//! it is not a secret and the cursor grants nothing: any position it names is within what the
//! query could list anyway, and its values are bound as parameters like every filter literal.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::problem::Problem;

/// Where a page ended, for the query that listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The `order` of the query, `<column>.<asc|desc>`: a cursor only continues that order.
    pub(crate) order: String,
    /// The fingerprint of the query's filters ([`fingerprint`]): a cursor only continues the
    /// same selection of rows.
    pub(crate) filters: u64,
    /// The last row's sort value as PostgreSQL's text (cast back to the column's type when
    /// bound); `None` when it was NULL.
    pub(crate) value: Option<String>,
    /// The last row's id, which breaks ties between equal sort values.
    pub(crate) id: i64,
}

impl Cursor {
    /// The token, for the `cursor` query parameter.
    pub(crate) fn encode(&self) -> String {
        let payload = json!([self.order, self.filters.to_string(), self.value, self.id]).to_string();
        let mut bytes = payload.into_bytes();
        let sum = fnv1a(&bytes);
        bytes.extend_from_slice(&sum.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token made by [`Cursor::encode`].
    ///
    /// # Errors
    /// 400, naming `cursor`, when it is not base64url, is too short, fails its checksum, or does
    /// not hold a position.
    pub(crate) fn decode(token: &str) -> Result<Self, Problem> {
        let bad = |why: &str| {
            Problem::bad_request(format!(
                "cursor {why}: pass the cursor from the Link header's rel=\"next\" URL unchanged, or leave it out for the first page"
            ))
            .field("cursor")
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("is not a cursor this API made"))?;
        let Some(split) = bytes.len().checked_sub(8) else {
            return Err(bad("is too short"));
        };
        let (payload, sum) = bytes.split_at(split);
        if fnv1a(payload).to_be_bytes() != sum {
            return Err(bad("is damaged or was edited"));
        }
        let parsed: Option<Self> =
            serde_json::from_slice::<Value>(payload).ok().and_then(|v| match v.as_array()?.as_slice() {
                [Value::String(order), Value::String(filters), value, Value::Number(id)] => Some(Self {
                    order: order.clone(),
                    filters: filters.parse().ok()?,
                    value: match value {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        _ => return None,
                    },
                    id: id.as_i64()?,
                }),
                _ => None,
            });
        parsed.ok_or_else(|| bad("does not hold a position"))
    }
}

/// A fingerprint of a query's filters, the same whatever order they were given in.
pub(crate) fn fingerprint<'a>(filters: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut filters: Vec<&str> = filters.into_iter().collect();
    filters.sort_unstable();
    // Each filter's length first, so no two lists of filters read as the same bytes.
    let mut bytes = Vec::new();
    for filter in filters {
        bytes.extend_from_slice(&(filter.len() as u64).to_be_bytes());
        bytes.extend_from_slice(filter.as_bytes());
    }
    fnv1a(&bytes)
}

/// FNV-1a, 64 bits: a checksum that is the same on every build and platform (std's hasher
/// makes no such promise, and a cursor may outlive a release).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_edits_are_refused() {
        for value in [Some("2026-12-02 03:08:12.123456+00".to_owned()), None, Some(String::new())] {
            let cursor = Cursor { order: "updated_at.desc".into(), filters: fingerprint(["a=eq.1"]), value, id: 42 };
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        let token = Cursor { order: "id.asc".into(), filters: 0, value: Some("7".into()), id: 7 }.encode();
        let mut edited = token.clone().into_bytes();
        edited[3] = if edited[3] == b'A' { b'B' } else { b'A' };
        for bad in [String::from_utf8(edited).unwrap(), token[..token.len() - 2].to_owned(), "!!".into(), "AAA".into()]
        {
            let p = Cursor::decode(&bad).unwrap_err();
            assert_eq!((p.status().as_u16(), &p.to_json()["field"]), (400, &json!("cursor")), "{bad}");
        }
        // A checksum that matches a payload of the wrong shape.
        let mut bytes = b"[1,2]".to_vec();
        bytes.extend_from_slice(&fnv1a(b"[1,2]").to_be_bytes());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(bytes)).is_err());
    }

    #[test]
    fn the_fingerprint_ignores_filter_order_only() {
        assert_eq!(fingerprint(["a=eq.1", "b=eq.2"]), fingerprint(["b=eq.2", "a=eq.1"]));
        assert_ne!(fingerprint(["a=eq.1"]), fingerprint(["a=eq.2"]));
        assert_ne!(fingerprint(["a=eq.1", "b=eq.2"]), fingerprint(["a=eq.1\nb=eq.2"]));
    }
}
