//! Signed wake-ups (`sql/0007_signed_wakeups.sql`): the trigger adds to each change it sends
//! by NOTIFY a last field, `"sig"`, made with the key in `realtime_notify_key`. A payload whose
//! signature checks out is a committed change (NOTIFY delivers only at commit, and only the
//! trigger, run by a role that may write the outbox, knows the key), so the publisher can append
//! it without reading its outbox row. What does not check out takes the read, as every
//! wake-up did before (the publisher's `active` module keeps the dedupe exact).

use sha2::{Digest, Sha256};

/// What the trigger inserts before the change's closing brace: `, "sig" : "<64 hex>"`.
const SIG_OPEN: &str = r#", "sig" : ""#;
const SIG_LEN: usize = SIG_OPEN.len() + 64 + r#""}"#.len();

/// The key of the trigger's signatures: `sha256(outer || sha256(inner || change))`.
#[derive(Clone)]
pub struct NotifyKey {
    /// SHA-256 states with each key already absorbed (both are one 64-byte block).
    inner: Sha256,
    outer: Sha256,
}

impl std::fmt::Debug for NotifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotifyKey(..)")
    }
}

/// See [`NotifyKey::open`].
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// No signature: a writer that may not read the key, or not the trigger.
    Unsigned,
    /// Signed with this key: the change exactly as the trigger wrote it to the outbox.
    Signed(String),
    /// A signature this key did not make: forged, altered, or made with a key replaced since
    /// this session loaded it.
    Forged,
}

impl NotifyKey {
    #[must_use]
    pub fn new(inner: &[u8], outer: &[u8]) -> Self {
        Self { inner: Sha256::new_with_prefix(inner), outer: Sha256::new_with_prefix(outer) }
    }

    /// What a payload's signature says.
    #[must_use]
    pub fn open(&self, payload: &str) -> Opened {
        let Some((body, sig)) = payload.len().checked_sub(SIG_LEN).and_then(|at| payload.split_at_checked(at)) else {
            return Opened::Unsigned;
        };
        let Some(hex) = sig.strip_prefix(SIG_OPEN).and_then(|rest| rest.strip_suffix(r#""}"#)) else {
            return Opened::Unsigned;
        };
        let Some(claimed) = decode_hex(hex) else { return Opened::Forged };
        let mut change = String::with_capacity(body.len() + 1);
        change.push_str(body);
        change.push('}');
        let actual = self.sign(change.as_bytes());
        // Constant time: a forger learns nothing from how long the comparison took.
        let differ = actual.iter().zip(claimed.iter()).fold(0_u8, |acc, (a, b)| acc | (a ^ b));
        if differ == 0 { Opened::Signed(change) } else { Opened::Forged }
    }

    /// The payload the trigger sends for `change` (a JSON object's text).
    #[must_use]
    pub fn signed(&self, change: &str) -> String {
        let body = change.strip_suffix('}').unwrap_or(change);
        let mut out = String::with_capacity(body.len() + SIG_LEN);
        out.push_str(body);
        out.push_str(SIG_OPEN);
        for byte in self.sign(change.as_bytes()) {
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
        }
        out.push_str(r#""}"#);
        out
    }

    fn sign(&self, change: &[u8]) -> [u8; 32] {
        let inner = self.inner.clone().chain_update(change).finalize();
        self.outer.clone().chain_update(inner).finalize().into()
    }
}

/// 64 lowercase hex digits (`encode(…, 'hex')`'s) as 32 bytes.
fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key and payload from PostgreSQL 15 with `sql/0007_signed_wakeups.sql` (the signature
    /// also checked with Python's hashlib).
    const INNER: &str = "435436fe7dc94f668760a9e6dce9674e509f4892f04f4d67855ffa0292bdeabfd80717a2fe444d92a62e4948ac65106e5642fbac15784a0b934597260c588042";
    const OUTER: &str = "924dd33ec96146eaab2a45be1a6d45b315d6b376fd9340d79d2c6ae5676aeb2850d31e7381f84c64aaf5f020228a8b33765f104944e3435fb35f25a7f777ae43";
    const CHANGE: &str = r#"{"id" : 1, "table" : "orders", "operation" : "INSERT", "order" : {"id":1,"customer_name":"a","product_name":"b€","status":"pending","amount":1.00,"created_at":"2026-12-07T22:52:41.924214+00:00","updated_at":"2026-12-07T22:52:41.924214+00:00"}, "old" : null, "ts" : "2026-12-07T22:52:41.926854+00:00"}"#;
    const SIG: &str = "39a3dd117d7849ecde4bab2022ab846fd8ae00be5051fce0d2ded3dede09077c";

    fn key() -> NotifyKey {
        let bytes = |hex: &str| {
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect::<Vec<_>>()
        };
        NotifyKey::new(&bytes(INNER), &bytes(OUTER))
    }

    fn signed(change: &str, sig: &str) -> String {
        format!(r#"{}, "sig" : "{sig}"}}"#, &change[..change.len() - 1])
    }

    #[test]
    fn a_payload_the_trigger_signed_opens_to_the_change_it_wrote() {
        assert_eq!(key().open(&signed(CHANGE, SIG)), Opened::Signed(CHANGE.to_owned()));
        assert_eq!(key().signed(CHANGE), signed(CHANGE, SIG), "signs as the trigger does");
    }

    #[test]
    fn anything_else_does_not_open() {
        let key = key();
        let mut flipped = SIG.to_owned();
        flipped.replace_range(0..1, "4");
        let altered = CHANGE.replace(r#""amount":1.00"#, r#""amount":9.00"#);
        for (payload, opened) in [
            (CHANGE.to_owned(), Opened::Unsigned),
            (signed(CHANGE, &flipped), Opened::Forged),
            (signed(&altered, SIG), Opened::Forged),
            (signed(CHANGE, &SIG.to_uppercase()), Opened::Forged), // not encode()'s hex
            (signed(CHANGE, &SIG[..63]), Opened::Unsigned),        // no signature where it goes
            (format!("{}x", signed(CHANGE, SIG)), Opened::Unsigned),
            (String::new(), Opened::Unsigned),
            ("é".repeat(60), Opened::Unsigned), // the split falls inside a character
        ] {
            assert_eq!(key.open(&payload), opened, "{payload}");
        }
        let other = NotifyKey::new(&[1; 64], &[2; 64]);
        assert_eq!(other.open(&signed(CHANGE, SIG)), Opened::Forged, "another key");
    }
}
