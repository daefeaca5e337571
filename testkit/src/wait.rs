//! Waiting without fixed sleeps: free ports for servers under test, and polling a condition until
//! it holds or a deadline passes (the panic then says what was awaited).

use std::{future::Future, time::Duration};

/// How often [`wait_until`] and [`wait_for`] poll.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds port 0, reads the port the kernel chose and releases it. Another process can take it
/// before the caller binds it, so servers started on it must retry on "address in use"
/// ([`PgServer::start`](crate::PgServer::start) and
/// [`RedisServer::start`](crate::RedisServer::start) do).
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).expect("failed to bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("a bound listener has a local address").port()
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
