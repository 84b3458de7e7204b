//! A spawned child process seen from the host: who watches it until it
//! exits, how it is killed, and what it last wrote to stderr.

use std::cell::Cell;
use std::process::ExitStatus;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr};
use tokio::sync::{oneshot, watch};

/// How many bytes of a child's stderr are kept for error reports.
const STDERR_TAIL: usize = 4096;

/// How long the proxy waits to learn a worker's exit status once it knows
/// the worker is gone or going (its connection ended, a reconnect failed),
/// before it reports the crash without one.
pub(crate) const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);

/// How a watched process ended.
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    /// A child of this host: its exit status.
    Status(ExitStatus),
    /// A process this host attached to: it is gone, but only its parent
    /// may read its exit status.
    Unknown,
    /// A worker on another machine: what its agent reported, or why the
    /// connection to it was lost.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Remote(crate::error::CrashReason),
}

impl Ended {
    pub(crate) fn reason(self) -> crate::error::CrashReason {
        match self {
            Ended::Status(status) => crate::error::CrashReason::from_exit_status(status),
            Ended::Unknown => crate::error::CrashReason::ConnectionLost,
            Ended::Remote(reason) => reason,
        }
    }
}

/// The host's handle on a worker process. Dropping it kills the process,
/// unless it was [detached](Self::detach).
#[derive(Debug)]
pub(crate) struct ProcessHandle {
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
    /// Whether dropping the handle (or stopping the runtime) kills the
    /// process; cleared once the worker is detached.
    armed: Rc<Cell<bool>>,
    exit: watch::Receiver<Option<Ended>>,
    stderr: StderrTail,
    /// For a process this host did not spawn: signals go through its pidfd,
    /// which cannot name another process after a pid is reused.
    #[cfg(target_os = "linux")]
    pidfd: Option<Rc<std::os::fd::OwnedFd>>,
    /// For a worker on another machine: where its signals go (to the
    /// driver that carries them to the worker's agent). Dropping the
    /// handle closes it, which ends the remote worker.
    remote: Option<tokio::sync::mpsc::UnboundedSender<Signal>>,
}

impl ProcessHandle {
    /// Starts watching `child`: a task on the current arbiter reaps it when
    /// it exits or when it is killed through this handle.
    /// Its stderr goes on to the host (see [`Output`]), tagged with
    /// `worker`, the worker's name.
    pub(crate) fn watch(mut child: Child, worker: &str) -> Self {
        let pid = child.id().unwrap_or_default();
        let stderr = StderrTail::default();
        if let Some(pipe) = child.stderr.take() {
            let output = Output::new(worker, pid);
            actix_rt::spawn(stderr.clone().forward(pipe, output));
        }
        let armed = Rc::new(Cell::new(true));
        let (kill, kill_requested) = oneshot::channel::<()>();
        let (exit_tx, exit) = watch::channel(None);
        // Kills the child if this task is dropped unfinished (the runtime
        // stops) while the child is still armed; tokio's own kill-on-drop
        // could not be turned off once the worker is detached.
        let mut reaper = Reaper {
            child,
            armed: armed.clone(),
            reaped: false,
        };
        actix_rt::spawn(async move {
            let status = reaper.wait_or_kill(kill_requested).await;
            if let Ok(status) = status {
                let _ = exit_tx.send(Some(Ended::Status(status)));
            }
        });
        Self {
            pid,
            kill: Some(kill),
            armed,
            exit,
            stderr,
            #[cfg(target_os = "linux")]
            pidfd: None,
            remote: None,
        }
    }

    /// A worker on another machine, process `pid` there: `exit` tells how
    /// it ended, and the signals this handle sends (SIGTERM, SIGKILL) go
    /// to `signals`.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn remote(
        pid: u32,
        exit: watch::Receiver<Option<Ended>>,
        signals: tokio::sync::mpsc::UnboundedSender<Signal>,
    ) -> Self {
        Self {
            pid,
            kill: None,
            armed: Rc::new(Cell::new(true)),
            exit,
            stderr: StderrTail::default(),
            #[cfg(target_os = "linux")]
            pidfd: None,
            remote: Some(signals),
        }
    }

    /// Watches worker process `pid`, which another host spawned: learns of
    /// its end through a pidfd (Linux; elsewhere, only the connection tells).
    pub(crate) fn adopt(pid: u32) -> std::io::Result<Self> {
        let (exit_tx, exit) = watch::channel(None);
        let (kill, _) = oneshot::channel();
        #[cfg(target_os = "linux")]
        let pidfd = {
            let raw = i32::try_from(pid)
                .ok()
                .and_then(Pid::from_raw)
                .ok_or_else(|| std::io::Error::other(format!("no process has pid {pid}")))?;
            let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())?;
            let fd = Rc::new(fd);
            // A pidfd becomes readable when its process exits.
            // SAFETY: the AsyncFd owns an `Rc` of the pidfd, which stays
            // open and the same descriptor for as long as the AsyncFd lives.
            let readable = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    fd.clone(),
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|e| e.into_parts().1)?;
            actix_rt::spawn(async move {
                if readable.readable().await.is_ok() {
                    let _ = exit_tx.send(Some(Ended::Unknown));
                }
            });
            fd
        };
        #[cfg(not(target_os = "linux"))]
        drop(exit_tx);
        Ok(Self {
            pid,
            kill: Some(kill),
            armed: Rc::new(Cell::new(false)),
            exit,
            stderr: StderrTail::default(),
            #[cfg(target_os = "linux")]
            pidfd: Some(pidfd),
            remote: None,
        })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the process outlive this handle and the host.
    pub(crate) fn detach(&self) {
        self.armed.set(false);
    }

    /// Asks the process to stop (SIGTERM), unless it has already exited.
    pub(crate) fn terminate(&self) {
        self.signal(Signal::TERM);
    }

    /// Kills the process (SIGKILL, once); the watcher reaps a child.
    pub(crate) fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if !self.is_child() {
            self.signal(Signal::KILL);
        }
    }

    fn is_child(&self) -> bool {
        if self.remote.is_some() {
            return false;
        }
        #[cfg(target_os = "linux")]
        return self.pidfd.is_none();
        #[cfg(not(target_os = "linux"))]
        true
    }

    fn signal(&self, signal: Signal) {
        if self.exit.borrow().is_some() {
            return;
        }
        if let Some(remote) = &self.remote {
            let _ = remote.send(signal);
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(pidfd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(&**pidfd, signal);
            return;
        }
        // Never 0 or negative, which would signal a process group.
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// A future that resolves with how the process ended, or `None` if it
    /// does not end within `limit`.
    pub(crate) fn exited_within(
        &self,
        limit: Duration,
    ) -> impl std::future::Future<Output = Option<Ended>> + 'static {
        let ended = self.ended();
        async move { tokio::time::timeout(limit, ended).await.ok().flatten() }
    }

    /// A future that resolves with how the process ended, once it has;
    /// `None` if this host cannot learn it.
    pub(crate) fn ended(&self) -> impl std::future::Future<Output = Option<Ended>> + 'static {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(ended) => ended.clone(),
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// The last bytes the child wrote to stderr, waiting up to `limit` for
    /// the pipe to close so that nothing it wrote before dying is missed.
    pub(crate) async fn stderr_tail(&self, limit: Duration) -> String {
        self.stderr.settled(limit).await
    }
}

/// Owns a spawned child in its watcher task.
struct Reaper {
    child: Child,
    armed: Rc<Cell<bool>>,
    reaped: bool,
}

impl Reaper {
    /// Waits for the child to exit, killing it first if asked to (or if
    /// the handle is dropped while the child is armed).
    async fn wait_or_kill(
        &mut self,
        kill_requested: oneshot::Receiver<()>,
    ) -> std::io::Result<ExitStatus> {
        let status = tokio::select! {
            status = self.child.wait() => status,
            requested = kill_requested => {
                if requested.is_ok() || self.armed.get() {
                    let _ = self.child.start_kill();
                }
                self.child.wait().await
            }
        };
        self.reaped = true;
        status
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.reaped && self.armed.get() {
            let _ = self.child.start_kill();
        }
    }
}

/// The end of a child's stderr, kept while the stream is forwarded to the
/// host's own stderr (so worker output is not lost).
#[derive(Debug, Clone, Default)]
struct StderrTail {
    inner: Arc<Mutex<TailInner>>,
    closed: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct TailInner {
    bytes: Vec<u8>,
    closed: bool,
}

impl StderrTail {
    async fn forward(self, mut pipe: ChildStderr, mut output: Output) {
        let mut chunk = vec![0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            output.write(&chunk[..n]);
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.bytes.extend_from_slice(&chunk[..n]);
            let excess = inner.bytes.len().saturating_sub(STDERR_TAIL);
            inner.bytes.drain(..excess);
        }
        output.flush();
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.closed.notify_waiters();
    }

    async fn settled(&self, limit: Duration) -> String {
        let notified = self.closed.notified();
        let closed = self.inner.lock().unwrap_or_else(|e| e.into_inner()).closed;
        if !closed {
            let _ = tokio::time::timeout(limit, notified).await;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&inner.bytes).into_owned()
    }
}

/// Where a worker's stderr goes on the host: with a global `tracing`
/// subscriber set, one event per line (target `isolated_workers::worker`,
/// level INFO, fields `worker` and `pid`); without one, to the host's own
/// stderr, byte for byte.
struct Output {
    worker: String,
    pid: u32,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

/// A line longer than this is passed on in pieces.
const MAX_LINE: usize = 16 * 1024;

impl Output {
    fn new(worker: &str, pid: u32) -> Self {
        Self {
            worker: worker.to_owned(),
            pid,
            partial: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if !tracing::dispatcher::has_been_set() {
            use std::io::Write;
            let _ = std::io::stderr().write_all(bytes);
            return;
        }
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.emit(&line[..end]);
        }
        if self.partial.len() > MAX_LINE {
            let piece = std::mem::take(&mut self.partial);
            self.emit(&piece);
        }
    }

    /// Passes on what is left of an unfinished last line.
    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&rest);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        tracing::info!(
            target: "isolated_workers::worker",
            worker = %self.worker,
            pid = self.pid,
            "{}",
            line.trim_end_matches('\r')
        );
    }
}
