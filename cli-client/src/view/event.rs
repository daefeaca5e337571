//! One event as one line of text: the human summary (with what an UPDATE changed), or the
//! frame as compact JSON.
//!
//! Row values come from the database, i.e. from anyone who can write an order: control
//! characters are escaped so a customer name cannot move the cursor, clear the screen or break
//! the one-line-per-event promise.

use std::borrow::Cow;

use protocol::{
    event::Operation,
    frames::{EventFrame, SnapshotRow},
    log::Position,
};
use serde_json::Value;

use super::Color;

/// The ANSI colour of snapshot lines (cyan): apart from the operations' green, amber and red.
const CYAN: &str = "36";

/// Fields every UPDATE changes, left out of the change list.
const UNINTERESTING: &[&str] = &["updated_at"];

/// One top-level field that differs between the old and the new row.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange<'a> {
    /// The column.
    pub field: &'a str,
    /// The value before (`None`: the field was absent).
    pub old: Option<&'a Value>,
    /// The value after (`None`: the field is absent now).
    pub new: Option<&'a Value>,
}

/// The top-level fields that differ between `old` and `new` rows, by field name, leaving out
/// `updated_at`. Rows that are not JSON objects have no fields.
pub fn changed_fields<'a>(old: &'a Value, new: &'a Value) -> Vec<FieldChange<'a>> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else { return Vec::new() };
    let mut fields: Vec<&'a str> = old.keys().chain(new.keys()).map(String::as_str).collect();
    fields.sort_unstable();
    fields.dedup();
    fields
        .into_iter()
        .filter(|field| !UNINTERESTING.contains(field))
        .map(|field| FieldChange { field, old: old.get(field), new: new.get(field) })
        .filter(|change| change.old != change.new)
        .collect()
}

/// `status: pending → completed, amount: 10.00 → 12.50`; `no changes` when the list is empty.
pub fn describe_changes(changes: &[FieldChange<'_>]) -> String {
    if changes.is_empty() {
        return "no changes".to_owned();
    }
    let side =
        |field: &str, value: Option<&Value>| value.map_or_else(|| "(absent)".to_owned(), |v| value_text(field, v));
    changes
        .iter()
        .map(|c| format!("{}: {} → {}", sanitize(c.field), side(c.field, c.old), side(c.field, c.new)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human line for one event, e.g.
/// `17:39:19 UPDATE #42 Alice · Blue widget · completed · 19.99 — status: pending → completed`.
///
/// `time` is the already formatted time of day. Fields missing from the row are left out.
pub fn event_line(frame: &EventFrame, time: &str, color: Color) -> String {
    let row = &frame.order;
    let mut line = format!("{time} {}", paint(frame.operation, color));
    push_row_summary(&mut line, &frame.table, row);
    if let (Operation::Update, Some(old)) = (frame.operation, &frame.old) {
        line.push_str(" — ");
        line.push_str(&describe_changes(&changed_fields(old, row)));
    }
    line
}

/// The human line for one snapshot row, e.g. `SNAPSHOT #42 Alice · Blue widget · pending · 19.99`
/// (`SNAPSHOT` in cyan with colour).
pub fn snapshot_line(row: &SnapshotRow, color: Color) -> String {
    let mut line = match color {
        Color::Off => "SNAPSHOT".to_owned(),
        Color::On => format!("\x1b[{CYAN}mSNAPSHOT\x1b[0m"),
    };
    push_row_summary(&mut line, &row.table, &row.order);
    line
}

/// The line before a snapshot's rows: `=== snapshot at e1:42: 3 rows ===`.
pub fn snapshot_header(position: Option<&Position>, rows: usize, color: Color) -> String {
    let at = position.map_or_else(|| "an unknown position".to_owned(), |p| sanitize(&p.to_string()).into_owned());
    let text = format!("=== snapshot at {at}: {rows} {} ===", if rows == 1 { "row" } else { "rows" });
    match color {
        Color::Off => text,
        Color::On => format!("\x1b[{CYAN}m{text}\x1b[0m"),
    }
}

/// Snapshot rows in a stable order for people: by table, then by id (numbers numerically).
pub fn sort_rows(rows: &mut [&SnapshotRow]) {
    rows.sort_by(|a, b| {
        let key = |row: &SnapshotRow| match row.order.get("id") {
            Some(Value::Number(n)) => (0, n.as_f64().unwrap_or(f64::MAX), String::new()),
            Some(other) => (1, 0.0, other.to_string()),
            None => (2, 0.0, String::new()),
        };
        let (ka, kb) = (key(a), key(b));
        a.table.cmp(&b.table).then(ka.0.cmp(&kb.0)).then(ka.1.total_cmp(&kb.1)).then_with(|| ka.2.cmp(&kb.2))
    });
}

/// ` [table] #id customer · product · status · amount`: the table only when it is not
/// `orders`; fields missing from the row left out.
fn push_row_summary(line: &mut String, table: &str, row: &Value) {
    if table != protocol::event::LEGACY_TABLE {
        line.push(' ');
        line.push_str(&sanitize(table));
    }
    let id = row.get("id").filter(|v| !v.is_null()).map_or_else(|| "?".to_owned(), |v| value_text("id", v));
    line.push_str(&format!(" #{id}"));
    let summary: Vec<String> = ["customer_name", "product_name", "status", "amount"]
        .into_iter()
        .filter_map(|field| row.get(field).filter(|v| !v.is_null()).map(|v| value_text(field, v)))
        .collect();
    if !summary.is_empty() {
        line.push(' ');
        line.push_str(&summary.join(" · "));
    }
}

/// The frame as one line of JSON: `raw` as received, with any whitespace between tokens
/// removed (key order and number spelling kept; already compact text is borrowed unchanged).
pub fn json_line(raw: &str) -> Cow<'_, str> {
    let mut in_string = false;
    let mut escaped = false;
    let is_compact = raw.chars().all(|c| {
        let keep = in_string || !c.is_whitespace();
        track_string(c, &mut in_string, &mut escaped);
        keep
    });
    if is_compact {
        return Cow::Borrowed(raw);
    }
    let (mut in_string, mut escaped) = (false, false);
    let compact = raw
        .chars()
        .filter(|&c| {
            let keep = in_string || !c.is_whitespace();
            track_string(c, &mut in_string, &mut escaped);
            keep
        })
        .collect();
    Cow::Owned(compact)
}

fn track_string(c: char, in_string: &mut bool, escaped: &mut bool) {
    if *escaped {
        *escaped = false;
    } else if *in_string && c == '\\' {
        *escaped = true;
    } else if c == '"' {
        *in_string = !*in_string;
    }
}

/// The operation keyword, coloured: INSERT green, UPDATE amber, DELETE red.
fn paint(operation: Operation, color: Color) -> Cow<'static, str> {
    let word = operation.as_str();
    match color {
        Color::Off => Cow::Borrowed(word),
        Color::On => {
            let code = match operation {
                Operation::Insert => "32",
                Operation::Update => "33",
                Operation::Delete => "31",
            };
            Cow::Owned(format!("\x1b[{code}m{word}\x1b[0m"))
        }
    }
}

/// A value as a person reads it: strings without quotes, amounts with two decimals.
fn value_text(field: &str, value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => sanitize(s).into_owned(),
        Value::Number(n) if field == "amount" => match n.as_f64() {
            // numeric(10,2) arrives as 10.5 once parsed; show it as money again.
            Some(f) if n.is_f64() && ((f * 100.0).round() - f * 100.0).abs() < 1e-6 => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => sanitize(&other.to_string()).into_owned(),
    }
}

/// Escapes control characters (ESC, newline, …) so that data cannot drive the terminal.
fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frame(operation: Operation, order: Value, old: Option<Value>) -> EventFrame {
        EventFrame { epoch: None, pos: None, id: Some(7), table: "orders".into(), operation, order, old, ts: None }
    }

    fn row(status: &str) -> Value {
        json!({"id": 42, "customer_name": "Alice", "product_name": "Blue widget", "status": status,
               "amount": 19.99, "created_at": "2026-11-26T17:00:00+00:00", "updated_at": "2026-11-26T17:39:19+00:00"})
    }

    #[test]
    fn update_diff_names_each_changed_field() {
        let old = json!({"id": 1, "status": "pending", "updated_at": "a"});
        let new = json!({"id": 1, "status": "completed", "updated_at": "b"});
        assert_eq!(describe_changes(&changed_fields(&old, &new)), "status: pending → completed");
    }

    #[test]
    fn diff_covers_several_fields_added_and_removed_ones() {
        let old = json!({"amount": 10.5, "status": "pending", "note": "x"});
        let new = json!({"amount": 12, "status": "shipped", "extra": true});
        assert_eq!(
            describe_changes(&changed_fields(&old, &new)),
            "amount: 10.50 → 12, extra: (absent) → true, note: x → (absent), status: pending → shipped"
        );
    }

    #[test]
    fn an_update_of_only_updated_at_has_no_changes() {
        let (old, new) = (json!({"updated_at": "a", "id": 1}), json!({"updated_at": "b", "id": 1}));
        let changes = changed_fields(&old, &new);
        assert!(changes.is_empty());
        assert_eq!(describe_changes(&changes), "no changes");
    }

    #[test]
    fn update_line_without_colour() {
        let line =
            event_line(&frame(Operation::Update, row("completed"), Some(row("pending"))), "17:39:19", Color::Off);
        assert_eq!(line, "17:39:19 UPDATE #42 Alice · Blue widget · completed · 19.99 — status: pending → completed");
    }

    #[test]
    fn lines_with_colour_paint_only_the_operation() {
        let insert = event_line(&frame(Operation::Insert, row("pending"), None), "09:00:00", Color::On);
        assert_eq!(insert, "09:00:00 \x1b[32mINSERT\x1b[0m #42 Alice · Blue widget · pending · 19.99");
        let update = event_line(&frame(Operation::Update, row("done"), Some(row("pending"))), "09:00:00", Color::On);
        assert!(update.starts_with("09:00:00 \x1b[33mUPDATE\x1b[0m #42"), "{update:?}");
        let delete = event_line(&frame(Operation::Delete, row("done"), None), "09:00:00", Color::On);
        assert!(delete.starts_with("09:00:00 \x1b[31mDELETE\x1b[0m #42"), "{delete:?}");
    }

    #[test]
    fn delete_line_summarises_the_deleted_row() {
        let line = event_line(&frame(Operation::Delete, row("cancelled"), None), "10:11:12", Color::Off);
        assert_eq!(line, "10:11:12 DELETE #42 Alice · Blue widget · cancelled · 19.99");
    }

    #[test]
    fn missing_fields_are_left_out_and_other_tables_named() {
        let mut f = frame(Operation::Insert, json!({"status": "new"}), None);
        f.table = "refunds".into();
        assert_eq!(event_line(&f, "10:11:12", Color::Off), "10:11:12 INSERT refunds #? new");
    }

    #[test]
    fn data_cannot_inject_terminal_escapes_or_newlines() {
        let order = json!({"id": 1, "customer_name": "Eve\x1b[2J\nBob", "status": "new"});
        let line = event_line(&frame(Operation::Insert, order, None), "10:11:12", Color::Off);
        assert_eq!(line, "10:11:12 INSERT #1 Eve\\u{1b}[2J\\nBob · new");
    }

    #[test]
    fn snapshot_rows_read_like_events_and_sort_by_id() {
        let rows = [
            SnapshotRow { table: "orders".into(), order: json!({"id": 10, "customer_name": "Bo", "status": "new"}) },
            SnapshotRow { table: "orders".into(), order: row("pending") },
            SnapshotRow { table: "orders".into(), order: json!({"id": 9, "amount": 5.5}) },
        ];
        let mut sorted: Vec<&SnapshotRow> = rows.iter().collect();
        sort_rows(&mut sorted);
        let lines: Vec<String> = sorted.iter().map(|r| snapshot_line(r, Color::Off)).collect();
        assert_eq!(
            lines,
            ["SNAPSHOT #9 5.50", "SNAPSHOT #10 Bo · new", "SNAPSHOT #42 Alice · Blue widget · pending · 19.99"]
        );
        assert_eq!(snapshot_line(&rows[0], Color::On), "\x1b[36mSNAPSHOT\x1b[0m #10 Bo · new");
        let at = Position { epoch: "e1".into(), pos: 42 };
        assert_eq!(snapshot_header(Some(&at), 3, Color::Off), "=== snapshot at e1:42: 3 rows ===");
        assert_eq!(snapshot_header(None, 1, Color::Off), "=== snapshot at an unknown position: 1 row ===");
    }

    #[test]
    fn json_line_is_the_raw_frame() {
        let raw = r#"{"type":"event","id":7,"table":"orders","operation":"INSERT","order":{"amount":10.50,"b":"a b"}}"#;
        assert!(matches!(json_line(raw), Cow::Borrowed(s) if s == raw));
    }

    #[test]
    fn json_line_compacts_pretty_frames_without_touching_strings() {
        let raw = "{\n  \"type\": \"event\",\n  \"order\": {\"name\": \"a \\\" b\", \"amount\": 10.50}\n}\n";
        assert_eq!(json_line(raw), r#"{"type":"event","order":{"name":"a \" b","amount":10.50}}"#);
    }
}
