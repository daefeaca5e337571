//! `protocol::signed::NotifyKey::open`, the publisher's check of a NOTIFY payload's signature
//! (anyone who may connect can send any payload on the channel).
//!
//! Invariants: it never panics; what it opens as signed, signed again by the same key, is the
//! payload itself (so nothing but the key's own signature over exactly that change opens); and
//! any change the key signs opens back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::signed::{NotifyKey, Opened};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let key = NotifyKey::new(&[0x36; 64], &[0x5c; 64]);
    if let Opened::Signed(change) = key.open(text) {
        assert_eq!(key.signed(&change), text, "opened {change:?}");
    }
    if text.ends_with('}') {
        assert_eq!(key.open(&key.signed(text)), Opened::Signed(text.to_owned()), "{text:?}");
    }
});
