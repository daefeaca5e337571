//! The reconnect policy every connection shares: exponential delays with jitter and a cap,
//! from `backon` (maintained; the `backoff` crate is unmaintained and gives up after 15
//! minutes by default). The schedule never ends: a daemon whose dependency is down waits for it.

use std::{
    fmt::Display,
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::ops::Counter;

/// Delay bounds for reconnecting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First delay.
    pub min_delay: Duration,
    /// Largest delay (jitter included).
    pub max_delay: Duration,
    /// Growth factor between attempts.
    pub factor: f32,
    /// A session that lasted this long counts as healthy: the schedule starts over.
    pub healthy_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            healthy_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// A fresh delay schedule.
    pub fn backoff(&self) -> Backoff {
        Backoff { policy: *self, delays: self.schedule() }
    }

    fn schedule(&self) -> ExponentialBackoff {
        // backon's jitter adds up to one more delay on top; halve the cap it sees so the
        // jittered delay stays within `max_delay`.
        ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay / 2)
            .with_factor(self.factor)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// The delays of one run of reconnect attempts.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// The delay before the next attempt, given when the session that just ended started.
    ///
    /// A session that stayed up for `healthy_after` restarts the schedule, so one blip after
    /// hours of uptime waits the minimum, not the cap.
    pub fn next_delay(&mut self, session_started: Instant) -> Duration {
        if session_started.elapsed() >= self.policy.healthy_after {
            self.reset();
        }
        self.delays.next().unwrap_or(self.policy.max_delay).clamp(self.policy.min_delay, self.policy.max_delay)
    }

    /// Starts the schedule over (after a successful connection).
    pub fn reset(&mut self) {
        self.delays = self.policy.schedule();
    }
}

/// An error that may or may not be worth retrying.
pub trait Retry {
    /// True when retrying cannot help (bad credentials, unknown database, …).
    fn is_fatal(&self) -> bool;
}

/// What a reconnect loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Open a new session.
    Retry,
    /// Shutdown was requested: stop.
    Stop,
}

/// The reconnect loop's bookkeeping, shared by every service:
///
/// ```ignore
/// let mut supervisor = Supervisor::new("redis", config.retry);
/// loop {
///     let started = Instant::now();
///     let ended = session(&config, &shutdown).await;
///     if supervisor.after(started, ended, &stats.reconnects, &shutdown).await? == Flow::Stop {
///         return Ok(());
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Supervisor {
    what: &'static str,
    server: String,
    backoff: Backoff,
}

impl Supervisor {
    /// A supervisor for sessions named `what` in logs.
    pub fn new(what: &'static str, policy: RetryPolicy) -> Self {
        Self { what, server: String::new(), backoff: policy.backoff() }
    }

    /// Names the server in every log line (pass it through [`crate::env::redact_url`]): an
    /// error such as a refused password then says which server refused it.
    pub fn for_server(mut self, server: String) -> Self {
        self.server = server;
        self
    }

    /// Decides after a session that began at `started` ended with `ended`: stop on
    /// shutdown or a clean end, fail on a fatal error, otherwise log the retry once with its
    /// delay, count it in `reconnects`, and sleep that delay (cut short by shutdown).
    ///
    /// # Errors
    /// The fatal error, after logging it.
    pub async fn after<E>(
        &mut self,
        started: Instant,
        ended: Result<(), E>,
        reconnects: &Counter,
        shutdown: &CancellationToken,
    ) -> Result<Flow, E>
    where
        E: Retry + std::error::Error,
    {
        let err = match ended {
            Ok(()) => return Ok(Flow::Stop),
            Err(err) if err.is_fatal() => {
                let chain = error_chain(&err).to_string();
                let fix = tls_fix(self.what, &chain).unwrap_or("");
                error!(session = self.what, server = %self.server, error = %chain, fix, "session failed; not retrying");
                return Err(err);
            }
            Err(err) => err,
        };
        if shutdown.is_cancelled() {
            return Ok(Flow::Stop);
        }
        reconnects.inc();
        let delay = self.backoff.next_delay(started);
        let chain = error_chain(&err).to_string();
        match tls_fix(self.what, &chain) {
            // A certificate problem does not go away by retrying, but the server's certificate
            // may be replaced meanwhile: keep retrying, and say what to change on every attempt.
            Some(fix) => warn!(
                session = self.what, server = %self.server, delay_ms = delay.as_millis() as u64, error = %chain, fix,
                "session ended; reconnecting"
            ),
            None => warn!(
                session = self.what, server = %self.server, delay_ms = delay.as_millis() as u64, error = %chain,
                "session ended; reconnecting"
            ),
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(Flow::Stop),
            () = tokio::time::sleep(delay) => Ok(Flow::Retry),
        }
    }
}

/// The fix for a TLS failure of a `what` session (`postgres`, `redis`, …), named from the error
/// text that rustls and the drivers give: the errors themselves say what failed, not which
/// setting of ours changes it.
pub fn tls_fix(what: &str, error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let postgres = what != "redis";
    if e.contains("unknownissuer") || e.contains("unknown issuer") || e.contains("unknownca") {
        return Some(if postgres {
            "the server's certificate is not signed by a CA this service trusts: add sslrootcert=/path/to/ca.pem \
             (the CA your provider publishes) to DATABASE_URL"
        } else {
            "the server's certificate is not signed by a CA this service trusts: set REDIS_TLS_CA_FILE=/path/to/ca.pem \
             (the CA your provider publishes)"
        });
    }
    if e.contains("notvalidforname") || e.contains("not valid for name") {
        return Some(if postgres {
            "the certificate does not name the host in DATABASE_URL: connect by a name the certificate lists, \
             or use sslmode=verify-ca (checks the CA, not the name)"
        } else {
            "the certificate does not name the host in REDIS_URL: connect by a name the certificate lists"
        });
    }
    if e.contains("expired") {
        return Some(
            "the server's certificate has expired, or this machine's clock is wrong: renew it, or fix the clock",
        );
    }
    if e.contains("server does not support tls") {
        return Some(
            "the server does not offer TLS: enable ssl on it, or set sslmode=prefer (or disable) in DATABASE_URL",
        );
    }
    if !postgres
        && (e.contains("corrupt message") || e.contains("invalidcontenttype") || e.contains("invalid content type"))
    {
        return Some(
            "the server did not answer TLS: a rediss:// URL needs the server's TLS port (plain ports take redis://)",
        );
    }
    None
}

/// `err` and its sources, joined by `: `.
pub fn error_chain(err: &dyn std::error::Error) -> impl Display + '_ {
    struct Chain<'a>(&'a dyn std::error::Error);
    impl Display for Chain<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
            Ok(())
        }
    }
    Chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_name_the_setting_that_fixes_them() {
        let unknown =
            "error occurred while attempting to establish a TLS connection: invalid peer certificate: UnknownIssuer";
        assert!(tls_fix("postgres", unknown).unwrap().contains("sslrootcert="));
        assert!(tls_fix("redis", unknown).unwrap().contains("REDIS_TLS_CA_FILE="));
        assert!(tls_fix("postgres", "invalid peer certificate: NotValidForName").unwrap().contains("verify-ca"));
        assert!(tls_fix("postgres", "server does not support TLS").unwrap().contains("enable ssl"));
        assert!(tls_fix("redis", "received corrupt message of type InvalidContentType").unwrap().contains("TLS port"));
        assert_eq!(tls_fix("redis", "Connection refused (os error 111)"), None);
    }

    #[test]
    fn delays_stay_within_bounds_and_never_stop() {
        let policy = RetryPolicy::default();
        let mut b = policy.backoff();
        let now = Instant::now();
        let delays: Vec<_> = (0..200).map(|_| b.next_delay(now)).collect();
        assert!(delays.iter().all(|d| *d >= policy.min_delay && *d <= policy.max_delay));
        // It grows to the cap region and stays there.
        assert!(delays[150..].iter().all(|d| *d >= policy.max_delay / 2), "{:?}", &delays[150..]);
    }

    #[test]
    fn delays_grow() {
        let mut b = RetryPolicy::default().backoff();
        let now = Instant::now();
        let first = b.next_delay(now);
        let fifth = (0..4).map(|_| b.next_delay(now)).last().unwrap();
        assert!(fifth > first, "{first:?} then {fifth:?}");
    }

    /// A session error, fatal or not.
    #[derive(Debug, thiserror::Error)]
    #[error("session failed")]
    struct Failed {
        fatal: bool,
    }

    impl Retry for Failed {
        fn is_fatal(&self) -> bool {
            self.fatal
        }
    }

    const TRANSIENT: Result<(), Failed> = Err(Failed { fatal: false });

    // On a paused clock a sleep takes no real time and ends exactly at its deadline, so the
    // virtual time `after` took is the delay it waited.

    #[tokio::test(start_paused = true)]
    async fn a_daemon_retries_forever_with_growing_capped_delays() {
        let policy = RetryPolicy::default();
        let mut supervisor = Supervisor::new("test", policy);
        let (reconnects, shutdown) = (Counter::default(), CancellationToken::new());
        let mut waits = Vec::new();
        // 40 failures in a row, far past backon's default of 3 attempts (the cap is reached
        // after about 8); every one is retried.
        for _ in 0..40 {
            let before = tokio::time::Instant::now();
            let flow = supervisor.after(Instant::now(), TRANSIENT, &reconnects, &shutdown).await.unwrap();
            assert_eq!(flow, Flow::Retry);
            waits.push(before.elapsed());
        }
        assert_eq!(reconnects.get(), 40);
        assert!(waits.iter().all(|w| *w >= policy.min_delay && *w <= policy.max_delay), "{waits:?}");
        assert!(waits[0] <= policy.min_delay * 2, "starts near the minimum: {waits:?}");
        assert!(waits[30..].iter().all(|w| *w >= policy.max_delay / 2), "ends near the cap: {waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_the_wait_short() {
        let policy = RetryPolicy { min_delay: Duration::from_secs(30), ..RetryPolicy::default() };
        let mut supervisor = Supervisor::new("test", policy);
        let (reconnects, shutdown) = (Counter::default(), CancellationToken::new());
        let cancel = shutdown.clone();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        let before = tokio::time::Instant::now();
        let flow = supervisor.after(Instant::now(), TRANSIENT, &reconnects, &shutdown).await.unwrap();
        assert_eq!(
            (flow, before.elapsed()),
            (Flow::Stop, Duration::from_secs(1)),
            "stopped when cancelled, not after 30 s"
        );
        canceller.await.unwrap();

        // Already cancelled: no wait, no retry counted.
        let flow = supervisor.after(Instant::now(), TRANSIENT, &reconnects, &shutdown).await.unwrap();
        assert_eq!(flow, Flow::Stop);
        assert_eq!(reconnects.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_is_returned_at_once_and_a_clean_end_stops() {
        let mut supervisor = Supervisor::new("test", RetryPolicy::default());
        let (reconnects, shutdown) = (Counter::default(), CancellationToken::new());
        let before = tokio::time::Instant::now();
        let err = supervisor.after(Instant::now(), Err(Failed { fatal: true }), &reconnects, &shutdown).await;
        assert!(matches!(err, Err(Failed { fatal: true })));
        assert_eq!(
            supervisor.after(Instant::now(), Ok::<(), Failed>(()), &reconnects, &shutdown).await.unwrap(),
            Flow::Stop
        );
        assert_eq!((before.elapsed(), reconnects.get()), (Duration::ZERO, 0));
    }

    #[test]
    fn a_healthy_session_restarts_the_schedule() {
        let policy = RetryPolicy { healthy_after: Duration::ZERO, ..RetryPolicy::default() };
        let mut b = policy.backoff();
        for _ in 0..20 {
            assert!(b.next_delay(Instant::now()) <= policy.min_delay * 2);
        }
    }
}
