//! Row filters in PostgREST syntax, column selection, and an index of subscriptions by filter.
//!
//! A subscription names the rows it wants with PostgREST filters (`status=eq.pending`,
//! `amount=gte.100`, `id=not.in.(1,2)`) and the columns it wants with a select
//! (`id,status,amount`). Both are parsed once, when the subscription is made; since the errors
//! go back to the client, each names what is wrong and shows a correct example.
//!
//! # Syntax
//!
//! A [`Predicate`] is `<column>=<operator>.<value>`, the column `[A-Za-z_][A-Za-z0-9_]*`:
//!
//! | operator | SQL | value |
//! |---|---|---|
//! | `eq`, `neq` | `=`, `<>` | the rest of the text, verbatim (commas, dots, `=` included; may be empty) |
//! | `lt`, `lte`, `gt`, `gte` | `<`, `<=`, `>`, `>=` | as for `eq`, but not empty |
//! | `in` | `= ANY(…)` | `(a,b,c)`; `"…"` quotes a value holding `,` `(` `)` `"` (`\"` and `\\` inside); `()` is the empty list |
//! | `is` | `IS …` | `null`, `not_null`, `true`, `false` or `unknown` |
//! | `like`, `ilike` | `LIKE`, `ILIKE` | a pattern: `*` or `%` any sequence, `_` one character, `\` makes the next one literal |
//!
//! and `not.` before the operator negates it (`status=not.eq.pending`, `id=not.in.(1,2)`). A
//! [`Filter`] is the AND of predicates. A [`Select`] is a comma list of columns, or `*`.
//!
//! # Meaning: what PostgreSQL would answer
//!
//! [`Filter::matches`] is true exactly when `SELECT * FROM orders WHERE <the same filter>` would
//! return the row, so folding the matched events of a table gives the rows of that query. Rows
//! are the JSON objects of `row_to_json` (a change event's `order`, and `old` for UPDATE).
//!
//! - Three-valued logic: a JSON `null` or a missing column is SQL NULL, and comparing NULL with
//!   anything is unknown, so neither `eq` nor `neq` (nor `not.eq`) match it; only `is.null`,
//!   `is.not_null`, `is.unknown` and `is.true`/`is.false` (false for NULL) say something of NULL,
//!   and the empty list: `in.()` is false and `not.in.()` true for every row, NULL or not, as
//!   `= ANY('{}')` (PostgREST's SQL for it) is.
//! - A JSON number compares as NUMERIC, exactly: the value's JSON text and the literal are read
//!   as decimals (never rounded to f64), so `amount=gte.100` matches 100.50 and 100 and not
//!   99.99, and `100`, `100.0` and `1e2` are equal. `NaN`, `Infinity` and `-Infinity` sort as in
//!   PostgreSQL. A literal that is not a number (where PostgreSQL would reject the query) makes
//!   the predicate unknown: no row matches it. Integer columns compare the same way, so
//!   `id=eq.1.0` matches id 1 (PostgreSQL would reject it for a `bigint` column).
//! - A JSON string compares as text in code point order, as under `COLLATE "C"` (the order of
//!   this project's test databases); a database with a linguistic default collation orders
//!   `lt`/`gt` differently.
//! - A JSON boolean compares as the text `true`/`false` (`paid=eq.true`; `false` < `true`, as in
//!   SQL; PostgreSQL's other spellings, `t` or `yes`, are plain text here). `is.true`,
//!   `is.false` and `is.unknown` on a value that is neither boolean nor NULL are unknown.
//! - A JSON object or array compares as its compact JSON text.
//! - `like`/`ilike` match strings, and numbers and booleans by their JSON text; `ilike` lowers
//!   both sides character by character (Unicode lowercase, as PostgreSQL's `lower()` does with
//!   a libc UTF-8 locale). Matching takes at most time proportional to the text's length times
//!   the pattern's, whatever the pattern.
//! - Timestamps are strings in the row's JSON, so they compare as text: right for `lt`/`gte`
//!   on ISO 8601 literals written the way `row_to_json` writes them
//!   (`2026-12-01T10:15:30+00:00`), not for other spellings or offsets.
//!
//! Where this differs from PostgREST's parsing: `in.("")` is the list holding the empty string
//! (PostgREST reads it as the empty list); `\*` in a pattern is a literal `*` (PostgREST makes it
//! `\%`, a literal `%`); an unquoted list value may not hold `(` (quote it).
//!
//! # Index
//!
//! A ws-server replica tests every event against every subscription; [`Index`] makes that cost
//! grow with the number of subscriptions the event can match, not with all of them. Each filter
//! is filed under one `eq` or `in` predicate ([`Filter::index_terms`]): the column and the
//! [`IndexKey`]s a matching row's value must have. An event then costs one hash lookup per
//! distinct indexed column (there are few), plus a test of each filter with no `eq`/`in`.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet},
    fmt::{self, Write as _},
    hash::Hash,
    sync::Arc,
};

use serde_json::{Map, Number, Value};

/// The row key column: [`Select::project`] always keeps it.
pub const KEY_COLUMN: &str = "id";

const OPERATORS: &str = "eq, neq, lt, lte, gt, gte, in, is, like, ilike";
const EXAMPLE: &str = "status=eq.pending";
const COMPARE_EXAMPLE: &str = "amount=gte.100";
const IN_EXAMPLE: &str = "status=in.(pending,\"on hold\")";
const IS_EXAMPLE: &str = "shipped_at=is.null";
const LIKE_EXAMPLE: &str = "customer_name=ilike.*smith*";
const SELECT_EXAMPLE: &str = "select=id,status,amount";

/// Why a filter or a select was refused. The message is one line and ends with an example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// No `=` between the column and the operator.
    #[error("filter {text:?} has no \"=\"; write <column>=<operator>.<value>, e.g. {EXAMPLE}")]
    MissingEquals {
        /// The filter as given.
        text: String,
    },
    /// The column is not an identifier.
    #[error(
        "bad column name {column:?} in {text:?}; a column is letters, digits and _, not starting with a digit, e.g. {EXAMPLE}"
    )]
    BadColumn {
        /// The column as given.
        column: String,
        /// The filter as given.
        text: String,
    },
    /// No `<operator>.` after the `=`.
    #[error("no \"<operator>.\" after the \"=\" in {text:?}; write <column>=<operator>.<value>, e.g. {EXAMPLE}")]
    MissingOperator {
        /// The filter as given.
        text: String,
    },
    /// An operator this module does not know.
    #[error(
        "unknown operator {operator:?} in {text:?}; use one of {OPERATORS} (optionally after not.), e.g. {EXAMPLE}"
    )]
    UnknownOperator {
        /// The operator as given.
        operator: String,
        /// The filter as given.
        text: String,
    },
    /// A value the operator cannot take.
    #[error("bad value {value:?} for {operator} in {text:?}: {reason}; e.g. {example}")]
    BadValue {
        /// The operator.
        operator: &'static str,
        /// The value as given (after `<operator>.`).
        value: String,
        /// The filter as given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
        /// A correct filter with this operator.
        example: &'static str,
    },
    /// A select that is not a list of column names.
    #[error("bad select {text:?}: {reason}; list column names separated by commas, or *, e.g. {SELECT_EXAMPLE}")]
    BadSelect {
        /// The select as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Whether `name` is `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Predicates and filters

/// One `<column>=<operator>.<value>` condition, parsed.
///
/// Equality and `Debug`/`Display` go by the source text.
#[derive(Clone)]
pub struct Predicate {
    source: Box<str>,
    column: Box<str>,
    negated: bool,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Compare(CmpOp, Literal),
    In(Vec<Literal>),
    Is(IsValue),
    Like(Glob),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            Self::Eq => ord == Ordering::Equal,
            Self::Neq => ord != Ordering::Equal,
            Self::Lt => ord == Ordering::Less,
            Self::Lte => ord != Ordering::Greater,
            Self::Gt => ord == Ordering::Greater,
            Self::Gte => ord != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IsValue {
    Null,
    NotNull,
    True,
    False,
    Unknown,
}

impl Predicate {
    /// Parses `<column>=<operator>.<value>` (see the [module docs](self) for the operators).
    ///
    /// # Errors
    /// [`FilterError`] names the bad part and shows a correct example.
    pub fn parse(text: &str) -> Result<Predicate, FilterError> {
        let Some((column, rest)) = text.split_once('=') else {
            return Err(FilterError::MissingEquals { text: text.to_owned() });
        };
        if !is_identifier(column) {
            return Err(FilterError::BadColumn { column: column.to_owned(), text: text.to_owned() });
        }
        let (negated, rest) = match rest.strip_prefix("not.") {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let Some((operator, value)) = rest.split_once('.') else {
            return Err(FilterError::MissingOperator { text: text.to_owned() });
        };
        let bad = |operator: &'static str, reason: &'static str, example: &'static str| FilterError::BadValue {
            operator,
            value: value.to_owned(),
            text: text.to_owned(),
            reason,
            example,
        };
        let compare = |op: CmpOp, name: &'static str| {
            // `eq.` is a test for the empty string; an empty bound is surely a mistake.
            if value.is_empty() && !matches!(op, CmpOp::Eq | CmpOp::Neq) {
                return Err(bad(name, "the value is empty", COMPARE_EXAMPLE));
            }
            Ok(Test::Compare(op, Literal::new(value)))
        };
        let test = match operator {
            "eq" => compare(CmpOp::Eq, "eq")?,
            "neq" => compare(CmpOp::Neq, "neq")?,
            "lt" => compare(CmpOp::Lt, "lt")?,
            "lte" => compare(CmpOp::Lte, "lte")?,
            "gt" => compare(CmpOp::Gt, "gt")?,
            "gte" => compare(CmpOp::Gte, "gte")?,
            "in" => Test::In(parse_list(value).map_err(|reason| bad("in", reason, IN_EXAMPLE))?),
            "is" => Test::Is(match value {
                "null" => IsValue::Null,
                "not_null" => IsValue::NotNull,
                "true" => IsValue::True,
                "false" => IsValue::False,
                "unknown" => IsValue::Unknown,
                _ => return Err(bad("is", "use null, not_null, true, false or unknown", IS_EXAMPLE)),
            }),
            "like" => Test::Like(Glob::parse(value, false).map_err(|reason| bad("like", reason, LIKE_EXAMPLE))?),
            "ilike" => Test::Like(Glob::parse(value, true).map_err(|reason| bad("ilike", reason, LIKE_EXAMPLE))?),
            _ => return Err(FilterError::UnknownOperator { operator: operator.to_owned(), text: text.to_owned() }),
        };
        Ok(Predicate { source: text.into(), column: column.into(), negated, test })
    }

    /// The column it tests.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The SQL truth value of the predicate for `row`: `None` is unknown (NULL).
    pub fn evaluate(&self, row: &Map<String, Value>) -> Option<bool> {
        let value = row.get(&*self.column).filter(|v| !v.is_null());
        let result = match &self.test {
            Test::Is(is) => is_test(*is, value),
            Test::Compare(op, literal) => Some(op.holds(compare(&RowValue::of(value?), literal)?)),
            // `= ANY('{}')`, PostgREST's SQL for it, is false even for NULL.
            Test::In(list) if list.is_empty() => Some(false),
            Test::In(list) => in_test(&RowValue::of(value?), list),
            Test::Like(glob) => Some(glob.matches_value(value?)),
        };
        if self.negated { result.map(|b| !b) } else { result }
    }
}

/// A predicate's test in the terms of SQL, for a server that runs the filter as a query (the
/// HTTP API's `GET /orders`) rather than on events. Values are the literals' text, to be bound
/// as parameters and cast to the column's type; never to be pasted into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlTest<'a> {
    /// `<column> <op> <value>`; `op` is one of `=`, `<>`, `<`, `<=`, `>`, `>=`.
    Compare {
        /// The SQL operator.
        op: &'static str,
        /// The literal.
        value: &'a str,
    },
    /// `<column> = ANY(<values>)` (false for the empty list).
    In(Vec<&'a str>),
    /// `<column> IS <what>`; `what` is `NULL`, `NOT NULL`, `TRUE`, `FALSE` or `UNKNOWN`.
    Is(&'static str),
    /// `<column> LIKE <pattern>` (or `ILIKE`): the pattern in SQL's syntax, `%` and `_` with
    /// `\` escaping, as PostgreSQL's default escape character reads it.
    Like {
        /// The pattern.
        pattern: String,
        /// ILIKE rather than LIKE.
        case_insensitive: bool,
    },
}

impl Predicate {
    /// The test in SQL terms, and whether it is negated (`NOT (…)` around it).
    pub fn sql_test(&self) -> (bool, SqlTest<'_>) {
        let test = match &self.test {
            Test::Compare(op, literal) => SqlTest::Compare {
                op: match op {
                    CmpOp::Eq => "=",
                    CmpOp::Neq => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::Lte => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Gte => ">=",
                },
                value: &literal.text,
            },
            Test::In(list) => SqlTest::In(list.iter().map(|l| &*l.text).collect()),
            Test::Is(is) => SqlTest::Is(match is {
                IsValue::Null => "NULL",
                IsValue::NotNull => "NOT NULL",
                IsValue::True => "TRUE",
                IsValue::False => "FALSE",
                IsValue::Unknown => "UNKNOWN",
            }),
            Test::Like(glob) => {
                let mut pattern = String::new();
                for token in &glob.tokens {
                    match token {
                        Token::Any => pattern.push('%'),
                        Token::One => pattern.push('_'),
                        Token::Char(c) => {
                            if matches!(c, '%' | '_' | '\\') {
                                pattern.push('\\');
                            }
                            pattern.push(*c);
                        }
                    }
                }
                SqlTest::Like { pattern, case_insensitive: glob.fold_case }
            }
        };
        (self.negated, test)
    }
}

/// `x IN (a, b)` is `x = a OR x = b`: true wins, then unknown, then false.
fn in_test(value: &RowValue<'_>, list: &[Literal]) -> Option<bool> {
    let mut unknown = false;
    for literal in list {
        match compare(value, literal) {
            Some(Ordering::Equal) => return Some(true),
            Some(_) => {}
            None => unknown = true,
        }
    }
    if unknown { None } else { Some(false) }
}

fn is_test(is: IsValue, value: Option<&Value>) -> Option<bool> {
    match (is, value) {
        (IsValue::Null, v) => Some(v.is_none()),
        (IsValue::NotNull, v) => Some(v.is_some()),
        // `NULL IS TRUE` is false, not unknown.
        (IsValue::True | IsValue::False, None) => Some(false),
        (IsValue::True, Some(Value::Bool(b))) => Some(*b),
        (IsValue::False, Some(Value::Bool(b))) => Some(!*b),
        (IsValue::Unknown, None) => Some(true),
        (IsValue::Unknown, Some(Value::Bool(_))) => Some(false),
        // PostgreSQL rejects IS TRUE on a non-boolean: no row matches.
        (IsValue::True | IsValue::False | IsValue::Unknown, Some(_)) => None,
    }
}

impl PartialEq for Predicate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Predicate {}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Predicate").field(&&*self.source).finish()
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The AND of predicates; no predicates match every row.
///
/// `Display` writes the predicates joined by `&`, as in a query string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Filter {
    predicates: Vec<Predicate>,
}

impl Filter {
    /// The filter that matches every row.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Parses each item as a [`Predicate`]; the filter is their AND (no items: every row).
    ///
    /// # Errors
    /// The [`FilterError`] of the first item that does not parse.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Filter, FilterError> {
        let mut filter = Filter::all();
        for item in items {
            filter.push(Predicate::parse(item)?);
        }
        Ok(filter)
    }

    /// Both filters at once (for instance a token's and a client's). A predicate in both is
    /// kept once.
    pub fn and(&self, other: &Filter) -> Filter {
        let mut filter = self.clone();
        for p in &other.predicates {
            filter.push(p.clone());
        }
        filter
    }

    fn push(&mut self, predicate: Predicate) {
        if !self.predicates.contains(&predicate) {
            self.predicates.push(predicate);
        }
    }

    /// Whether it has no predicates (matches every row).
    pub fn is_empty(&self) -> bool {
        self.predicates.is_empty()
    }

    /// The number of predicates.
    pub fn len(&self) -> usize {
        self.predicates.len()
    }

    /// The predicates, in the order given.
    pub fn predicates(&self) -> &[Predicate] {
        &self.predicates
    }

    /// Whether every predicate is TRUE for `row` (unknown counts as not matching, as in
    /// `WHERE`).
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        self.predicates.iter().all(|p| p.evaluate(row) == Some(true))
    }

    /// The column and keys to file this filter under in an index: of its non-negated `eq` and
    /// `in` predicates, the one with the fewest keys; `None` when it has none.
    ///
    /// Guarantee: when [`Filter::matches`] is true for a row, the [`IndexKey`] of the row's
    /// value in that column is among the keys. An empty key list (`in.()`) matches no row.
    pub fn index_terms(&self) -> Option<(&str, Vec<IndexKey>)> {
        let mut best: Option<(&str, Vec<IndexKey>)> = None;
        for p in self.predicates.iter().filter(|p| !p.negated) {
            let keys = match &p.test {
                Test::Compare(CmpOp::Eq, literal) => literal.keys(),
                Test::In(list) => {
                    let mut seen = HashSet::new();
                    list.iter().flat_map(Literal::keys).filter(|key| seen.insert(key.clone())).collect()
                }
                _ => continue,
            };
            if best.as_ref().is_none_or(|(_, fewest)| keys.len() < fewest.len()) {
                best = Some((&*p.column, keys));
            }
        }
        best
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Filter")?;
        f.debug_list().entries(self.predicates.iter().map(|p| p.as_str())).finish()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.predicates.iter().enumerate() {
            if i > 0 {
                f.write_char('&')?;
            }
            f.write_str(p.as_str())?;
        }
        Ok(())
    }
}

/// The inside of `in.(…)`, PostgREST's way: `"…"` quotes a value, `\` escapes inside quotes.
fn parse_list(value: &str) -> Result<Vec<Literal>, &'static str> {
    const NOT_CLOSED: &str = "the list has no closing parenthesis";
    let Some(inner) = value.strip_prefix('(') else {
        return Err("the list must be in parentheses");
    };
    let mut items = Vec::new();
    if inner == ")" {
        return Ok(items);
    }
    let mut chars = inner.chars();
    loop {
        let mut item = String::new();
        let end = if chars.as_str().starts_with('"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quote is not closed"),
                    Some('"') => break,
                    Some('\\') => item.push(chars.next().ok_or("a quote is not closed")?),
                    Some(c) => item.push(c),
                }
            }
            match chars.next() {
                Some(c @ (',' | ')')) => c,
                None => return Err(NOT_CLOSED),
                Some(_) => return Err("text after a closing quote (quote the whole value)"),
            }
        } else {
            loop {
                match chars.next() {
                    None => return Err(NOT_CLOSED),
                    Some(c @ (',' | ')')) => break c,
                    Some('"') => return Err("a quote inside an unquoted value (quote the whole value)"),
                    Some('(') => return Err("a parenthesis inside an unquoted value (quote the value)"),
                    Some(c) => item.push(c),
                }
            }
        };
        items.push(Literal::new(&item));
        if end == ')' {
            return if chars.as_str().is_empty() { Ok(items) } else { Err("text after the closing parenthesis") };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Values and comparison

/// A filter's value, with its reading as a number when it is one.
#[derive(Debug, Clone)]
struct Literal {
    text: Box<str>,
    number: Option<Num>,
}

/// A NUMERIC literal.
#[derive(Debug, Clone)]
enum Num {
    Finite {
        decimal: Decimal,
        /// The floor and whether it is the value, when it fits: integer rows compare with it.
        floor: Option<(i128, bool)>,
        /// The nearest f64: a float row that differs from it compares the same way with the
        /// literal (see [`compare`]).
        float: f64,
    },
    Infinity,
    NegInfinity,
    NaN,
}

impl Literal {
    fn new(text: &str) -> Literal {
        Literal { text: text.into(), number: Num::parse(text) }
    }

    /// The keys of the row values this literal equals: its text, and its number if it is one.
    fn keys(&self) -> Vec<IndexKey> {
        let mut keys = vec![IndexKey(KeyRepr::Text(self.text.clone()))];
        if let Some(Num::Finite { decimal, .. }) = &self.number {
            let mut canonical = String::new();
            decimal.as_ref().write_canonical(&mut canonical).expect("writing to a String cannot fail");
            keys.push(IndexKey(KeyRepr::Number(canonical.into())));
        }
        keys
    }
}

impl Num {
    /// What PostgreSQL's `numeric_in` accepts: a decimal with optional sign, point and
    /// exponent, or NaN and the infinities, with surrounding white space.
    fn parse(text: &str) -> Option<Num> {
        let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
        let special = |names: &[&str]| names.iter().any(|n| trimmed.eq_ignore_ascii_case(n));
        if special(&["nan"]) {
            return Some(Num::NaN);
        }
        if special(&["infinity", "+infinity", "inf", "+inf"]) {
            return Some(Num::Infinity);
        }
        if special(&["-infinity", "-inf"]) {
            return Some(Num::NegInfinity);
        }
        let mut digits = vec![0; trimmed.len()];
        let decimal = DecimalRef::parse(trimmed, &mut digits)?;
        let floor = decimal.floor_i128();
        let mut canonical = String::new();
        decimal.write_canonical(&mut canonical).expect("writing to a String cannot fail");
        // Scientific notation with any exponent parses (to an infinity or zero when far out).
        let float = canonical.parse().ok()?;
        let decimal = Decimal { negative: decimal.negative, exponent: decimal.exponent, digits: decimal.digits.into() };
        Some(Num::Finite { decimal, floor, float })
    }
}

/// A finite decimal in normal form: `(-1)^negative × 0.d₁d₂…dₙ × 10^exponent`, the digits ASCII
/// with `d₁` and `dₙ` not zero; zero has no digits and is not negative. Equal numbers have
/// equal forms, so the form orders, compares and hashes them.
#[derive(Debug, Clone)]
struct Decimal {
    negative: bool,
    exponent: i64,
    digits: Box<[u8]>,
}

impl Decimal {
    fn as_ref(&self) -> DecimalRef<'_> {
        DecimalRef { negative: self.negative, exponent: self.exponent, digits: &self.digits }
    }
}

#[derive(Debug, Clone, Copy)]
struct DecimalRef<'a> {
    negative: bool,
    exponent: i64,
    digits: &'a [u8],
}

impl<'a> DecimalRef<'a> {
    /// Reads `[+-]?(d+(.d*)?|.d+)([eE][+-]?d+)?`, putting the significant digits in `buf`
    /// (which must be as long as `text`).
    fn parse(text: &str, buf: &'a mut [u8]) -> Option<DecimalRef<'a>> {
        let bytes = text.as_bytes();
        let mut i = 0;
        let negative = sign(bytes, &mut i);
        let (mut n, mut exponent, mut any_digit) = (0, 0i64, false);
        while let Some(&d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            any_digit = true;
            // Leading zeros of the integer part say nothing.
            if n > 0 || d != b'0' {
                buf[n] = d;
                n += 1;
                exponent = exponent.saturating_add(1);
            }
            i += 1;
        }
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            while let Some(&d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
                any_digit = true;
                if n == 0 && d == b'0' {
                    exponent = exponent.saturating_sub(1);
                } else {
                    buf[n] = d;
                    n += 1;
                }
                i += 1;
            }
        }
        if !any_digit {
            return None;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exponent_negative = sign(bytes, &mut i);
            let start = i;
            let mut e = 0i64;
            while let Some(&d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
                // Saturates far beyond any NUMERIC, which PostgreSQL would refuse anyway.
                e = e.saturating_mul(10).saturating_add(i64::from(d - b'0'));
                i += 1;
            }
            if i == start {
                return None;
            }
            exponent = if exponent_negative { exponent.saturating_sub(e) } else { exponent.saturating_add(e) };
        }
        if i != bytes.len() {
            return None;
        }
        while n > 0 && buf[n - 1] == b'0' {
            n -= 1;
        }
        if n == 0 {
            return Some(DecimalRef { negative: false, exponent: 0, digits: &[] });
        }
        Some(DecimalRef { negative, exponent, digits: &buf[..n] })
    }

    /// The largest integer not above the value, and whether that is the value, when it is
    /// within `i128`.
    fn floor_i128(self) -> Option<(i128, bool)> {
        // More digits before the point than an i128 has.
        if self.exponent > 39 {
            return None;
        }
        let integer_digits = usize::try_from(self.exponent).unwrap_or(0);
        let mut value: i128 = 0;
        for position in 0..integer_digits {
            let digit = self.digits.get(position).map_or(0, |d| d - b'0');
            value = value.checked_mul(10)?.checked_add(i128::from(digit))?;
        }
        // No trailing zeros: any digit after the point makes a fraction.
        let exact = self.digits.len() <= integer_digits;
        Some(match (self.negative, exact) {
            (false, _) => (value, exact),
            (true, true) => (-value, true),
            (true, false) => (-value - 1, false),
        })
    }

    fn cmp(self, other: DecimalRef<'_>) -> Ordering {
        let sign = |d: DecimalRef<'_>| {
            if d.digits.is_empty() {
                0
            } else if d.negative {
                -1
            } else {
                1
            }
        };
        let (mine, theirs) = (sign(self), sign(other));
        if mine != theirs || mine == 0 {
            return mine.cmp(&theirs);
        }
        // With no trailing zeros, a shorter digit string that is a prefix is smaller.
        let magnitude = self.exponent.cmp(&other.exponent).then_with(|| self.digits.cmp(other.digits));
        if self.negative { magnitude.reverse() } else { magnitude }
    }

    /// `d.ddd e<exponent>`: one text per number, for the index.
    fn write_canonical(self, out: &mut impl fmt::Write) -> fmt::Result {
        let Some((first, rest)) = self.digits.split_first() else {
            return out.write_char('0');
        };
        if self.negative {
            out.write_char('-')?;
        }
        out.write_char(char::from(*first))?;
        if !rest.is_empty() {
            out.write_char('.')?;
            // Digits are ASCII, so each byte is a char.
            for d in rest {
                out.write_char(char::from(*d))?;
            }
        }
        write!(out, "e{}", self.exponent.saturating_sub(1))
    }
}

/// Text on the stack: formatting a row's number (its JSON text is a few dozen bytes at most)
/// costs no allocation on the per-event path.
struct StackText<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackText<N> {
    fn new() -> Self {
        StackText { buf: [0; N], len: 0 }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("only whole strings are written")
    }
}

impl<const N: usize> fmt::Write for StackText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Calls `f` with the JSON text of `n`.
fn with_number_text<R>(n: &Number, f: impl FnOnce(&str) -> R) -> R {
    let mut text = StackText::<64>::new();
    match write!(text, "{n}") {
        Ok(()) => f(text.as_str()),
        // Only with serde_json's `arbitrary_precision`, which keeps long numbers as written.
        Err(_) => f(&n.to_string()),
    }
}

/// Calls `f` with `n` as a decimal.
fn with_decimal<R>(n: &Number, f: impl FnOnce(DecimalRef<'_>) -> R) -> R {
    with_number_text(n, |text| {
        let mut stack = [0u8; 64];
        let mut heap = Vec::new();
        let buf = if text.len() <= stack.len() {
            &mut stack[..]
        } else {
            heap.resize(text.len(), 0);
            &mut heap[..]
        };
        f(DecimalRef::parse(text, buf).expect("a JSON number is a decimal"))
    })
}

/// Calls `f` with the canonical text of `n` (the index's number key).
fn with_canonical_number<R>(n: &Number, f: impl FnOnce(&str) -> R) -> R {
    with_decimal(n, |decimal| {
        let mut text = StackText::<128>::new();
        match decimal.write_canonical(&mut text) {
            Ok(()) => f(text.as_str()),
            Err(_) => {
                let mut text = String::new();
                decimal.write_canonical(&mut text).expect("writing to a String cannot fail");
                f(&text)
            }
        }
    })
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// A non-NULL row value, ready to compare with several literals.
enum RowValue<'a> {
    Text(std::borrow::Cow<'a, str>),
    Number(&'a Number),
}

impl<'a> RowValue<'a> {
    fn of(value: &'a Value) -> RowValue<'a> {
        match value {
            Value::Number(n) => RowValue::Number(n),
            Value::String(s) => RowValue::Text(s.as_str().into()),
            Value::Bool(b) => RowValue::Text(bool_text(*b).into()),
            // Null does not get here; objects and arrays compare as their compact JSON.
            other => RowValue::Text(other.to_string().into()),
        }
    }
}

/// The row value against the literal; `None` when they cannot be compared (a number column
/// and a literal that is not a number).
fn compare(value: &RowValue<'_>, literal: &Literal) -> Option<Ordering> {
    match value {
        RowValue::Text(text) => Some((**text).cmp(&*literal.text)),
        RowValue::Number(n) => Some(match literal.number.as_ref()? {
            // A row's number is finite; PostgreSQL sorts NaN above every number.
            Num::Infinity | Num::NaN => Ordering::Less,
            Num::NegInfinity => Ordering::Greater,
            Num::Finite { decimal, floor, float } => {
                let fast = match (n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from)), floor) {
                    (Some(row), Some((floor, true))) => Some(row.cmp(floor)),
                    // The literal has a fraction: never equal to an integer.
                    (Some(row), Some((floor, false))) => {
                        Some(if row <= *floor { Ordering::Less } else { Ordering::Greater })
                    }
                    (Some(_), None) => None,
                    // Rounding to f64 keeps order, and the row's JSON text rounds to its f64: so
                    // when the f64s differ, the decimals compare the same way. Only a tie needs
                    // the exact decimals.
                    (None, _) => n.as_f64().and_then(|row| row.partial_cmp(float)).filter(|o| o.is_ne()),
                };
                fast.unwrap_or_else(|| with_decimal(n, |row| row.cmp(decimal.as_ref())))
            }
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// LIKE patterns

/// A LIKE pattern.
#[derive(Debug, Clone)]
struct Glob {
    tokens: Box<[Token]>,
    /// ILIKE: the tokens are lowercase and the text is lowered as it is read.
    fold_case: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// `*` or `%`: any sequence.
    Any,
    /// `_`: one character.
    One,
    Char(char),
}

impl Glob {
    fn parse(pattern: &str, fold_case: bool) -> Result<Glob, &'static str> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                // `**` is `*`: one token keeps the matcher's backtracking to one place.
                '*' | '%' if tokens.last() == Some(&Token::Any) => continue,
                '*' | '%' => Token::Any,
                '_' => Token::One,
                // PostgreSQL's default LIKE escape character.
                '\\' => {
                    Token::Char(chars.next().ok_or("the pattern ends with a lone \\ (it escapes the next character)")?)
                }
                c => Token::Char(c),
            };
            match token {
                Token::Char(c) if fold_case => tokens.extend(c.to_lowercase().map(Token::Char)),
                token => tokens.push(token),
            }
        }
        Ok(Glob { tokens: tokens.into(), fold_case })
    }

    fn matches_value(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.matches_text(s),
            Value::Bool(b) => self.matches_text(bool_text(*b)),
            Value::Number(n) => with_number_text(n, |text| self.matches_text(text)),
            other => self.matches_text(&other.to_string()),
        }
    }

    fn matches_text(&self, text: &str) -> bool {
        if self.fold_case {
            glob_match(&self.tokens, text.chars().flat_map(char::to_lowercase))
        } else {
            glob_match(&self.tokens, text.chars())
        }
    }
}

/// The whole of `text` against `tokens`. Only the last `*` is ever backtracked to (what an
/// earlier `*` matched can be taken as matched by the later one), so this takes at most
/// O(text × pattern) steps: no pattern can make it exponential.
fn glob_match(tokens: &[Token], text: impl Iterator<Item = char> + Clone) -> bool {
    let mut t = 0;
    let mut rest = text;
    // The token after the last `*` seen, and the text from which that `*` would take one more.
    let mut star: Option<(usize, _)> = None;
    loop {
        let mut after = rest.clone();
        let Some(c) = after.next() else { break };
        match tokens.get(t) {
            Some(Token::Any) => {
                t += 1;
                star = Some((t, rest.clone()));
                continue;
            }
            Some(Token::One) => {
                t += 1;
                rest = after;
                continue;
            }
            Some(Token::Char(p)) if *p == c => {
                t += 1;
                rest = after;
                continue;
            }
            _ => {}
        }
        let Some((star_t, star_text)) = &mut star else { return false };
        // The `*` takes one more character and matching resumes after it.
        star_text.next();
        t = *star_t;
        rest = star_text.clone();
    }
    tokens[t..].iter().all(|token| *token == Token::Any)
}

// ---------------------------------------------------------------------------------------------
// Column selection

/// The columns a subscription receives: a list, or every column (`*`).
///
/// The key column `id` is always kept, listed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Select {
    /// `None`: every column.
    columns: Option<Box<[Box<str>]>>,
}

impl Select {
    /// Every column.
    pub fn all() -> Select {
        Select { columns: None }
    }

    /// Parses `id,status,amount` (repeated columns count once), or `*` for every column.
    ///
    /// # Errors
    /// [`FilterError::BadSelect`] for an empty list, an empty item, or a bad column name.
    pub fn parse(text: &str) -> Result<Select, FilterError> {
        let bad = |reason: String| FilterError::BadSelect { text: text.to_owned(), reason };
        if text.is_empty() {
            return Err(bad("the list is empty".to_owned()));
        }
        let mut columns: Vec<Box<str>> = Vec::new();
        let mut all = false;
        for item in text.split(',') {
            if item == "*" {
                all = true;
            } else if item.is_empty() {
                return Err(bad("an empty column name (two commas, or one at an end)".to_owned()));
            } else if !is_identifier(item) {
                return Err(bad(format!(
                    "bad column name {item:?}; a column is letters, digits and _, not starting with a digit"
                )));
            } else if !columns.iter().any(|c| **c == *item) {
                columns.push(item.into());
            }
        }
        Ok(if all { Select::all() } else { Select { columns: Some(columns.into()) } })
    }

    /// Whether it is every column.
    pub fn is_all(&self) -> bool {
        self.columns.is_none()
    }

    /// The listed columns, in the order given; `None` for every column.
    pub fn columns(&self) -> Option<impl Iterator<Item = &str>> {
        self.columns.as_deref().map(|columns| columns.iter().map(|c| &**c))
    }

    /// Whether [`Select::project`] keeps `column` (always true for `id`).
    pub fn contains(&self, column: &str) -> bool {
        match &self.columns {
            None => true,
            Some(columns) => column == KEY_COLUMN || columns.iter().any(|c| **c == *column),
        }
    }

    /// The row with only the selected columns that it has, and `id` if it has one.
    pub fn project(&self, row: &Map<String, Value>) -> Map<String, Value> {
        let Some(columns) = &self.columns else {
            return row.clone();
        };
        let mut out = Map::new();
        for column in columns.iter().map(|c| &**c).chain([KEY_COLUMN]) {
            if let Some(value) = row.get(column) {
                out.insert(column.to_owned(), value.clone());
            }
        }
        out
    }

    /// This select (a client's) within `allowed` (a token's): `*` becomes `allowed`, and a
    /// listed column `allowed` does not contain is an error naming it. `id` is always allowed.
    ///
    /// # Errors
    /// `column "x" is outside what your token may see (id, status)`, for the first such column.
    pub fn narrow(&self, allowed: &Select) -> Result<Select, String> {
        let (Some(mine), Some(theirs)) = (&self.columns, &allowed.columns) else {
            return Ok(if self.is_all() { allowed.clone() } else { self.clone() });
        };
        match mine.iter().find(|c| !allowed.contains(c)) {
            None => Ok(self.clone()),
            Some(outside) => {
                let list: Vec<&str> = theirs.iter().map(|c| &**c).collect();
                Err(format!("column {outside:?} is outside what your token may see ({})", list.join(", ")))
            }
        }
    }
}

impl Default for Select {
    fn default() -> Self {
        Select::all()
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.columns {
            None => f.write_char('*'),
            Some(columns) => {
                for (i, c) in columns.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    f.write_str(c)?;
                }
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The index

/// A value's identity for `eq`: two row values equal under `eq` to the same literal have the
/// same key. Numbers are canonical (100, 100.0 and 1e2 are one key); strings, booleans
/// (`true`/`false`) and objects or arrays (compact JSON) are text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexKey(KeyRepr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyRepr {
    Text(Box<str>),
    Number(Box<str>),
}

impl IndexKey {
    /// The key of a row's value; `None` for NULL, which `eq` never matches.
    pub fn of_row_value(value: &Value) -> Option<IndexKey> {
        Some(IndexKey(match value {
            Value::Null => return None,
            Value::Number(n) => KeyRepr::Number(with_canonical_number(n, |key| key.into())),
            Value::String(s) => KeyRepr::Text(s.as_str().into()),
            Value::Bool(b) => KeyRepr::Text(bool_text(*b).into()),
            other => KeyRepr::Text(other.to_string().into()),
        }))
    }

    /// The keys of the row values `eq.<literal>` matches, whatever the column's type: the text,
    /// and the number when the literal is one (`100` gives two keys, `abc` one).
    pub fn of_literal(literal: &str) -> Vec<IndexKey> {
        Literal::new(literal).keys()
    }
}

/// Subscriptions (`K`, for instance a connection and subscription id) by filter, answering
/// "which of them does this row match" without testing every one.
///
/// Each filter is filed under its [`Filter::index_terms`]; a filter without (no `eq`/`in`) is
/// kept apart and tested for every row. [`Index::candidates`] gives a superset of the matches,
/// to test with [`Filter::matches`]; [`Index::matching`] does both.
#[derive(Debug)]
pub struct Index<K> {
    entries: HashMap<K, Entry>,
    /// One per column some filter is filed under: few, so a list.
    columns: Vec<ColumnIndex<K>>,
    unindexed: BTreeMap<K, Arc<Filter>>,
}

#[derive(Debug)]
struct Entry {
    filter: Arc<Filter>,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Unindexed,
    /// `in.()`: matches no row, so filed nowhere.
    Nowhere,
    Column {
        column: Box<str>,
        keys: Vec<IndexKey>,
    },
}

type Bucket<K> = HashMap<K, Arc<Filter>>;

#[derive(Debug)]
struct ColumnIndex<K> {
    column: Box<str>,
    /// Text and number keys apart, so a row's string looks its bucket up without a copy.
    text: HashMap<Box<str>, Bucket<K>>,
    number: HashMap<Box<str>, Bucket<K>>,
    /// The entries filed here; the column goes when none is left.
    entries: usize,
}

impl<K> ColumnIndex<K> {
    fn map_mut<'k>(&mut self, key: &'k KeyRepr) -> (&mut HashMap<Box<str>, Bucket<K>>, &'k str) {
        match key {
            KeyRepr::Text(text) => (&mut self.text, text),
            KeyRepr::Number(number) => (&mut self.number, number),
        }
    }

    /// The bucket of a row's value in this column.
    fn bucket(&self, value: &Value) -> Option<&Bucket<K>> {
        match value {
            Value::Null => None,
            Value::String(s) => self.text.get(s.as_str()),
            Value::Bool(b) => self.text.get(bool_text(*b)),
            Value::Number(_) if self.number.is_empty() => None,
            Value::Number(n) => with_canonical_number(n, |key| self.number.get(key)),
            _ if self.text.is_empty() => None,
            other => self.text.get(other.to_string().as_str()),
        }
    }
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index { entries: HashMap::new(), columns: Vec::new(), unindexed: BTreeMap::new() }
    }
}

impl<K: Copy + Eq + Hash + Ord> Index<K> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Files `filter` under `k`, replacing what `k` had.
    pub fn insert(&mut self, k: K, filter: &Filter) {
        self.remove(k);
        let filter = Arc::new(filter.clone());
        let place = match filter.index_terms() {
            None => {
                self.unindexed.insert(k, Arc::clone(&filter));
                Place::Unindexed
            }
            Some((_, keys)) if keys.is_empty() => Place::Nowhere,
            Some((column, keys)) => {
                let at = match self.columns.iter().position(|c| *c.column == *column) {
                    Some(at) => at,
                    None => {
                        self.columns.push(ColumnIndex {
                            column: column.into(),
                            text: HashMap::new(),
                            number: HashMap::new(),
                            entries: 0,
                        });
                        self.columns.len() - 1
                    }
                };
                let index = &mut self.columns[at];
                index.entries += 1;
                for key in &keys {
                    let (map, text) = index.map_mut(&key.0);
                    map.entry(text.into()).or_default().insert(k, Arc::clone(&filter));
                }
                Place::Column { column: column.into(), keys }
            }
        };
        self.entries.insert(k, Entry { filter, place });
    }

    /// Takes `k` out, in time proportional to its number of keys; false if it was not there.
    pub fn remove(&mut self, k: K) -> bool {
        let Some(entry) = self.entries.remove(&k) else {
            return false;
        };
        match entry.place {
            Place::Unindexed => {
                self.unindexed.remove(&k);
            }
            Place::Nowhere => {}
            Place::Column { column, keys } => {
                let at = self.columns.iter().position(|c| c.column == column).expect("an entry's column is indexed");
                let index = &mut self.columns[at];
                for key in &keys {
                    let (map, text) = index.map_mut(&key.0);
                    if let Some(bucket) = map.get_mut(text) {
                        bucket.remove(&k);
                        if bucket.is_empty() {
                            map.remove(text);
                        }
                    }
                }
                index.entries -= 1;
                if index.entries == 0 {
                    self.columns.swap_remove(at);
                }
            }
        }
        true
    }

    /// The number of filters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no filter.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of filters with no `eq`/`in`, which every row is tested against.
    pub fn unindexed_len(&self) -> usize {
        self.unindexed.len()
    }

    /// The filter filed under `k`.
    pub fn get(&self, k: K) -> Option<&Filter> {
        self.entries.get(&k).map(|entry| &*entry.filter)
    }

    /// Appends to `out`, once each, every `k` whose filter may match `row`: those whose index
    /// terms the row's value has, and every unindexed one. A superset of [`Index::matching`].
    pub fn candidates(&self, row: &Map<String, Value>, out: &mut Vec<K>) {
        self.visit(row, |k, _| out.push(k));
    }

    /// Appends to `out`, once each, every `k` whose filter matches `row`.
    pub fn matching(&self, row: &Map<String, Value>, out: &mut Vec<K>) {
        self.visit(row, |k, filter| {
            if filter.matches(row) {
                out.push(k);
            }
        });
    }

    /// Calls `f` for each candidate. Each `k` is filed under one column, and under keys that
    /// differ, and a row's value has one key: so no `k` comes twice.
    fn visit(&self, row: &Map<String, Value>, mut f: impl FnMut(K, &Filter)) {
        for index in &self.columns {
            let Some(bucket) = row.get(&*index.column).and_then(|value| index.bucket(value)) else {
                continue;
            };
            for (k, filter) in bucket {
                f(*k, filter);
            }
        }
        for (k, filter) in &self.unindexed {
            f(*k, filter);
        }
    }
}

/// Reads an optional sign at `bytes[*i]`, moving past it: whether it was `-`.
fn sign(bytes: &[u8], i: &mut usize) -> bool {
    match bytes.get(*i) {
        Some(b'-') => {
            *i += 1;
            true
        }
        Some(b'+') => {
            *i += 1;
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predicates_translate_to_sql_terms() {
        let sql = |text: &str| {
            let p = Predicate::parse(text).unwrap();
            let (negated, test) = p.sql_test();
            format!("{negated} {test:?}")
        };
        assert_eq!(sql("amount=gte.100"), r#"false Compare { op: ">=", value: "100" }"#);
        assert_eq!(sql("status=not.eq.a,b"), r#"true Compare { op: "=", value: "a,b" }"#);
        assert_eq!(sql(r#"id=in.(1,"2,3")"#), r#"false In(["1", "2,3"])"#);
        assert_eq!(sql("id=in.()"), "false In([])");
        assert_eq!(sql("x=is.not_null"), r#"false Is("NOT NULL")"#);
        assert_eq!(sql(r"name=like.*a_b\*c%d\%"), r#"false Like { pattern: "%a_b*c%d\\%", case_insensitive: false }"#);
        assert_eq!(sql("name=ilike.*SMITH*"), r#"false Like { pattern: "%smith%", case_insensitive: true }"#);
    }

    fn row(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn eval(predicate: &str, r: &Value) -> Option<bool> {
        Predicate::parse(predicate).unwrap_or_else(|e| panic!("{predicate}: {e}")).evaluate(&row(r.clone()))
    }

    /// Asserts the truth value of each predicate for `r`.
    fn check(r: Value, cases: &[(&str, Option<bool>)]) {
        for (predicate, want) in cases {
            assert_eq!(eval(predicate, &r), *want, "{predicate} on {r}");
        }
    }

    const T: Option<bool> = Some(true);
    const F: Option<bool> = Some(false);
    const U: Option<bool> = None;

    #[test]
    fn numbers_compare_as_numeric_exactly() {
        for (amount, [eq, lt, gte]) in [
            (json!(100.50), [F, F, T]),
            (json!(100), [T, F, T]),
            (json!(100.0), [T, F, T]),
            (json!(99.99), [F, T, F]),
            (json!(-100), [F, T, F]),
        ] {
            let r = json!({"amount": amount});
            check(r.clone(), &[("amount=eq.100", eq), ("amount=lt.100", lt), ("amount=gte.100", gte)]);
            check(
                r.clone(),
                &[("amount=neq.100", eq.map(|b| !b)), ("amount=gt.100", gte.zip(eq).map(|(g, e)| g && !e))],
            );
            check(r, &[("amount=lte.100", lt.zip(eq).map(|(l, e)| l || e))]);
        }
        // One number, many spellings; white space as numeric_in allows.
        for literal in ["100", "100.0", "1e2", "+100", "100.", "0100", "1000e-1", " 100 ", "1E+2"] {
            check(json!({"n": 100}), &[(&format!("n=eq.{literal}"), T)]);
            check(json!({"n": 100.0}), &[(&format!("n=eq.{literal}"), T)]);
        }
        check(
            json!({"a": 100.5, "z": 0, "neg": -0.5, "big": 18446744073709551615u64, "small": -9223372036854775808i64}),
            &[
                ("a=eq.100.50", T),
                ("a=eq.100.5000000000000000000001", F),
                ("a=lt.100.5000000000000000000001", T),
                ("a=gt.100.4999999999999999999999", T),
                ("z=eq.-0", T),
                ("z=eq.0.000", T),
                ("z=gt.-0.0001", T),
                ("neg=lt.0", T),
                ("neg=eq.-.5", T),
                ("neg=gt.-1", T),
                ("big=eq.18446744073709551615", T),
                ("big=gt.18446744073709551614", T),
                ("big=lt.1e20", T),
                ("small=eq.-9223372036854775808", T),
                ("small=lt.-9223372036854775807", T),
                ("a=lt.1e400", T),
                ("a=gt.-1e400", T),
                ("a=gt.1e-400", T),
                ("a=lt.1e99999999999999999999", T),
                ("a=gt.1e-99999999999999999999", T),
                ("z=lt.1e-99999999999999999999", T),
                ("big=lt.1e99999999999999999999", T),
            ],
        );
        // Integer rows against fractions, on both sides of zero.
        check(
            json!({"p": 5, "m": -5, "z": 0}),
            &[
                ("p=gt.4.5", T),
                ("p=lt.5.5", T),
                ("p=eq.5.0", T),
                ("p=eq.5.5", F),
                ("m=lt.-4.5", T),
                ("m=gt.-5.5", T),
                ("m=eq.-5.000", T),
                ("m=gte.-4.999", F),
                ("z=lt.0.5", T),
                ("z=gt.-0.5", T),
                ("p=lt.1e39", T),
                ("m=gt.-1e39", T),
                ("p=lt.1e40", T),
                ("m=gt.-1e40", T),
            ],
        );
        // Literals with more digits than an f64 keeps: they round to the row's f64, yet are
        // not equal to the row's value (0.1 here, as its JSON text says).
        check(
            json!({"a": 0.1, "b": 100.5}),
            &[
                ("a=eq.0.1000000000000000055511151231257827", F),
                ("a=lt.0.1000000000000000055511151231257827", T),
                ("a=gt.0.09999999999999999999", T),
                ("a=eq.0.1", T),
                ("b=lte.100.50000000000000000001", T),
                ("b=gte.100.49999999999999999999", T),
                ("b=gt.100.49999999999999999999", T),
            ],
        );
        // NaN sorts above every number in PostgreSQL; infinities are infinite.
        check(
            json!({"a": 5}),
            &[
                ("a=lt.NaN", T),
                ("a=eq.nan", F),
                ("a=lt.Infinity", T),
                ("a=gt.-Infinity", T),
                ("a=gt.-inf", T),
                ("a=neq.inf", T),
            ],
        );
        // A literal that is not a number: PostgreSQL rejects the query, no row matches.
        for op in ["eq", "neq", "lt", "lte", "gt", "gte"] {
            check(json!({"a": 5}), &[(&format!("a={op}.abc"), U), (&format!("a=not.{op}.5x"), U)]);
        }
        check(json!({"a": 5}), &[("a=eq.", U), ("a=eq.1_000", U), ("a=eq.0x5", U), ("a=eq.5e", U), ("a=eq..", U)]);
    }

    #[test]
    fn text_compares_by_code_point() {
        check(
            json!({"s": "pending", "e": "", "u": "é", "b": "B"}),
            &[
                ("s=eq.pending", T),
                ("s=eq.Pending", F),
                ("s=neq.pending", F),
                ("s=neq.done", T),
                ("s=lt.q", T),
                ("s=lt.pending", F),
                ("s=lte.pending", T),
                ("s=gt.pendin", T),
                ("s=gte.pendinga", F),
                ("e=eq.", T),
                ("s=eq.", F),
                ("e=lt.a", T),
                // Code points: uppercase before lowercase, é (U+00E9) after z.
                ("b=lt.a", T),
                ("u=gt.z", T),
                // Text never needs the literal to be a number.
                ("s=eq.100", F),
            ],
        );
        // A numeric-looking string column is still text: "100.0" is not "100".
        check(json!({"s": "100.0"}), &[("s=eq.100", F), ("s=eq.100.0", T), ("s=lt.2", T)]);
        // Values keep commas, dots and equals signs.
        check(json!({"s": "a,b.c=d"}), &[("s=eq.a,b.c=d", T), ("s=like.a,b.*", T)]);
    }

    #[test]
    fn booleans_compare_as_their_text_and_is_tests_them() {
        check(
            json!({"paid": true, "open": false}),
            &[
                ("paid=eq.true", T),
                ("paid=eq.false", F),
                ("paid=neq.false", T),
                ("open=lt.true", T),
                ("paid=gt.false", T),
                ("paid=eq.t", F),
                ("paid=in.(true,x)", T),
                ("paid=is.true", T),
                ("paid=is.false", F),
                ("open=is.false", T),
                ("open=is.true", F),
                ("paid=is.unknown", F),
                ("paid=not.is.true", F),
                ("paid=like.tr*", T),
            ],
        );
        // IS TRUE of NULL is false, not unknown; IS UNKNOWN of NULL is true.
        for r in [json!({"paid": null}), json!({})] {
            check(
                r,
                &[
                    ("paid=is.true", F),
                    ("paid=is.false", F),
                    ("paid=not.is.true", T),
                    ("paid=is.unknown", T),
                    ("paid=not.is.unknown", F),
                ],
            );
        }
        // PostgreSQL refuses IS TRUE on a text or number.
        check(json!({"s": "true", "n": 1}), &[("s=is.true", U), ("n=is.false", U), ("s=is.unknown", U)]);
    }

    #[test]
    fn null_and_missing_are_unknown_to_every_comparison() {
        for r in [json!({"x": null}), json!({"other": 1})] {
            for op in ["eq.1", "neq.1", "lt.1", "lte.1", "gt.1", "gte.1", "eq.", "in.(1,2)", "like.*", "ilike.*"] {
                check(r.clone(), &[(&format!("x={op}"), U), (&format!("x=not.{op}"), U)]);
            }
            check(
                r,
                &[
                    ("x=is.null", T),
                    ("x=is.not_null", F),
                    ("x=not.is.null", F),
                    ("x=not.is.not_null", T),
                    // PostgREST sends `in.()` as `x = ANY('{}')`: false, not unknown, for NULL.
                    ("x=in.()", F),
                    ("x=not.in.()", T),
                ],
            );
        }
        check(json!({"x": 0}), &[("x=is.null", F), ("x=is.not_null", T)]);
        check(json!({"x": ""}), &[("x=is.null", F)]);
    }

    #[test]
    fn not_negates_true_and_false_and_keeps_unknown() {
        check(
            json!({"s": "pending", "n": null}),
            &[
                ("s=not.eq.pending", F),
                ("s=not.eq.done", T),
                ("s=not.in.(a,pending)", F),
                ("s=not.in.(a,b)", T),
                ("s=not.like.pen*", F),
                ("n=not.eq.x", U),
                ("n=not.in.(x)", U),
            ],
        );
        let id = |v: Value| row(json!({ "id": v }));
        let f = Filter::parse(["id=not.in.(1,2)"]).unwrap();
        assert!(!f.matches(&id(json!(1))));
        assert!(f.matches(&id(json!(3))));
        assert!(!f.matches(&id(Value::Null)), "NOT (NULL IN …) is unknown");
    }

    #[test]
    fn in_lists_quote_like_postgrest() {
        let r = |s: &str| json!({ "s": s });
        let list = r#"s=in.("a,b","c)",plain,"say \"hi\"","back\\slash","",x y)"#;
        for value in ["a,b", "c)", "plain", "say \"hi\"", "back\\slash", "", "x y"] {
            check(r(value), &[(list, T)]);
        }
        for value in ["a", "b", "c", "\"a,b\"", "say", "x", "back\\\\slash"] {
            check(r(value), &[(list, F)]);
        }
        // A quoted value is text, and also a number when it reads as one.
        check(json!({"n": 2}), &[(r#"n=in.("2")"#, T), ("n=in.(1,2.0)", T), ("n=in.(1,3)", F)]);
        // Empty list: matches nothing; its negation every row.
        check(r("x"), &[("s=in.()", F), ("s=not.in.()", T)]);
        // One empty item is not an empty list.
        check(r(""), &[("s=in.()", F), (r#"s=in.("")"#, T), ("s=in.(a,)", T)]);
        // A literal that is not a number is unknown for a number, unless another one matches.
        check(json!({"n": 2}), &[("n=in.(x,2)", T), ("n=in.(x,3)", U), ("n=not.in.(x,3)", U), ("n=in.(3,4)", F)]);
    }

    #[test]
    fn like_and_ilike_patterns() {
        check(
            json!({"s": "Smith & Sons", "n": 100.5, "u": "ÉCOLE ΟΔΟΣ", "p": "100%_x", "e": "", "star": "a*b"}),
            &[
                ("s=like.Smith*", T),
                ("s=like.smith*", F),
                ("s=ilike.smith*", T),
                ("s=like.%Sons", T),
                ("s=like.*&*", T),
                ("s=like.Smith", F),
                ("s=like.S_ith & Sons", T),
                ("s=like.S_th*", F),
                ("s=like.____________", T),
                ("s=like.___________", F),
                ("s=like.*", T),
                ("s=like.**Sons**", T),
                ("s=like.%*%", T),
                ("e=like.*", T),
                ("e=like._", F),
                ("e=like.", T),
                ("s=like.", F),
                // Numbers and booleans match by their JSON text.
                ("n=like.100*", T),
                ("n=like.*.5", T),
                ("n=like.100.50", F),
                // Backslash escapes, as PostgreSQL's LIKE.
                ("p=like.100\\%\\_x", T),
                ("p=like.100\\%\\_y", F),
                ("p=like.1\\00*", T),
                ("s=like.Smith\\*", F),
                ("p=like.100\\*_x", F),
                ("p=like.*\\%*", T),
                // `\*` is a literal star here.
                ("star=like.a\\*b", T),
                ("star=like.a\\*", F),
                ("s=like.Smith\\* Sons", F),
                // Unicode lowercase, character by character.
                ("u=ilike.école*", T),
                ("u=ilike.*οδοσ", T),
                ("u=like.école*", F),
                ("u=ilike.ÉCOLE_ΟΔΟΣ", T),
                ("u=ilike.*_", T),
            ],
        );
    }

    #[test]
    fn like_takes_linear_time_on_pathological_patterns() {
        let text = "a".repeat(10_000);
        let r = row(json!({ "s": text }));
        let started = std::time::Instant::now();
        for pattern in
            ["*a*a*a*a*a*b", "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "%a%a%a%a%a_b", "*aaaaaaaaaaaaaaaab*"]
        {
            for op in ["like", "ilike"] {
                let p = Predicate::parse(&format!("s={op}.{pattern}")).unwrap();
                assert_eq!(p.evaluate(&r), F, "{pattern}");
            }
        }
        let p = Predicate::parse("s=like.*a*a*a*a*a*a").unwrap();
        assert_eq!(p.evaluate(&r), T);
        // A backtracking matcher takes hours here; this one takes milliseconds (in a debug build).
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    /// The error for `text`, checked to name `bad` and to show an example.
    fn error(text: &str, bad: &str) -> FilterError {
        let err = Predicate::parse(text).expect_err(text);
        let message = err.to_string();
        assert!(message.contains(bad), "{message:?} does not name {bad:?}");
        assert!(message.contains("e.g. "), "{message:?} has no example");
        assert!(!message.contains('\n'), "{message:?} is not one line");
        // The example after "e.g." parses (it is correct).
        let example = message.rsplit("e.g. ").next().unwrap();
        Predicate::parse(example).unwrap_or_else(|e| panic!("example {example:?} of {message:?}: {e}"));
        err
    }

    #[test]
    fn parse_errors_name_the_problem_and_show_an_example() {
        assert_eq!(
            error("status=equals.x", "\"equals\"").to_string(),
            "unknown operator \"equals\" in \"status=equals.x\"; use one of eq, neq, lt, lte, gt, gte, in, is, \
             like, ilike (optionally after not.), e.g. status=eq.pending"
        );
        assert!(matches!(error("statuspending", "statuspending"), FilterError::MissingEquals { .. }));
        assert!(matches!(error("", "\"\""), FilterError::MissingEquals { .. }));
        assert!(matches!(error("status=pending", "status=pending"), FilterError::MissingOperator { .. }));
        assert!(matches!(error("status=eq", "status=eq"), FilterError::MissingOperator { .. }));
        assert!(matches!(error("status=not.eq", "status=not.eq"), FilterError::MissingOperator { .. }));
        for column in ["1status", "sta-tus", "", "st atus", "é"] {
            let text = format!("{column}=eq.x");
            assert!(matches!(error(&text, &format!("{column:?}")), FilterError::BadColumn { .. }));
        }
        assert!(matches!(error("s=not.not.eq.x", "\"not\""), FilterError::UnknownOperator { .. }));
        assert!(matches!(error("s=EQ.x", "\"EQ\""), FilterError::UnknownOperator { .. }));
        for op in ["lt", "lte", "gt", "gte", "not.gt"] {
            let text = format!("amount={op}.");
            let err = error(&text, "empty");
            assert!(err.to_string().contains("bad value"), "{err}");
        }
        let err = error("x=is.maybe", "\"maybe\"");
        assert!(err.to_string().contains("null, not_null, true, false or unknown"), "{err}");
        error("x=is.", "null, not_null");
        error("x=is.NULL", "\"NULL\"");
        for (text, reason) in [
            ("s=in.a,b", "parentheses"),
            ("s=in.", "parentheses"),
            ("s=in.(a,b", "closing parenthesis"),
            ("s=in.(", "closing parenthesis"),
            ("s=in.(a))", "after the closing parenthesis"),
            ("s=in.(a)x", "after the closing parenthesis"),
            ("s=in.(\"a)", "quote is not closed"),
            ("s=in.(\"a\\\")", "quote is not closed"),
            ("s=in.(\"a\"b)", "after a closing quote"),
            ("s=in.(\"a\"", "closing parenthesis"),
            ("s=in.(a\"b\")", "quote inside"),
            ("s=in.(a(b)", "parenthesis inside"),
        ] {
            let err = error(text, reason);
            assert!(err.to_string().contains(&format!("{text:?}")), "{err} does not show the filter");
        }
        error("s=like.abc\\", "lone \\");
        error("s=ilike.\\", "lone \\");
    }

    #[test]
    fn values_are_taken_verbatim() {
        for (text, value) in [
            ("s=eq.a.b", "a.b"),
            ("s=eq.a=b", "a=b"),
            ("s=eq.(x)", "(x)"),
            ("s=eq.\"q\"", "\"q\""),
            ("s=eq. sp ", " sp "),
            ("s=neq.", ""),
            ("s=gt.not.x", "not.x"),
        ] {
            let p = Predicate::parse(text).unwrap();
            assert_eq!(p.column(), "s");
            let Test::Compare(_, literal) = &p.test else { panic!("{text}") };
            assert_eq!(&*literal.text, value);
        }
        // `not.` is a prefix of the operator only.
        let p = Predicate::parse("s=not.eq.not.x").unwrap();
        assert!(p.negated);
        assert_eq!(p.evaluate(&row(json!({"s": "not.x"}))), F);
    }

    #[test]
    fn filters_are_and_of_predicates() {
        let f = Filter::parse(["status=eq.pending", "amount=gte.100"]).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.matches(&row(json!({"status": "pending", "amount": 100.5}))));
        assert!(!f.matches(&row(json!({"status": "pending", "amount": 99}))));
        assert!(!f.matches(&row(json!({"status": "pending"}))));
        assert_eq!(f.to_string(), "status=eq.pending&amount=gte.100");
        assert_eq!(format!("{f:?}"), r#"Filter["status=eq.pending", "amount=gte.100"]"#);
        assert_eq!(format!("{:?}", f.predicates()[0]), r#"Predicate("status=eq.pending")"#);

        let all = Filter::all();
        assert!(all.is_empty() && all.matches(&row(json!({}))));
        assert_eq!(Filter::parse([]).unwrap(), all);
        assert_eq!(all.to_string(), "");

        let token = Filter::parse(["customer_name=eq.acme", "status=eq.pending"]).unwrap();
        let both = token.and(&f);
        assert_eq!(both.to_string(), "customer_name=eq.acme&status=eq.pending&amount=gte.100");
        assert!(both.matches(&row(json!({"customer_name": "acme", "status": "pending", "amount": 100}))));
        assert!(!both.matches(&row(json!({"customer_name": "other", "status": "pending", "amount": 100}))));
        assert_eq!(all.and(&f), f);

        let err = Filter::parse(["status=eq.pending", "amount=bigger.100"]).unwrap_err();
        assert!(err.to_string().contains("amount=bigger.100"));
    }

    #[test]
    fn selects_project_and_narrow() {
        let s = Select::parse("status,amount,status").unwrap();
        assert_eq!(s.to_string(), "status,amount");
        assert_eq!(s.columns().unwrap().collect::<Vec<_>>(), ["status", "amount"]);
        let r = row(json!({"id": 7, "status": "done", "amount": 1.5, "customer_name": "x"}));
        assert_eq!(Value::Object(s.project(&r)), json!({"id": 7, "status": "done", "amount": 1.5}));
        // Columns the row lacks are left out, not made null.
        let s = Select::parse("status,missing").unwrap();
        assert_eq!(Value::Object(s.project(&row(json!({"status": "a"})))), json!({"status": "a"}));
        assert!(s.contains("id") && s.contains("missing") && !s.contains("amount"));

        let all = Select::parse("*").unwrap();
        assert!(all.is_all() && all.contains("anything") && all.columns().is_none());
        assert_eq!(all, Select::all());
        assert_eq!(all.to_string(), "*");
        assert_eq!(all.project(&r), r);

        let token = Select::parse("id,status").unwrap();
        assert_eq!(all.narrow(&token).unwrap(), token);
        assert_eq!(Select::parse("status").unwrap().narrow(&token).unwrap().to_string(), "status");
        assert_eq!(token.narrow(&all).unwrap(), token);
        assert_eq!(all.narrow(&all).unwrap(), all);
        // `id` comes with every row, so asking for it is never outside the token.
        assert!(Select::parse("id").unwrap().narrow(&Select::parse("status").unwrap()).is_ok());
        assert_eq!(
            Select::parse("status,amount").unwrap().narrow(&token).unwrap_err(),
            "column \"amount\" is outside what your token may see (id, status)"
        );

        for (text, bad) in [
            ("", "empty"),
            ("id,,status", "empty column"),
            ("id,", "empty column"),
            (",id", "empty column"),
            ("id,1x", "\"1x\""),
            ("id, status", "\" status\""),
            ("id,sta-tus", "\"sta-tus\""),
        ] {
            let message = Select::parse(text).unwrap_err().to_string();
            assert!(message.contains(bad), "{message:?} does not name {bad:?}");
            assert!(message.contains(&format!("{text:?}")), "{message:?}");
            assert!(message.ends_with("e.g. select=id,status,amount"), "{message:?}");
        }
    }

    #[test]
    fn index_keys_are_canonical() {
        let key = |v: Value| IndexKey::of_row_value(&v).unwrap();
        assert_eq!(key(json!(100)), key(json!(100.0)));
        assert_eq!(key(json!(100)), key(json!(1e2)));
        assert_eq!(key(json!(0)), key(json!(-0.0)));
        assert_ne!(key(json!(100)), key(json!("100")));
        assert_ne!(key(json!(100)), key(json!(100.5)));
        assert_eq!(key(json!(true)), key(json!("true")));
        assert_eq!(key(json!({"a": [1, 2]})), key(json!(r#"{"a":[1,2]}"#)));
        assert_eq!(IndexKey::of_row_value(&Value::Null), None);

        let literal = IndexKey::of_literal("100");
        assert_eq!(literal.len(), 2);
        assert!(literal.contains(&key(json!(100.0))) && literal.contains(&key(json!("100"))));
        assert_eq!(IndexKey::of_literal("1e2"), [key(json!("1e2")), key(json!(100))]);
        assert_eq!(IndexKey::of_literal("abc"), [key(json!("abc"))]);
        // Not finite: no number row equals it.
        assert_eq!(IndexKey::of_literal("NaN"), [key(json!("NaN"))]);
    }

    #[test]
    fn index_terms_pick_the_eq_or_in_with_fewest_keys() {
        let terms = |items: &[&str]| {
            let f = Filter::parse(items.iter().copied()).unwrap();
            f.index_terms().map(|(column, keys)| (column.to_owned(), keys.len()))
        };
        assert_eq!(terms(&["amount=gte.100", "status=eq.pending"]), Some(("status".into(), 1)));
        assert_eq!(terms(&["id=eq.7", "status=eq.pending"]), Some(("status".into(), 1)));
        assert_eq!(terms(&["status=in.(a,b,c)", "id=eq.7"]), Some(("id".into(), 2)));
        assert_eq!(terms(&["status=in.(a,b,a)"]), Some(("status".into(), 2)));
        assert_eq!(terms(&["n=in.(1,1.0,1e0)"]), Some(("n".into(), 4)));
        assert_eq!(terms(&["status=in.()"]), Some(("status".into(), 0)));
        assert_eq!(terms(&["status=not.eq.x", "amount=gt.1", "s=like.a*", "x=is.null"]), None);
        assert_eq!(terms(&[]), None);
    }

    #[test]
    fn index_insert_replace_remove() {
        let mut index = Index::new();
        let f = |items: &[&str]| Filter::parse(items.iter().copied()).unwrap();
        index.insert(1, &f(&["status=eq.pending"]));
        index.insert(2, &f(&["status=in.(pending,done)", "amount=gte.100"]));
        index.insert(3, &f(&["amount=gte.100"]));
        index.insert(4, &f(&["status=in.()"]));
        index.insert(5, &f(&["id=eq.7"]));
        assert_eq!((index.len(), index.unindexed_len()), (5, 1));

        let matching = |index: &Index<u32>, r: Value| {
            let mut out = vec![0];
            index.matching(&row(r), &mut out);
            out.sort_unstable();
            out
        };
        assert_eq!(matching(&index, json!({"id": 7, "status": "pending", "amount": 100})), [0, 1, 2, 3, 5]);
        assert_eq!(matching(&index, json!({"id": 7.0, "status": "done", "amount": 5})), [0, 5]);
        assert_eq!(matching(&index, json!({"id": "7", "status": null})), [0, 5]);

        let mut candidates = Vec::new();
        index.candidates(&row(json!({"id": 8, "status": "done", "amount": 5})), &mut candidates);
        candidates.sort_unstable();
        assert_eq!(candidates, [2, 3]);

        index.insert(1, &f(&["amount=lt.1"]));
        assert_eq!(index.get(1), Some(&f(&["amount=lt.1"])));
        assert_eq!(matching(&index, json!({"id": 1, "status": "pending", "amount": 0})), [0, 1]);
        assert!(index.remove(1) && !index.remove(1) && index.remove(4));
        assert_eq!((index.len(), index.unindexed_len()), (3, 1));
        assert!(index.remove(2) && index.remove(3) && index.remove(5));
        assert!(index.is_empty() && index.columns.is_empty() && index.unindexed.is_empty());
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap()
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const COLUMNS: [&str; 4] = ["a", "b", "c", "id"];
    const LITERALS: [&str; 14] = ["1", "1.0", "-2", "2", "x", "y", "X", "true", "false", "", "1e0", "abc", "1.5", "xy"];

    fn random_value(rng: &mut Rng) -> Option<Value> {
        Some(match rng.below(14) {
            0 => return None,
            1 => Value::Null,
            2..=4 => json!(rng.below(5) as i64 - 2),
            5 => json!(*rng.pick(&[1.0, 1.5, -2.0, 0.5])),
            6..=9 => json!(*rng.pick(&["x", "y", "X", "xy", "", "1", "true", "abc"])),
            10 | 11 => json!(rng.below(2) == 0),
            12 => json!([1, "x"]),
            _ => json!(9),
        })
    }

    fn random_predicate(rng: &mut Rng) -> String {
        let column = rng.pick(&COLUMNS);
        let not = if rng.below(4) == 0 { "not." } else { "" };
        let op = match rng.below(12) {
            0..=3 => format!("eq.{}", rng.pick(&LITERALS)),
            4 => format!("neq.{}", rng.pick(&LITERALS)),
            5 => format!("{}.{}", rng.pick(&["lt", "lte", "gt", "gte"]), rng.pick(&LITERALS[..9])),
            6..=8 => {
                let items: Vec<String> = (0..rng.below(4))
                    .map(|_| {
                        let l = rng.pick(&LITERALS);
                        if rng.below(2) == 0 { format!("\"{l}\"") } else { (*l).to_owned() }
                    })
                    .collect();
                format!("in.({})", items.join(","))
            }
            9 => format!("is.{}", rng.pick(&["null", "not_null", "true", "false", "unknown"])),
            10 => format!("like.{}", rng.pick(&["x*", "*y", "_", "%", "1*", "tr_e"])),
            _ => format!("ilike.{}", rng.pick(&["x*", "X_", "*"])),
        };
        format!("{column}={not}{op}")
    }

    fn random_filter(rng: &mut Rng) -> Filter {
        let items: Vec<String> = (0..rng.below(4)).map(|_| random_predicate(rng)).collect();
        Filter::parse(items.iter().map(String::as_str)).unwrap()
    }

    #[test]
    fn index_finds_exactly_what_testing_every_filter_finds() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut index = Index::new();
        let mut filters: HashMap<u32, Filter> = HashMap::new();
        for k in 0..400 {
            let filter = random_filter(&mut rng);
            index.insert(k, &filter);
            filters.insert(k, filter);
        }
        // Churn: removals and replacements must leave nothing behind.
        for _ in 0..300 {
            let k = u32::try_from(rng.below(450)).unwrap();
            if rng.below(2) == 0 {
                assert_eq!(index.remove(k), filters.remove(&k).is_some());
            } else {
                let filter = random_filter(&mut rng);
                index.insert(k, &filter);
                filters.insert(k, filter);
            }
        }
        assert_eq!(index.len(), filters.len());

        let (mut matched, mut out, mut candidates) = (0, Vec::new(), Vec::new());
        for _ in 0..2000 {
            let mut r = Map::new();
            for column in COLUMNS {
                if let Some(value) = random_value(&mut rng) {
                    r.insert(column.to_owned(), value);
                }
            }
            let mut brute: Vec<u32> = filters.iter().filter(|(_, f)| f.matches(&r)).map(|(k, _)| *k).collect();
            brute.sort_unstable();
            out.clear();
            index.matching(&r, &mut out);
            out.sort_unstable();
            assert_eq!(out, brute, "row {r:?}");
            matched += out.len();

            candidates.clear();
            index.candidates(&r, &mut candidates);
            candidates.sort_unstable();
            let len = candidates.len();
            candidates.dedup();
            assert_eq!(candidates.len(), len, "a candidate came twice for {r:?}");
            assert!(brute.iter().all(|k| candidates.binary_search(k).is_ok()), "candidates miss a match for {r:?}");

            // The guarantee the index rests on, filter by filter.
            for f in filters.values().filter(|f| f.matches(&r)) {
                if let Some((column, keys)) = f.index_terms() {
                    let key = r.get(column).and_then(IndexKey::of_row_value);
                    assert!(key.is_some_and(|key| keys.contains(&key)), "{f:?} matches {r:?}");
                }
            }
        }
        // The test is only as good as its matches.
        assert!(matched > 2000, "only {matched} matches");
        // Both kinds were exercised, and the unindexed ones are exactly those without terms.
        let unindexed = filters.values().filter(|f| f.index_terms().is_none()).count();
        assert_eq!(index.unindexed_len(), unindexed);
        assert!(0 < unindexed && unindexed < filters.len(), "{unindexed} of {}", filters.len());
    }
}
