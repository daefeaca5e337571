//! API configuration, read from the environment (and `.env`) once at start.

use std::{fmt, net::IpAddr};

use protocol::{
    env::{ConfigErrors, Env, redact_url},
    telemetry::LogFormat,
};

/// Everything the API needs to run.
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL holding the `orders` table (`DATABASE_URL`). The publisher's migrations
    /// create it; the API only reads and writes rows.
    pub database_url: String,
    /// Address to listen on (`API_BIND_ADDR`, default 0.0.0.0).
    pub bind_addr: IpAddr,
    /// Port of the API and of `/healthz`, `/readyz`, `/metrics` (`API_PORT`, default 3000).
    pub port: u16,
    /// Largest request body accepted (`API_MAX_BODY_BYTES`, default 64 KiB); larger gets 413.
    pub max_body_bytes: usize,
    /// `LOG_FORMAT`: text or json.
    pub log_format: LogFormat,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("bind_addr", &self.bind_addr)
            .field("port", &self.port)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("log_format", &self.log_format)
            .finish()
    }
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// Every invalid or unusable variable, listed together.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `lookup` (tests pass a map).
    ///
    /// # Errors
    /// Every invalid or unusable variable, listed together.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut env = Env::new(&lookup);
        let config = Self {
            // The same default as the publisher's, so one local PostgreSQL serves both.
            database_url: env.database_url("DATABASE_URL", "postgres://postgres@localhost:5432/postgres"),
            bind_addr: env.parse(
                "API_BIND_ADDR",
                IpAddr::from([0, 0, 0, 0]),
                "an IP address (e.g. 0.0.0.0 or 127.0.0.1)",
            ),
            port: env.parse("API_PORT", 3000, "a port number (0-65535)"),
            max_body_bytes: env.positive("API_MAX_BODY_BYTES", 64 * 1024),
            log_format: env.log_format(),
        };
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_suit_a_local_run() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.bind_addr, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.max_body_bytes, 65_536);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_values_name_each_variable_and_hide_passwords() {
        let err = config(&[
            ("DATABASE_URL", "mysql://root:hunter2@db/app"),
            ("API_PORT", "99999"),
            ("API_BIND_ADDR", "localhost"),
            ("API_MAX_BODY_BYTES", "0"),
            ("LOG_FORMAT", "xml"),
        ])
        .unwrap_err()
        .to_string();
        for needle in
            ["DATABASE_URL", "postgres://", "API_PORT=\"99999\"", "API_BIND_ADDR", "API_MAX_BODY_BYTES", "LOG_FORMAT"]
        {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert!(!err.contains("hunter2"), "{err}");
    }
}
