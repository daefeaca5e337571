//! A real headless Chromium for the dashboard's tests, driven over WebDriver: Debian's
//! `chromium` and `chromium-driver` (`bash scripts/install-deps.sh --browser`), chromedriver
//! on a free port, and a `fantoccini` session on it.
//!
//! chromedriver runs in a process group of its own, and the browser it starts joins it:
//! dropping a [`Browser`] (a test that ends, panics included) kills the whole group, so no
//! chromium outlives its test. Each session has a fresh profile directory, deleted after.
//!
//! Where the binaries are missing, [`Browser::start`] returns `None` after printing why (the
//! test then skips), except under `CI=true`, where it panics: CI must run the browser tests.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::WAIT;

/// How often a wait re-reads the page: fine enough to time a sub-second update.
const POLL: Duration = Duration::from_millis(20);

/// A browser session and the chromedriver serving it; both killed when dropped.
#[derive(Debug)]
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    group: Option<rustix::process::Pid>,
    _profile: TempDir,
}

/// The first of `candidates` that is an executable file: an absolute path, or a name on `PATH`.
fn find_binary(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|name| {
        let name = Path::new(name);
        if name.is_absolute() {
            return name.is_file().then(|| name.to_owned());
        }
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
    })
}

/// Options for [`Browser::start_with`].
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// The window's inner size, in CSS pixels.
    pub size: (u32, u32),
    /// `prefers-color-scheme: dark`.
    pub dark: bool,
    /// A phone: `size` as the device's screen (chromedriver's mobile emulation: touch, a
    /// device pixel ratio of 3, and no desktop minimum window width).
    pub phone: bool,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions { size: (1280, 860), dark: false, phone: false }
    }
}

impl Browser {
    /// A desktop-sized light-mode session, or `None` (printed) where no browser is installed.
    pub async fn start() -> Option<Browser> {
        Browser::start_with(BrowserOptions::default()).await
    }

    /// A session with `options`, or `None` (printed) where no browser is installed.
    ///
    /// # Panics
    /// When `CI=true` and chromium or chromedriver is missing, or when they fail to start.
    pub async fn start_with(options: BrowserOptions) -> Option<Browser> {
        let chromium = find_binary("CHROME_BIN", &["/usr/bin/chromium", "chromium", "chromium-browser"]);
        let driver = find_binary("CHROMEDRIVER", &["/usr/bin/chromedriver", "chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why = "chromium or chromedriver not found (install them: bash scripts/install-deps.sh --browser, \
                       or set CHROME_BIN and CHROMEDRIVER)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}: CI must run the dashboard's browser tests");
            eprintln!("skipping a browser test: {why}");
            return None;
        };
        let profile = tempfile::Builder::new().prefix("e2e-chromium-").tempdir().expect("a profile directory");
        let port = testkit::free_port();
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, which the browser joins: one kill ends them all.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let group = child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
        let mut browser = Browser { client: None, driver: child, group, _profile: profile };
        let url = format!("http://127.0.0.1:{port}");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        // It listens once ready for sessions. (Its /status ignores `Connection: close`, so
        // testkit's one-shot GET would wait out its timeout.)
        testkit::wait_until(WAIT, "chromedriver listening", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;

        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", browser._profile.path().display()),
            format!("--window-size={},{}", options.size.0, options.size.1),
        ];
        if options.dark {
            args.push("--force-dark-mode".to_owned());
        }
        let mut chrome = json!({ "binary": chromium, "args": args });
        if options.phone {
            let (width, height) = options.size;
            chrome["mobileEmulation"] =
                json!({ "deviceMetrics": { "width": width, "height": height, "pixelRatio": 3, "touch": true } });
        }
        let capabilities = json!({ "browserName": "chrome", "goog:chromeOptions": chrome });
        let Value::Object(capabilities) = capabilities else { unreachable!("an object literal") };
        let connect = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await;
        let client = connect.unwrap_or_else(|e| panic!("a chromium session from {}: {e}", driver.display()));
        browser.client = Some(client);
        Some(browser)
    }

    /// The WebDriver session.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("a session while the browser runs")
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        self.client().goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client().execute(script, vec![]).await.unwrap_or_else(|e| panic!("run {script:?}: {e}"))
    }

    /// Runs `script` with its last argument a callback the script calls with its result
    /// (`arguments[arguments.length - 1](value)`), waiting up to [`WAIT`].
    pub async fn js_async(&self, script: &str) -> Value {
        let run = self.client().execute_async(script, vec![]);
        match tokio::time::timeout(WAIT, run).await {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("run {script:?}: {e}"),
            Err(_) => panic!("script did not finish within {WAIT:?}: {script:?}"),
        }
    }

    /// Re-evaluates the expression `expression` until it is truthy, for at most `limit`;
    /// returns its value and how long it took. Panics with `what` and the last value.
    pub async fn wait_for(&self, what: &str, expression: &str, limit: Duration) -> (Value, Duration) {
        let script = format!("return ({expression});");
        let started = Instant::now();
        loop {
            let value = self.js(&script).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("")
                && value != json!([]);
            if truthy {
                return (value, started.elapsed());
            }
            assert!(started.elapsed() < limit, "{what}: not within {limit:?} (last value {value})");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Replaces the text of the input matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.client().find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        input.clear().await.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        if !text.is_empty() {
            input.send_keys(text).await.unwrap_or_else(|e| panic!("type into {css}: {e}"));
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = self.client().find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find {css}: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Presses Ctrl+`key` as a person would (key events to the focused page).
    pub async fn ctrl(&self, key: char) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let control: char = fantoccini::key::Key::Control.into();
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: control })
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key })
            .then(KeyAction::Up { value: control });
        self.client().perform_actions(keys).await.unwrap_or_else(|e| panic!("press Ctrl+{key}: {e}"));
    }

    /// A PNG of the viewport, written to `path` (its directory created).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client().screenshot().await.unwrap_or_else(|e| panic!("screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session, then the processes.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            // The processes are killed next either way.
            let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
        }
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.driver.wait()).await;
    }

    /// The process group of chromedriver and the browser, while it runs.
    pub fn process_group(&self) -> Option<i32> {
        self.group.map(rustix::process::Pid::as_raw_nonzero).map(|pid| pid.get())
    }

    fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            // Already gone is fine: the group may have ended with the session.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Whether any live (not zombie) process is in process group `group`, from `/proc`.
pub fn group_alive(group: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.filter_map(Result::ok).any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2].parse() == Ok(group)
    })
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
