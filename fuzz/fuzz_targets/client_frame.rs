//! `ClientFrame::parse`, which every WebSocket text frame from a client goes through.
//!
//! Invariants: it never panics; a frame it accepts serializes back to a frame it accepts,
//! unchanged (but for the last bits of a float, see [`same_but_float_rounding`]); `invalid_json`
//! is answered exactly when the text is not JSON; the `error` frame that carries the message
//! (which quotes client text) round-trips through its JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{
    frames::{ClientFrame, ErrorCode, ServerFrame},
    log::Position,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time the server sees them.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            let json = serde_json::to_string(&frame).expect("client frames serialize");
            let again = ClientFrame::parse(&json).unwrap_or_else(|e| panic!("re-parsing {json}: {e:?}"));
            if again != frame {
                let (a, b) = (serde_json::to_value(&again), serde_json::to_value(&frame));
                let (a, b) = (a.expect("client frames serialize"), b.expect("client frames serialize"));
                assert!(same_but_float_rounding(&a, &b), "re-parsing {json} gave {again:?}, not {frame:?}");
            }
            if let ClientFrame::Subscribe(protocol::frames::Subscribe { since: Some(position), .. }) = &frame {
                // The JSON form and the text form (`?since=EPOCH:POS`) name the same position.
                assert_eq!(Position::parse(&position.to_string()).as_ref(), Ok(position));
            }
        }
        Err((code, message)) => {
            let is_json = serde_json::from_str::<Value>(text).is_ok();
            assert_eq!(code == ErrorCode::InvalidJson, !is_json, "{code:?} for {text:?}");
            assert!(!message.is_empty());
            let error = ServerFrame::Error { code, id: None, message };
            let parsed: ServerFrame = serde_json::from_str(&error.to_json()).expect("error frames parse back");
            assert_eq!(parsed, error);
        }
    }
});

/// Equal, except that floats may differ in their last bits: serde_json (without its
/// `float_roundtrip` feature, which this workspace does not enable) may parse a float with 17
/// significant digits a few units in the last place off, so `ping` ids like that come back in
/// the `pong` slightly changed (docs/fuzzing.md, "Findings").
fn same_but_float_rounding(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().expect("is_f64"), y.as_f64().expect("is_f64"));
            // Floats of one sign are ordered like their bit patterns: this allows a few dozen
            // units in the last place (relative 1e-14), which the rounding stays well within.
            x.is_sign_negative() == y.is_sign_negative() && x.to_bits().abs_diff(y.to_bits()) <= 64
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_but_float_rounding(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, x)| y.get(key).is_some_and(|y| same_but_float_rounding(x, y)))
        }
        _ => a == b,
    }
}
