//! A spawned child process seen from the host: who watches it until it
//! exits, how it is killed, and what it last wrote to stderr.

use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr};
use tokio::sync::{oneshot, watch};

/// How many bytes of a child's stderr are kept for error reports.
const STDERR_TAIL: usize = 4096;

/// The host's handle on a running child. Dropping it kills the child.
#[derive(Debug)]
pub(crate) struct ProcessHandle {
    pid: u32,
    kill: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<ExitStatus>>,
    stderr: StderrTail,
}

impl ProcessHandle {
    /// Starts watching `child`: a task on the current arbiter reaps it when
    /// it exits or when it is killed through this handle.
    pub(crate) fn watch(mut child: Child) -> Self {
        let pid = child.id().unwrap_or_default();
        let stderr = StderrTail::default();
        if let Some(pipe) = child.stderr.take() {
            actix_rt::spawn(stderr.clone().forward(pipe));
        }
        let (kill, kill_requested) = oneshot::channel::<()>();
        let (exit_tx, exit) = watch::channel(None);
        actix_rt::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                // A kill request, or the handle was dropped.
                _ = kill_requested => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            if let Ok(status) = status {
                let _ = exit_tx.send(Some(status));
            }
        });
        Self {
            pid,
            kill: Some(kill),
            exit,
            stderr,
        }
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the child to stop (SIGTERM), unless it has already exited.
    pub(crate) fn terminate(&self) {
        if self.exit.borrow().is_none() {
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }

    /// Sends SIGKILL (once); the watcher reaps the child.
    pub(crate) fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }

    /// A future that resolves with the exit status once the child has been
    /// reaped, or `None` if it is not reaped within `limit`.
    pub(crate) fn exited_within(
        &self,
        limit: Duration,
    ) -> impl std::future::Future<Output = Option<ExitStatus>> + 'static {
        let mut exit = self.exit.clone();
        async move {
            let reaped = exit.wait_for(Option::is_some);
            match tokio::time::timeout(limit, reaped).await {
                Ok(Ok(status)) => *status,
                _ => None,
            }
        }
    }

    /// The last bytes the child wrote to stderr, waiting up to `limit` for
    /// the pipe to close so that nothing it wrote before dying is missed.
    pub(crate) async fn stderr_tail(&self, limit: Duration) -> String {
        self.stderr.settled(limit).await
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
    async fn forward(self, mut pipe: ChildStderr) {
        use std::io::Write;
        let mut chunk = vec![0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            let _ = std::io::stderr().write_all(&chunk[..n]);
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.bytes.extend_from_slice(&chunk[..n]);
            let excess = inner.bytes.len().saturating_sub(STDERR_TAIL);
            inner.bytes.drain(..excess);
        }
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
