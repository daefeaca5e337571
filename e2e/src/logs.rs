//! Captures the log lines services write during one test.
//!
//! The subscriber is installed as the thread's default, which covers every task of a
//! current-thread runtime (`#[tokio::test]`'s default): the services under test log here,
//! and parallel tests on other threads do not.

use std::{
    io,
    sync::{Arc, Mutex},
};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// The captured log text.
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Starts capturing `info` and above for this thread until the guard drops.
    pub fn start() -> (LogCapture, DefaultGuard) {
        let capture = LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(capture.clone())
            .finish();
        (capture.clone(), tracing::subscriber::set_default(subscriber))
    }

    /// Every line captured so far.
    pub fn lines(&self) -> Vec<String> {
        let buf = self.buf.lock().expect("log buffer lock");
        String::from_utf8_lossy(&buf).lines().map(str::to_owned).collect()
    }

    /// Lines containing every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<String> {
        self.lines().into_iter().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
    }
}

impl io::Write for LogCapture {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.lock().expect("log buffer lock").extend_from_slice(data);
        if std::env::var_os("TEST_LOG").is_some() {
            io::stderr().write_all(data)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
