//! Log capture for the services under test.
//!
//! One global subscriber per test binary writes every line to a shared buffer (and to stderr
//! with `TEST_LOG=1`). Each in-process service runs inside a span naming its port, e.g.
//! `publisher{port=41235}`, so a test reads the lines of its own services while other tests
//! log beside it. (A thread-local subscriber per test misses events: callsite interest is
//! cached process-wide.)

use std::{
    io,
    sync::{Mutex, Once},
};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

/// Installs the global subscriber once; later calls do nothing.
pub(crate) fn init() {
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(Writer)
            .finish();
        // Another crate's test may have installed one first; then we log through that.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Every captured line that contains all of `needles`.
pub(crate) fn matching(needles: &[&str]) -> Vec<String> {
    let buf = BUFFER.lock().expect("log buffer lock");
    String::from_utf8_lossy(&buf).lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
}

#[derive(Debug, Clone, Copy)]
struct Writer;

impl io::Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        BUFFER.lock().expect("log buffer lock").extend_from_slice(data);
        if std::env::var_os("TEST_LOG").is_some() {
            io::stderr().write_all(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Writer {
    type Writer = Writer;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}
