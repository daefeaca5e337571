//! The query strings of the read routes, checked: filters (PostgREST's syntax, as on the
//! streams), `select`, `order`, `limit` and `cursor`. Column names are matched against
//! [`COLUMNS`], so the SQL built from a query only ever holds this module's own names.

use protocol::filter::{Predicate, Select, SqlTest};

use crate::{
    cursor::{self, Cursor},
    problem::Problem,
};

/// `GET /orders` returns this many rows unless `limit` says otherwise.
pub(crate) const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit`: a bigger page is one the client should ask for in parts.
pub(crate) const MAX_LIMIT: i64 = 1000;
/// The table's columns and their SQL types: what `order=<column>.<asc|desc>` may sort by,
/// filters may test and `select` may pick, and the type a literal is cast to.
pub(crate) const COLUMNS: [(&str, &str); 7] = [
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

type Result<T, E = Problem> = std::result::Result<T, E>;

/// The column named `name`, as this module's own `'static` text, and its SQL type.
pub(crate) fn column(name: &str) -> Option<(&'static str, &'static str)> {
    COLUMNS.into_iter().find(|(c, _)| *c == name)
}

fn column_names() -> String {
    COLUMNS.map(|(c, _)| c).join(", ")
}

fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|e| Problem::bad_request(format!("the query string cannot be read: {e}")))
}

/// The query of `GET /orders`, checked.
#[derive(Debug)]
pub(crate) struct ListQuery {
    /// ANDed: PostgREST filters and plain equalities (as `eq` filters).
    pub(crate) filters: Vec<Predicate>,
    pub(crate) select: Select,
    pub(crate) limit: i64,
    /// The sort column and its SQL type.
    pub(crate) sort: (&'static str, &'static str),
    pub(crate) descending: bool,
    /// Where the previous page ended, checked against this query's order and filters.
    pub(crate) after: Option<Cursor>,
    /// The parameters as given, but `cursor`: the next page's link repeats them.
    pub(crate) kept: Vec<(String, String)>,
}

impl ListQuery {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self> {
        let mut query = Self {
            filters: Vec::new(),
            select: Select::all(),
            limit: DEFAULT_LIMIT,
            sort: ("updated_at", "timestamptz"),
            descending: true,
            after: None,
            kept: Vec::new(),
        };
        let mut token = None;
        for (key, value) in pairs(raw)? {
            match key.as_str() {
                "limit" => {
                    query.limit = value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                        Problem::bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}")).field("limit")
                    })?;
                }
                "order" => (query.sort, query.descending) = order(&value)?,
                "select" => query.select = select(&value)?,
                "cursor" => {
                    token = Some(value);
                    continue;
                }
                // The streams' spelling: `filter=amount=gte.100`.
                "filter" => {
                    let predicate =
                        Predicate::parse(&value).map_err(|e| Problem::bad_request(e.to_string()).field("filter"))?;
                    query.filters.push(checked(predicate, "filter")?);
                }
                name if column(name).is_some() => query.filters.push(filter(name, &value)?),
                _ => {
                    return Err(Problem::bad_request(format!(
                        "unknown query parameter {key:?}: use limit, cursor, order, select, filter, or a column ({}) to filter on",
                        column_names()
                    ))
                    .field(&key));
                }
            }
            query.kept.push((key, value));
        }
        if let Some(token) = token {
            let after = Cursor::decode(&token)?;
            let order = query.order();
            if after.order != order || after.filters != query.fingerprint() {
                return Err(Problem::bad_request(format!(
                    "this cursor continues another query (order={}, or other filters) than this one (order={order}): \
                     follow the Link header's rel=\"next\" URL, which keeps the query",
                    after.order
                ))
                .field("cursor"));
            }
            query.after = Some(after);
        }
        Ok(query)
    }

    /// `<column>.<asc|desc>`, as a cursor records it.
    pub(crate) fn order(&self) -> String {
        format!("{}.{}", self.sort.0, if self.descending { "desc" } else { "asc" })
    }

    /// The fingerprint of this query's filters, as a cursor records it.
    pub(crate) fn fingerprint(&self) -> u64 {
        cursor::fingerprint(self.filters.iter().map(Predicate::as_str))
    }
}

/// The query of `GET /orders/{id}`: only `select`.
pub(crate) fn select_only(raw: Option<&str>) -> Result<Select> {
    let mut chosen = Select::all();
    for (key, value) in pairs(raw)? {
        if key != "select" {
            return Err(
                Problem::bad_request(format!("unknown query parameter {key:?}: only select is taken here")).field(&key)
            );
        }
        chosen = select(&value)?;
    }
    Ok(chosen)
}

/// `select=id,status`: the stream's syntax; every listed column must be one of the table's.
fn select(value: &str) -> Result<Select> {
    let bad = |detail: String| Problem::bad_request(detail).field("select");
    let select = Select::parse(value).map_err(|e| bad(e.to_string()))?;
    if let Some(unknown) = select.columns().and_then(|mut c| c.find(|c| column(c).is_none())) {
        return Err(bad(format!("select names {unknown:?}, which is not a column; columns: {}", column_names())));
    }
    Ok(select)
}

/// `order=<column>.<asc|desc>` (`.asc` may be left out).
fn order(value: &str) -> Result<((&'static str, &'static str), bool)> {
    let bad = || {
        Problem::bad_request(format!(
            "order must be <column>.asc or <column>.desc, with a column among {}",
            column_names()
        ))
        .field("order")
    };
    let (name, direction) = value.split_once('.').unwrap_or((value, "asc"));
    let sort = column(name).ok_or_else(bad)?;
    let descending = match direction {
        "asc" => false,
        "desc" => true,
        _ => return Err(bad()),
    };
    Ok((sort, descending))
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
    checked(predicate, name)
}

/// The predicate, if its column is one of the table's and its test can apply to it.
fn checked(predicate: Predicate, field: &str) -> Result<Predicate> {
    let name = predicate.column();
    if column(name).is_none() {
        return Err(Problem::bad_request(format!(
            "filter {:?} tests {name:?}, which is not a column; columns: {}",
            predicate.as_str(),
            column_names()
        ))
        .field(field));
    }
    // No column of the table is boolean: PostgreSQL would reject `IS TRUE` on one with an error
    // that is the client's, so it is refused here.
    if let (_, SqlTest::Is("TRUE" | "FALSE" | "UNKNOWN")) = predicate.sql_test() {
        return Err(
            Problem::bad_request(format!("{name} is not a boolean column: use is.null or is.not_null")).field(field)
        );
    }
    Ok(predicate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn list_queries_are_checked() {
        let q = ListQuery::parse(None).unwrap();
        assert_eq!((q.limit, q.sort.0, q.descending, q.select.is_all()), (100, "updated_at", true, true));
        let q = ListQuery::parse(Some(
            "status=paid&limit=5&order=amount.asc&customer_name=Ada%20L&amount=gte.5&filter=id=lt.9&select=status",
        ))
        .unwrap();
        let filters: Vec<_> = q.filters.iter().map(Predicate::as_str).collect();
        assert_eq!(filters, ["status=eq.paid", "customer_name=eq.Ada L", "amount=gte.5", "id=lt.9"]);
        assert_eq!((q.limit, q.sort.0, q.descending), (5, "amount", false));
        assert_eq!(q.select.to_string(), "status");
        assert_eq!(q.kept.len(), 7);
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
            "filter=colour=eq.red",
            "filter=nonsense",
            "select=id,password",
            "select=",
            "cursor=xyz",
        ] {
            let p = ListQuery::parse(Some(bad)).unwrap_err();
            assert_eq!(p.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(p.to_json()["field"], bad.split('=').next().unwrap(), "names the parameter: {bad}");
        }
        let p = ListQuery::parse(Some("select=id,secret")).unwrap_err();
        assert!(p.to_json()["detail"].as_str().unwrap().contains("\"secret\""), "names the column");
    }

    #[test]
    fn a_cursor_continues_only_its_own_query() {
        let first = ListQuery::parse(Some("order=amount.desc&status=paid")).unwrap();
        let token =
            Cursor { order: first.order(), filters: first.fingerprint(), value: Some("5".into()), id: 3 }.encode();
        let next = ListQuery::parse(Some(&format!("status=paid&order=amount.desc&cursor={token}&limit=2"))).unwrap();
        assert_eq!(next.after.as_ref().map(|c| c.id), Some(3));
        assert!(next.kept.iter().all(|(k, _)| k != "cursor"), "the next link sets its own cursor");
        for other in
            ["order=amount.asc&status=paid", "status=paid", "order=amount.desc", "order=amount.desc&status=new"]
        {
            let p = ListQuery::parse(Some(&format!("{other}&cursor={token}"))).unwrap_err();
            assert_eq!(p.to_json()["field"], "cursor", "{other}");
        }
    }

    #[test]
    fn a_single_read_takes_only_select() {
        assert_eq!(select_only(Some("select=status,amount")).unwrap().to_string(), "status,amount");
        assert!(select_only(None).unwrap().is_all());
        assert_eq!(select_only(Some("limit=3")).unwrap_err().to_json()["field"], "limit");
        assert_eq!(select_only(Some("select=nope")).unwrap_err().to_json()["field"], "select");
    }
}
