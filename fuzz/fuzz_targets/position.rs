//! `Position::parse`, the text form `EPOCH:POS` of `?since=`, `Last-Event-ID` and
//! `cli-client --since`.
//!
//! Invariants: it never panics; what it accepts has a non-empty epoch, prints (`Display`) as
//! text that parses back to the same position, and prints as the input itself when the input
//! wrote the number canonically (no `+`, no leading zeros); the JSON form round-trips too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::log::Position;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(position) = Position::parse(text) else { return };
    assert!(!position.epoch.is_empty());
    let shown = position.to_string();
    assert_eq!(Position::parse(&shown).as_ref(), Ok(&position), "{shown:?} from {text:?}");
    let (_, digits) = text.rsplit_once(':').expect("an accepted position has a ':'");
    if digits == "0" || !(digits.starts_with('+') || digits.starts_with('0')) {
        assert_eq!(shown, text);
    }
    let json = serde_json::to_string(&position).expect("positions serialize");
    assert_eq!(serde_json::from_str::<Position>(&json).expect("positions parse back"), position);
});
