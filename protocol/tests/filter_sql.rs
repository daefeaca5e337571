//! Filters against a real PostgreSQL: for each filter, [`Filter::matches`] over the rows as
//! `row_to_json` gives them must pick exactly the ids `SELECT id FROM t WHERE <the same filter
//! in SQL>` returns. That is the promise of `protocol::filter`: folding matched events gives the
//! rows of the query.
//!
//! The SQL is what PostgREST would send (`*` becomes `%` in patterns, `not.` wraps the test in
//! `NOT (…)`), in a database with `LC_COLLATE` C and, where the system has it, a UTF-8
//! `LC_CTYPE` (for `ilike` on non-ASCII text). Only filters PostgreSQL accepts are generated:
//! numbers for number columns, integers for integer ones, `like` on text only.

use protocol::filter::Filter;
use serde_json::{Map, Value};
use testkit::PgServer;

const TABLE: &str = "
CREATE TABLE t (id bigint PRIMARY KEY, name text, status text, amount numeric(12,2), qty int, paid boolean);
INSERT INTO t VALUES
    (1, 'Alice', 'pending', 100.50, 3, true),
    (2, 'alice', 'done', 100.00, 0, false),
    (3, 'Bob', 'pending', 99.99, -2, NULL),
    (4, 'Émile', 'on hold', 0, 10, true),
    (5, 'ΟΔΟΣ', 'a,b', 1234567890.12, 2147483647, false),
    (6, 'zoë', '', -5.50, NULL, NULL),
    (7, NULL, 'PENDING', NULL, 1, true),
    (8, 'b', 'c)', 0.01, 1, true),
    (9, 'Smith & Sons', 'pending', 100.5, 3, true),
    (10, '100', '1e2', 1e2, 100, false),
    (11, 'back\\slash', 'say \"hi\"', 100.55, -2147483648, NULL),
    (12, '50%_off', NULL, 100.56, 2, false),
    (13, '', 'done', 0.10, 0, true),
    (9007199254740993, 'big', 'done', 99999999.99, 5, false);
";

/// One column, the SQL type's literals, and whether LIKE applies.
struct Column {
    name: &'static str,
    literals: &'static [&'static str],
    text: bool,
}

const TEXT: &[&str] = &[
    "pending",
    "Pending",
    "PENDING",
    "done",
    "",
    "a,b",
    "c)",
    "alice",
    "Alice",
    "b",
    "z",
    "É",
    "émile",
    "100",
    "1e2",
    "on hold",
    "say \"hi\"",
    "back\\slash",
    "zoë",
    "ΟΔΟΣ",
    "οδοσ",
    " pending",
];
const NUMERIC: &[&str] = &[
    "100",
    "100.5",
    "100.50",
    "100.555",
    "100.55",
    "99.99",
    "0",
    "-0",
    "-5.5",
    "1e2",
    "1.0055e2",
    "0.01",
    ".1",
    "5.",
    "1234567890.12",
    "NaN",
    "Infinity",
    "-Infinity",
    " 100 ",
    "+0.010",
    "99999999.99",
    "100.5000000000000000001",
];
const INTEGER: &[&str] = &["3", "0", "-2", "2147483647", "-2147483648", "+3", " 3", "10", "100", "1"];
const BIGINT: &[&str] = &["1", "9007199254740993", "9007199254740992", "5", "13", "-1"];
const BOOL: &[&str] = &["true", "false"];
const PATTERNS: &[&str] = &[
    "A*", "a*", "*e", "_lice", "%on%", "*\\%*", "*\\_*", "*", "", "*,*", "_", "%h_", "É*", "é*", "ο*", "*Σ", "*\\\\*",
    "*i*e*", "__", "b", "B", "%_%", "*)", "zo_",
];

const COLUMNS: &[Column] = &[
    Column { name: "id", literals: BIGINT, text: false },
    Column { name: "name", literals: TEXT, text: true },
    Column { name: "status", literals: TEXT, text: true },
    Column { name: "amount", literals: NUMERIC, text: false },
    Column { name: "qty", literals: INTEGER, text: false },
    Column { name: "paid", literals: BOOL, text: false },
];

/// A predicate in both languages.
struct Case {
    postgrest: String,
    sql: String,
}

fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A value inside PostgREST's `in.(…)`, quoted when it must be.
fn list_item(value: &str) -> String {
    if value.is_empty() || value.contains([',', '(', ')', '"', '\\']) || also_quote(value) {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        value.to_owned()
    }
}

/// Quotes some plain values too, so both spellings are tried.
fn also_quote(value: &str) -> bool {
    value.len().is_multiple_of(3)
}

fn cases_for(column: &Column, unicode_lower: bool) -> Vec<Case> {
    let c = column.name;
    let mut cases = Vec::new();
    for (op, sql_op) in [("eq", "="), ("neq", "<>"), ("lt", "<"), ("lte", "<="), ("gt", ">"), ("gte", ">=")] {
        for literal in column.literals {
            if literal.is_empty() && !matches!(op, "eq" | "neq") {
                continue;
            }
            cases.push(Case {
                postgrest: format!("{c}={op}.{literal}"),
                sql: format!("{c} {sql_op} {}", sql_literal(literal)),
            });
        }
    }
    // Lists: the empty one, singles, and windows over the literals.
    let mut lists: Vec<Vec<&str>> = vec![vec![]];
    lists.extend(column.literals.iter().map(|l| vec![*l]));
    lists.extend(column.literals.windows(3).map(<[&str]>::to_vec));
    for list in lists {
        let items: Vec<String> = list.iter().map(|v| list_item(v)).collect();
        let sql = if list.is_empty() {
            format!("{c} = ANY('{{}}')")
        } else {
            let values: Vec<String> = list.iter().map(|v| sql_literal(v)).collect();
            format!("{c} IN ({})", values.join(", "))
        };
        cases.push(Case { postgrest: format!("{c}=in.({})", items.join(",")), sql });
    }
    for (is, sql) in [("null", "IS NULL"), ("not_null", "IS NOT NULL")] {
        cases.push(Case { postgrest: format!("{c}=is.{is}"), sql: format!("{c} {sql}") });
    }
    if column.name == "paid" {
        for (is, sql) in [("true", "IS TRUE"), ("false", "IS FALSE"), ("unknown", "IS UNKNOWN")] {
            cases.push(Case { postgrest: format!("{c}=is.{is}"), sql: format!("{c} {sql}") });
        }
    }
    if column.text {
        for pattern in PATTERNS {
            for (op, sql_op) in [("like", "LIKE"), ("ilike", "ILIKE")] {
                if op == "ilike" && !unicode_lower && !pattern.is_ascii() {
                    continue;
                }
                cases.push(Case {
                    postgrest: format!("{c}={op}.{pattern}"),
                    sql: format!("{c} {sql_op} {}", sql_literal(&pattern.replace('*', "%"))),
                });
            }
        }
    }
    cases
}

#[tokio::test]
async fn filters_pick_the_rows_postgresql_picks() {
    let pg = PgServer::start().await;
    // A UTF-8 character type, for ILIKE's lower() on non-ASCII text, where the system has one.
    let utf8 = pg.psql("postgres", "SELECT collctype FROM pg_collation WHERE collname ILIKE 'c.utf%8' LIMIT 1").await;
    let ctype = if utf8.is_empty() { "C" } else { utf8.as_str() };
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE filters TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE {}",
            sql_literal(ctype)
        ),
    )
    .await;
    pg.psql("filters", TABLE).await;
    let rows: Vec<Map<String, Value>> = pg
        .psql("filters", "SELECT row_to_json(t) FROM t ORDER BY id")
        .await
        .lines()
        .map(|line| serde_json::from_str(line).expect("row_to_json gives an object"))
        .collect();
    assert_eq!(rows.len(), 14);

    let mut cases: Vec<Case> = COLUMNS.iter().flat_map(|c| cases_for(c, !utf8.is_empty())).collect();
    // Every test negated, and some ANDs of two.
    let negated: Vec<Case> = cases
        .iter()
        .map(|case| {
            let (column, rest) = case.postgrest.split_once('=').unwrap();
            Case { postgrest: format!("{column}=not.{rest}"), sql: format!("NOT ({})", case.sql) }
        })
        .collect();
    cases.extend(negated);
    let singles = cases.len();
    let pairs: Vec<(usize, usize)> = (0..400).map(|i| ((i * 7919) % singles, (i * 104_729 + 13) % singles)).collect();

    let mut selects: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            format!("SELECT {i}, (SELECT string_agg(id::text, ',' ORDER BY id) FROM t WHERE {})", case.sql)
        })
        .collect();
    selects.extend(pairs.iter().enumerate().map(|(i, (a, b))| {
        format!(
            "SELECT {}, (SELECT string_agg(id::text, ',' ORDER BY id) FROM t WHERE ({}) AND ({}))",
            singles + i,
            cases[*a].sql,
            cases[*b].sql
        )
    }));
    let mut expected = vec![String::new(); selects.len()];
    // In chunks: psql takes the SQL as one argument, which Linux limits to 128 KiB.
    for chunk in selects.chunks(200) {
        let output = pg.psql("filters", &chunk.join("\nUNION ALL\n")).await;
        for line in output.lines() {
            let (i, ids) = line.split_once('|').expect("two columns");
            expected[i.parse::<usize>().unwrap()] = ids.to_owned();
        }
    }

    let ours = |filter: &Filter| {
        let ids: Vec<String> = rows.iter().filter(|r| filter.matches(r)).map(|r| r["id"].to_string()).collect();
        ids.join(",")
    };
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let filter = Filter::parse([case.postgrest.as_str()]).unwrap_or_else(|e| panic!("{}: {e}", case.postgrest));
        if ours(&filter) != expected[i] {
            wrong.push(format!(
                "{} ({}): ours [{}], PostgreSQL [{}]",
                case.postgrest,
                case.sql,
                ours(&filter),
                expected[i]
            ));
        }
    }
    for (i, (a, b)) in pairs.iter().enumerate() {
        let filter = Filter::parse([cases[*a].postgrest.as_str(), cases[*b].postgrest.as_str()]).unwrap();
        if ours(&filter) != expected[singles + i] {
            wrong.push(format!("{filter}: ours [{}], PostgreSQL [{}]", ours(&filter), expected[singles + i]));
        }
    }
    assert!(wrong.is_empty(), "{} of {} filters disagree:\n{}", wrong.len(), selects.len(), wrong.join("\n"));
}
