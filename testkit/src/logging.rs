//! Opt-in log output for tests: quiet by default, `TEST_LOG=1` shows the services' `tracing`
//! events in the test output.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// Used when `RUST_LOG` is unset: our crates in detail, dependencies only when they matter.
const DEFAULT_FILTER: &str = "info,publisher=debug,ws_server=debug,cli_client=debug,protocol=debug,testkit=debug";

/// Installs a `tracing` subscriber that writes through the test harness (so output is captured
/// per test), once per process, and only when the environment has `TEST_LOG=1`. `RUST_LOG`
/// overrides the default filter. Call it at the top of every test; later calls do nothing.
pub fn init_test_logging() {
    static INIT: Once = Once::new();
    if std::env::var_os("TEST_LOG").is_none_or(|value| value != "1") {
        return;
    }
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        // Fails only when a global subscriber is already set; that one then keeps working.
        let _already_set = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}
