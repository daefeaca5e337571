//! The shutdown signal: resolves on SIGINT or SIGTERM (SIGINT only off unix).

/// Waits for SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        // If the handler cannot be installed we can only wait for SIGTERM.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
