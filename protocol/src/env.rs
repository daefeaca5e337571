//! Configuration from the environment: typed reads that collect every problem, so a service
//! with bad configuration stops at start with one message listing each variable and its fix.
//!
//! Libraries never read the process environment themselves: `Config::from_lookup` takes a
//! lookup function, which `main` backs with `std::env::var` and tests with a map.

use std::{fmt, str::FromStr, time::Duration};

use crate::{channel::ChannelName, retry::RetryPolicy, telemetry::LogFormat};

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is not set.
    Missing {
        /// The variable.
        var: &'static str,
        /// An example value.
        example: &'static str,
    },
    /// A variable is set to something unusable.
    Invalid {
        /// The variable.
        var: &'static str,
        /// The value, or `***` for secrets.
        value: String,
        /// What was expected.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { var, example } => write!(f, "{var} is required (e.g. {example})"),
            Self::Invalid { var, value, reason } => write!(f, "{var}={value:?}: {reason}"),
        }
    }
}

/// Every configuration problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// Reads typed variables through a lookup function, collecting errors.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env").field("errors", &self.errors).finish_non_exhaustive()
    }
}

impl<'a> Env<'a> {
    /// Reads through `lookup` (empty values count as unset).
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup, errors: Vec::new() }
    }

    fn raw(&self, var: &str) -> Option<String> {
        (self.lookup)(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    /// Records a problem found by the caller's own validation.
    pub fn invalid(&mut self, var: &'static str, value: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError::Invalid { var, value: value.into(), reason: reason.into() });
    }

    /// A string, or `default`.
    pub fn string(&mut self, var: &'static str, default: &str) -> String {
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    /// A URL with one of `schemes`, or `default`. The value is echoed in errors only without
    /// its password.
    pub fn url(&mut self, var: &'static str, default: &str, schemes: &[&str]) -> String {
        let value = self.string(var, default);
        let scheme_ok = schemes.iter().any(|s| value.starts_with(&format!("{s}://")));
        if !scheme_ok {
            let expected = schemes.iter().map(|s| format!("{s}://…")).collect::<Vec<_>>().join(" or ");
            self.invalid(var, redact_url(&value), format!("expected a URL starting with {expected}"));
        }
        value
    }

    /// `REDIS_URL`-style: one URL with one of `schemes`, or a comma list of them (the seed
    /// nodes of a cluster), or `default`.
    pub fn url_list(&mut self, var: &'static str, default: &str, schemes: &[&str]) -> String {
        let value = self.string(var, default);
        let urls = crate::store::split_urls(&value);
        let bad = urls.iter().find(|u| !schemes.iter().any(|s| u.starts_with(&format!("{s}://"))));
        if urls.is_empty() || bad.is_some() {
            let expected = schemes.iter().map(|s| format!("{s}://…")).collect::<Vec<_>>().join(" or ");
            self.invalid(
                var,
                redact_url(&value),
                format!("expected a URL starting with {expected}, or a comma list of them (cluster seed nodes)"),
            );
        }
        value
    }

    /// A PostgreSQL URL (`postgres://…`), or `default`, whose TLS parameters are checked here
    /// so a mistake stops the service at start rather than failing every connection: `sslmode`
    /// must be one PostgreSQL knows, and `sslrootcert` must name a readable PEM certificate.
    pub fn database_url(&mut self, var: &'static str, default: &str) -> String {
        let value = self.url(var, default, &["postgres", "postgresql"]);
        let query = value.split_once('?').map_or("", |(_, q)| q);
        for (key, val) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            match key {
                "sslmode" if !SSL_MODES.contains(&val) => self.invalid(
                    var,
                    redact_url(&value),
                    format!("sslmode={val} is not a mode PostgreSQL knows; use one of {}", SSL_MODES.join(", ")),
                ),
                "sslrootcert" => {
                    let path = percent_decode(val);
                    if let Err(reason) = read_pem_certificates(std::path::Path::new(&path)) {
                        self.invalid(var, redact_url(&value), format!("sslrootcert: {reason}"));
                    }
                }
                _ => {}
            }
        }
        value
    }

    /// The PEM certificates in the file `var` names, if it is set (e.g. the CA a managed
    /// Redis signs its certificate with).
    pub fn pem_file(&mut self, var: &'static str) -> Option<Vec<u8>> {
        let path = self.raw(var)?;
        match read_pem_certificates(std::path::Path::new(&path)) {
            Ok(pem) => Some(pem),
            Err(reason) => {
                self.invalid(var, path, reason);
                None
            }
        }
    }

    /// A value parsed with `FromStr`, or `default`; `expected` describes valid values.
    pub fn parse<T: FromStr>(&mut self, var: &'static str, default: T, expected: &str) -> T {
        match self.raw(var) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.invalid(var, v, format!("expected {expected}"));
                default
            }),
        }
    }

    /// A positive integer, or `default`.
    pub fn positive(&mut self, var: &'static str, default: usize) -> usize {
        let n = self.parse(var, default, "a positive integer");
        if n == 0 {
            self.invalid(var, "0", "expected a positive integer");
            return default;
        }
        n
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), or `default`.
    pub fn flag(&mut self, var: &'static str, default: bool) -> bool {
        match self.raw(var).as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("true" | "1" | "yes" | "on") => true,
            Some("false" | "0" | "no" | "off") => false,
            Some(other) => {
                self.invalid(var, other, "expected true or false");
                default
            }
        }
    }

    /// A duration with its unit (`250ms`, `5s`, `2m`), or `default`.
    pub fn duration(&mut self, var: &'static str, default: Duration) -> Duration {
        match self.raw(var) {
            None => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|reason| {
                self.invalid(var, v, reason);
                default
            }),
        }
    }

    /// A channel name, or `default`.
    pub fn channel(&mut self, var: &'static str, default: &str) -> ChannelName {
        let v = self.string(var, default);
        ChannelName::parse(&v).unwrap_or_else(|reason| {
            self.invalid(var, v, reason);
            ChannelName::parse(default).expect("defaults are valid channel names")
        })
    }

    /// The shared reconnect policy: `RETRY_MIN_DELAY`, `RETRY_MAX_DELAY`.
    pub fn retry_policy(&mut self) -> RetryPolicy {
        let d = RetryPolicy::default();
        let min_delay = self.duration("RETRY_MIN_DELAY", d.min_delay);
        let max_delay = self.duration("RETRY_MAX_DELAY", d.max_delay);
        if min_delay.is_zero() || max_delay < min_delay {
            self.invalid(
                "RETRY_MAX_DELAY",
                format!("{max_delay:?}"),
                "RETRY_MIN_DELAY must be > 0 and <= RETRY_MAX_DELAY",
            );
        }
        RetryPolicy { min_delay, max_delay, ..d }
    }

    /// `LOG_FORMAT`: `text` (default) or `json`.
    pub fn log_format(&mut self) -> LogFormat {
        let v = self.string("LOG_FORMAT", "text");
        LogFormat::parse(&v).unwrap_or_else(|reason| {
            self.invalid("LOG_FORMAT", v, reason);
            LogFormat::Text
        })
    }

    /// Ends reading: every problem found, or `Ok`.
    ///
    /// # Errors
    /// [`ConfigErrors`] listing each problem.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() { Ok(()) } else { Err(ConfigErrors(self.errors)) }
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare `0` is zero).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let err = || "expected a number with a unit: ms, s, m or h (e.g. 250ms, 5s)".to_owned();
    let n: u64 = num.parse().map_err(|_| err())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(err()),
    }
}

/// PostgreSQL's `sslmode` values.
const SSL_MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// The file's bytes if it holds at least one PEM certificate; otherwise what is wrong with it.
pub fn read_pem_certificates(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----; convert DER with \
             openssl x509 -inform der -in ca.der -out ca.pem)",
            path.display()
        ));
    }
    Ok(pem)
}

/// `%XX` escapes of a URL query value decoded (a path with spaces or `/` written as `%2F`).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL (or comma list of URLs) with any password replaced by `***`, for logs and error
/// messages.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_one).collect::<Vec<_>>().join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_problem_is_reported_at_once() {
        let vars: HashMap<&str, &str> =
            [("PORT", "ten"), ("RETRY_MIN_DELAY", "5"), ("CH", "Bad-Name")].into_iter().collect();
        let lookup = |k: &str| vars.get(k).map(|v| (*v).to_owned());
        let mut env = Env::new(&lookup);
        env.positive("PORT", 8080);
        env.retry_policy();
        env.channel("CH", "orders_channel");
        let msg = env.finish().unwrap_err().to_string();
        assert!(msg.starts_with("invalid configuration"), "{msg}");
        for needle in ["PORT=\"ten\": expected a positive integer", "RETRY_MIN_DELAY=\"5\"", "CH=\"Bad-Name\""] {
            assert!(msg.contains(needle), "{needle:?} missing from {msg}");
        }
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn tls_settings_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("env-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let good = format!("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert={}", ca.display());
        let bad = [
            ("postgres://h/db?sslmode=verify", "sslmode=verify is not a mode"),
            ("postgres://h/db?sslmode=require&sslrootcert=/nonexistent/ca.pem", "cannot read /nonexistent/ca.pem"),
            (&*format!("postgres://h/db?sslrootcert={}", junk.display()), "holds no PEM certificate"),
        ];
        let lookup = |k: &str| Some(if k == "DATABASE_URL" { good.clone() } else { ca.display().to_string() });
        let mut env = Env::new(&lookup);
        env.database_url("DATABASE_URL", "postgres://localhost/db");
        assert!(env.pem_file("REDIS_TLS_CA_FILE").is_some());
        assert!(env.finish().is_ok());
        for (url, expected) in bad {
            let lookup = |_: &str| Some(url.to_owned());
            let mut env = Env::new(&lookup);
            env.database_url("DATABASE_URL", "postgres://localhost/db");
            let msg = env.finish().unwrap_err().to_string();
            assert!(msg.contains(expected), "{url}: {msg}");
        }
        let lookup = |_: &str| Some(junk.display().to_string());
        let mut env = Env::new(&lookup);
        assert!(env.pem_file("REDIS_TLS_CA_FILE").is_none());
        assert!(env.finish().unwrap_err().to_string().contains("REDIS_TLS_CA_FILE"));
        assert_eq!(percent_decode("%2Ftmp%2Fmy%20ca.pem"), "/tmp/my ca.pem");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_are_redacted_and_checked() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://:pw@a:1,redis://:pw@b:2"), "redis://:***@a:1,redis://:***@b:2");
        let lookup = |_: &str| Some("mysql://u:pw@h/db".to_owned());
        let mut env = Env::new(&lookup);
        env.url("DATABASE_URL", "postgres://localhost/db", &["postgres", "postgresql"]);
        let msg = env.finish().unwrap_err().to_string();
        assert!(msg.contains("mysql://u:***@h/db") && !msg.contains("pw"), "{msg}");
    }
}
