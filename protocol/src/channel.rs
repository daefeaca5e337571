//! Channel names: the PostgreSQL NOTIFY channel and the Redis pub/sub channel.
//!
//! Names are validated once, when configuration is loaded, so `LISTEN` never sees an identifier
//! that needs more than quoting and a typo fails at start rather than silently receiving nothing.

use std::fmt;

/// The PostgreSQL notification channel the trigger uses (fixed by users' scripts).
pub const DEFAULT_PG_CHANNEL: &str = "orders_channel";
/// The Redis pub/sub channel the publisher publishes on and every ws-server subscribes to.
pub const DEFAULT_REDIS_CHANNEL: &str = "orders_updates";

/// A channel name matching `^[a-z0-9_]{1,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validates a channel name.
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if name.is_empty() || name.len() > 63 || !valid_chars {
            return Err("expected 1 to 63 characters of a-z, 0-9 and _".to_owned());
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_default_names() {
        assert!(ChannelName::parse(DEFAULT_PG_CHANNEL).is_ok());
        assert!(ChannelName::parse(DEFAULT_REDIS_CHANNEL).is_ok());
    }

    #[test]
    fn rejects_names_that_would_need_escaping() {
        for bad in ["", "Orders", "orders-channel", "a b", &"x".repeat(64), "orders;drop"] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
