//! `Predicate::parse` and `Select::parse`, the filter syntax of URLs, `subscribe` frames and
//! tokens' claims, and evaluation on a row.
//!
//! Invariants: parsing never panics; an accepted predicate prints as its source text, which
//! parses back to an equal predicate; evaluating it on a fixed row of every JSON type never
//! panics, and its negation (`not.`) is the SQL negation (unknown stays unknown); the index
//! finds a filter whenever it matches the row. An accepted select projects any row to a subset of
//! its columns, always keeping `id`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::filter::{Filter, Index, Predicate, Select};
use serde_json::{Map, Value, json};

fn row() -> Map<String, Value> {
    let v = json!({"id": 7, "status": "pending", "amount": 100.5, "paid": true, "note": null,
        "tags": ["a", "b"], "meta": {"k": 1}, "name": "Ünïcode, (quoted)", "big": 12345678901234567890u64});
    v.as_object().expect("an object").clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let row = row();
    if let Ok(predicate) = Predicate::parse(text) {
        assert_eq!(predicate.as_str(), text);
        let again = Predicate::parse(&predicate.to_string()).expect("its own text parses");
        assert_eq!(again, predicate);
        let value = predicate.evaluate(&row);
        if let Some((column, rest)) = text.split_once('=')
            && !rest.starts_with("not.")
            && let Ok(negated) = Predicate::parse(&format!("{column}=not.{rest}"))
        {
            assert_eq!(negated.evaluate(&row), value.map(|b| !b), "{text:?}");
        }
        let filter = Filter::parse([text]).expect("a predicate is a filter");
        let mut index = Index::new();
        index.insert(1u32, &filter);
        let mut out = Vec::new();
        index.matching(&row, &mut out);
        assert_eq!(out == [1], filter.matches(&row), "{text:?}");
    }
    if let Ok(select) = Select::parse(text) {
        let projected = select.project(&row);
        assert!(projected.keys().all(|k| row.contains_key(k)));
        assert!(projected.contains_key("id"));
    }
});
