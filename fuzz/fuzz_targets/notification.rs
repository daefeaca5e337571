//! `parse_notification`, which every payload on the NOTIFY channel goes through, and what the
//! publisher makes of a change: the event JSON, the replay log's body and the row's state key.
//!
//! Invariants: nothing panics; the event JSON is JSON naming the same type, table, operation,
//! id and timestamp, with the row bytes unchanged; the append script's prefix plus the log body
//! is the same event with `epoch` and `pos`, and reads as an event frame (as ws-server and
//! cli-client read it); a row key is `<table>:<the row's id>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{
    event::{Change, Notification, parse_notification},
    frames::ServerFrame,
};
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    // PostgreSQL hands notifications over as text in the database encoding (UTF-8 here).
    let Ok(payload) = std::str::from_utf8(data) else { return };
    match parse_notification(payload) {
        Ok(Notification::Change(change)) => check_change(&change),
        Ok(Notification::Reference { .. }) => {}
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});

fn check_change(change: &Change) {
    let text = change.to_event_json();
    let event: Value = match serde_json::from_str(&text) {
        Ok(event) => event,
        Err(e) if beyond_serde_json_limits(&e) => return,
        Err(e) => panic!("event JSON {text} is not JSON: {e}"),
    };
    assert_eq!(event["type"], "event");
    assert_eq!(event["table"], change.table.as_str());
    assert_eq!(event["operation"], change.operation.as_str());
    assert_eq!(event.get("id"), change.id.map(Value::from).as_ref());
    assert_eq!(event.get("ts").and_then(Value::as_str), change.ts.as_deref());
    assert!(event["order"].is_object());
    assert_eq!(event.get("old").is_some(), change.old.is_some());
    // Rows are forwarded byte for byte, never re-encoded.
    assert!(text.contains(&format!(r#""order":{}"#, change.order.get())));

    // What the PUBLISH script in protocol::log writes in front of the body.
    let framed = format!(r#"{{"type":"event","epoch":"e1","pos":7,{}"#, change.to_log_body_rest());
    let logged: Value = serde_json::from_str(&framed).unwrap_or_else(|e| panic!("log frame {framed} is not JSON: {e}"));
    let mut expected = event.clone();
    expected["epoch"] = json!("e1");
    expected["pos"] = json!(7);
    assert_eq!(logged, expected);
    let frame: ServerFrame =
        serde_json::from_str(&framed).unwrap_or_else(|e| panic!("{framed} is not an event frame: {e}"));
    let ServerFrame::Event(e) = frame else { panic!("{framed} parsed as another frame") };
    assert_eq!((e.epoch.as_deref(), e.pos, e.id), (Some("e1"), Some(7), change.id));
    assert_eq!(
        (e.table.as_str(), e.operation, e.ts.as_deref()),
        (change.table.as_str(), change.operation, change.ts.as_deref())
    );

    if let Some(key) = change.row_key() {
        let id = match &event["order"]["id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("row key {key:?} from an id that is {other}"),
        };
        assert_eq!(key, format!("{}:{id}", change.table));
    }
}

/// Known limits, not bugs here: a number beyond f64 (PostgreSQL's `numeric` holds 1e400) or a
/// row nested deeper than 128 levels (a `json` column can be) is valid JSON and goes out byte
/// for byte, as rows do, but serde_json readers refuse it (docs/fuzzing.md, "Findings").
fn beyond_serde_json_limits(err: &serde_json::Error) -> bool {
    let message = err.to_string();
    message.starts_with("number out of range") || message.starts_with("recursion limit exceeded")
}
