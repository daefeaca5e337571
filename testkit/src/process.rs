//! One server child process and its lifecycle: spawn with output appended to a log file, wait until
//! a probe says it is ready, stop it with a signal and a deadline, kill it together with its
//! children, and never leak it (dropping a [`ServerProcess`] kills it and reaps it).
//!
//! What it does not own: how to ask a server whether it is up (each server passes a probe), or
//! which port it uses.
//!
//! Children matter because of PostgreSQL: each backend calls `setsid()`, so killing a process
//! group would miss them, and a killed postmaster's backends keep its shared memory attached for a
//! moment. A restart in that moment fails with "pre-existing shared memory block is still in use".
//! So `kill` finds the children through `/proc` and waits until they are gone.

use std::{
    fs::{self, OpenOptions},
    future::Future,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};

/// How long a clean shutdown may take before the process is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a killed process (and its children) may take to disappear.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Fresh ports tried by [`launch_on_free_port`] when the one it picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// `Drop` blocks a runtime thread, so it waits less than `kill` and leaves stragglers to tokio.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// How often readiness probes and exit checks run.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How many log lines a startup failure quotes.
const LOG_TAIL_LINES: usize = 40;

/// A running server process, owned: dropping it kills it and its children.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    pid: Pid,
}

/// Why a server did not become ready.
#[derive(Debug)]
pub(crate) struct LaunchError {
    /// The server could not bind its port; another attempt (on another port) may succeed.
    pub(crate) port_in_use: bool,
    /// What happened, with the tail of the log.
    pub(crate) message: String,
}

/// Spawns `command` with stdout and stderr appended to `log_path`, then polls until `probe` returns
/// true (ready), the process exits (failed), or `ready_timeout` passes (killed, failed).
///
/// `probe` receives the server's pid, so it can make sure it reached this server and not another
/// one that grabbed the same port.
pub(crate) async fn launch<P, Fut>(
    name: &str,
    mut command: Command,
    log_path: &Path,
    ready_timeout: Duration,
    mut probe: P,
) -> Result<ServerProcess, LaunchError>
where
    P: FnMut(Pid) -> Fut,
    Fut: Future<Output = bool>,
{
    // Restarts append to the same log; only this attempt's lines say whether the port was taken.
    let log_start = fs::metadata(log_path).map_or(0, |meta| meta.len());
    let failed = |what: String| LaunchError {
        port_in_use: log_since(log_path, log_start).contains("Address already in use"),
        message: format!("{name} {what}\n--- last lines of {} ---\n{}", log_path.display(), log_tail(log_path)),
    };

    let mut process = ServerProcess::spawn(&mut command, log_path)
        .map_err(|err| LaunchError { port_in_use: false, message: format!("{err:#}") })?;
    let deadline = tokio::time::Instant::now() + ready_timeout;
    loop {
        tokio::select! {
            // The exit comes first: a probe can hang for seconds on a port that another process
            // holds, while our server has already given up on it.
            biased;
            status = process.child.wait() => {
                let status = status.map_or_else(|err| err.to_string(), |status| status.to_string());
                return Err(failed(format!("exited during startup ({status})")));
            }
            () = tokio::time::sleep_until(deadline) => {
                process.kill().await;
                return Err(failed(format!("was not ready after {ready_timeout:?} (killed it)")));
            }
            ready = probe(process.pid) => {
                if ready {
                    return Ok(process);
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Launches a server (`what`, in panic messages) on a free port with `launch`, picking another
/// port when another test took the one picked between `free_port` and the bind.
///
/// Panics when a launch fails for another reason, or every attempt found its port taken.
pub(crate) async fn launch_on_free_port<Fut>(what: &str, mut launch: impl FnMut(u16) -> Fut) -> (u16, ServerProcess)
where
    Fut: Future<Output = Result<ServerProcess, LaunchError>>,
{
    for attempt in 1..=PORT_ATTEMPTS {
        let port = crate::free_port();
        match launch(port).await {
            Ok(process) => return (port, process),
            Err(err) if err.port_in_use && attempt < PORT_ATTEMPTS => {}
            Err(err) => panic!("failed to start {what}: {}", err.message),
        }
    }
    unreachable!("the last attempt either returns or panics")
}

impl ServerProcess {
    /// Sends SIGSTOP (`frozen`) or SIGCONT: a frozen server keeps its connections open but
    /// answers nothing, as behind a network partition (half-open connections).
    pub(crate) fn freeze(&self, frozen: bool) {
        let signal = if frozen { Signal::STOP } else { Signal::CONT };
        rustix::process::kill_process(self.pid, signal).expect("signal the server");
    }

    /// [`ServerProcess::freeze`] for the server and every process it forked (PostgreSQL
    /// serves each session from a child process: freezing the postmaster alone would leave
    /// open sessions answering).
    pub(crate) fn freeze_all(&self, frozen: bool) {
        let signal = if frozen { Signal::STOP } else { Signal::CONT };
        for pid in std::iter::once(self.pid).chain(children(self.pid)) {
            // A child may exit between the scan and the signal; that one needs no freezing.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    fn spawn(command: &mut Command, log_path: &Path) -> anyhow::Result<Self> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("failed to open log file {}", log_path.display()))?;
        let log_for_stderr = log.try_clone().context("failed to duplicate the log file handle")?;
        // Same process group as the test on purpose: Ctrl-C on `cargo test` then stops the servers
        // too, where a process that dies without running `Drop` would otherwise leak them.
        command.stdin(Stdio::null()).stdout(log).stderr(log_for_stderr).kill_on_drop(true);
        let program = PathBuf::from(command.as_std().get_program());
        let child = command.spawn().with_context(|| format!("failed to spawn {}", program.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .context("a just-spawned child has no valid pid")?;
        Ok(Self { child, pid })
    }

    /// Sends `signal` (SIGINT, SIGTERM: a clean shutdown) and waits for the exit; kills the
    /// process if it takes longer than [`STOP_GRACE`].
    pub(crate) async fn stop(mut self, signal: Signal) {
        send(self.pid, signal);
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(Ok(_status)) => {}
            Ok(Err(err)) => panic!("failed to wait for pid {}: {err}", self.pid),
            // Too slow to shut down cleanly: fall through to SIGKILL.
            Err(_elapsed) => {}
        }
        // After a clean exit this finds nothing to kill; after a timeout it does the work.
        self.kill().await;
    }

    /// SIGKILLs the process and its children and waits until all of them are gone.
    pub(crate) async fn kill(&mut self) {
        let children = self.kill_tree();
        match tokio::time::timeout(KILL_GRACE, self.child.wait()).await {
            Ok(Ok(_status)) => {}
            Ok(Err(err)) => panic!("failed to wait for pid {}: {err}", self.pid),
            Err(_elapsed) => panic!("pid {} still running {KILL_GRACE:?} after SIGKILL", self.pid),
        }
        let deadline = Instant::now() + KILL_GRACE;
        while let Some(child) = children.iter().find(|child| is_running(**child)) {
            assert!(
                Instant::now() < deadline,
                "child pid {child} of pid {} still running {KILL_GRACE:?} after SIGKILL",
                self.pid
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGKILLs the process and the children it has right now; returns the children.
    fn kill_tree(&self) -> Vec<Pid> {
        if !is_running(self.pid) {
            // Its children (if any) were re-parented and can no longer be found; PostgreSQL's
            // backends notice their postmaster's death and exit on their own.
            return Vec::new();
        }
        // Freeze it first, so it cannot fork a child between listing its children and the kill.
        send(self.pid, Signal::STOP);
        let deadline = Instant::now() + Duration::from_secs(1);
        while proc_stat(self.pid).is_some_and(|stat| stat.state != 'T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let children = children_of(self.pid);
        send(self.pid, Signal::KILL);
        for child in &children {
            send(*child, Signal::KILL);
        }
        children
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // No panics in here: this may run while a failed test unwinds, and a second panic aborts.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // No children to wait for here: nothing will restart on this data directory.
        let _children = self.kill_tree();
        let deadline = Instant::now() + DROP_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                // Reaped, or no longer ours to reap: either way nothing is left to do.
                Ok(Some(_)) | Err(_) => return,
            }
        }
        // Still not reaped: `kill_on_drop` hands the zombie to tokio's orphan reaper.
    }
}

/// Sends `signal` to `pid`.
fn send(pid: Pid, signal: Signal) {
    // ESRCH (already gone) is what we wanted anyway. Anything else (EPERM) leaves the process
    // running, which the callers' bounded waits then report; `Drop` must not panic here.
    let _ignored = rustix::process::kill_process(pid, signal);
}

/// The fields of `/proc/<pid>/stat` that this module needs.
#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    state: char,
    ppid: i32,
}

fn proc_stat(pid: Pid) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses "pid (comm) state ppid …". `comm` may hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid })
}

/// True while `pid` exists and is not a zombie. A zombie has released its memory (including
/// shared memory) and is only waiting for its parent to reap it.
fn is_running(pid: Pid) -> bool {
    proc_stat(pid).is_some_and(|stat| !matches!(stat.state, 'Z' | 'X'))
}

fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Pid::from_raw)
        .filter(|pid| proc_stat(*pid).is_some_and(|stat| stat.ppid == parent.as_raw_pid() && stat.state != 'Z'))
        .collect()
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, for failure messages.
pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// What was appended to a log file after byte `start`.
fn log_since(path: &Path, start: u64) -> String {
    let mut text = Vec::new();
    let read = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(start))?;
        file.read_to_end(&mut text)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&text).into_owned(),
        // Only used to spot "Address already in use"; an unreadable log just means "no".
        Err(_) => String::new(),
    }
}

/// The processes whose parent is `parent`, read from `/proc/<pid>/stat`.
fn children(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split after
            // the last ')'.
            let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent.as_raw_pid()).then(|| Pid::from_raw(pid)).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_fields_after_the_last_parenthesis() {
        let stat = "4242 (postgres: a (b) c) S 4000 4242 4242 0 -1 4194560";
        assert_eq!(parse_stat(stat), Some(ProcStat { state: 'S', ppid: 4000 }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn log_since_reads_only_the_new_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        fs::write(&path, "old line\nnew line\n").unwrap();
        assert_eq!(log_since(&path, 9), "new line\n");
        assert!(log_tail(&path).ends_with("new line"));
    }

    #[tokio::test]
    async fn kill_takes_down_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut command = Command::new("sh");
        // The parent waits on a child; both must be gone after kill().
        command.args(["-c", "sleep 300 & wait"]);
        let mut process = launch("sh", command, &log, Duration::from_secs(5), |pid| {
            let has_child = !children_of(pid).is_empty();
            async move { has_child }
        })
        .await
        .unwrap();
        let children = children_of(process.pid);
        assert_eq!(children.len(), 1);
        process.kill().await;
        assert!(!is_running(children[0]));
    }
}
