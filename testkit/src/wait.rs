//! Waiting without fixed sleeps: free ports for servers under test, and polling a condition until
//! it holds or a deadline passes (the panic then says what was awaited).

use std::{
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// How often [`wait_until`] and [`wait_for`] poll.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range.
///
/// Tests stop servers and restart them on the same port. A port from the ephemeral range (what
/// binding port 0 returns) can be handed meanwhile to any other socket: another test's
/// `bind(0)`, or the local end of an outgoing connection. Ports below the range are only ever
/// taken on purpose, so a restart finds its port free. Candidates are spread by process id and
/// a counter, and checked by binding; servers started on one still retry on "address in use"
/// ([`PgServer::start`](crate::PgServer::start) and
/// [`RedisServer::start`](crate::RedisServer::start) do).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().clamp(FIRST_PORT + 1000, 65_535);
    let span = u32::from(low - FIRST_PORT);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(97)) % span;
        let port = FIRST_PORT + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST_PORT} and {low}")
}

/// The lowest port tests hand out.
const FIRST_PORT: u16 = 10_000;

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Polls `f` every 25 ms until it returns true.
///
/// Panics with "timed out after {timeout:?} waiting for {what}" if that takes longer than
/// `timeout`, including when one call of `f` hangs.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let done = f();
        async move { done.await.then_some(()) }
    })
    .await;
}

/// Polls `f` every 25 ms until it returns `Some(value)`, and returns the value.
///
/// Panics with "timed out after {timeout:?} waiting for {what}" if that takes longer than
/// `timeout`, including when one call of `f` hangs.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(value) = f().await {
                return value;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    };
    match tokio::time::timeout(timeout, poll).await {
        Ok(value) => value,
        Err(_elapsed) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn wait_for_returns_the_first_value() {
        let calls = AtomicU32::new(0);
        let value = wait_for(Duration::from_secs(5), "the third call", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for something that never happens")]
    async fn wait_until_panics_with_what_it_waited_for() {
        wait_until(Duration::from_millis(100), "something that never happens", || async { false }).await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for a hung probe")]
    async fn wait_until_times_out_a_hung_probe() {
        wait_until(Duration::from_millis(100), "a hung probe", std::future::pending::<bool>).await;
    }

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
