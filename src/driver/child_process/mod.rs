//! The default driver: the worker runs in a child process that connects back
//! to the host over a local socket in a private directory.
//!
//! Start-up, in order: make a 0700 directory with a random name; listen on a
//! socket in it; spawn the child with the socket path, a fresh random token
//! and the worker name in its environment; accept connections until one
//! presents the token (and, where the OS tells, comes from the spawned child
//! and the host's user). Everything else that connects is dropped. The whole
//! start-up is bounded by [`WorkerOptions::startup_timeout`].

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod read_mark;
pub(crate) mod session;
pub(crate) mod socket;

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use interprocess::local_socket::traits::tokio::Listener as _;
pub use nix::sys::resource::Resource;

use super::process::ProcessHandle;
use super::{Connection, Driver};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::error::SpawnError;
use crate::wire::envelope::Header;
use read_mark::ReadMark;
pub use session::DetachedWorker;
use session::Session;
use socket::{random_token, read_first_frame, Expected, Verdict};

/// Environment variables the host sets for a child worker.
pub(crate) mod env {
    /// Path of the socket to connect to.
    pub(crate) const SOCKET: &str = "ISOLATED_WORKERS_SOCKET";
    /// The per-spawn secret to present in the handshake.
    pub(crate) const TOKEN: &str = "ISOLATED_WORKERS_TOKEN";
    /// Which of the binary's workers to run.
    pub(crate) const NAME: &str = "ISOLATED_WORKERS_NAME";
    /// Largest frame either side accepts.
    pub(crate) const MAX_FRAME: &str = "ISOLATED_WORKERS_MAX_FRAME";
    /// How long the worker's actor gets to stop when asked, in milliseconds.
    pub(crate) const GRACE_MS: &str = "ISOLATED_WORKERS_GRACE_MS";
    /// The most verbose level of `tracing` event the host wants forwarded
    /// (unset: none).
    pub(crate) const TRACE: &str = "ISOLATED_WORKERS_TRACE";
    /// The descriptor of the read mark the host shares with the worker
    /// (unset: none).
    pub(crate) const READ_MARK: &str = "ISOLATED_WORKERS_READ_MARK";
}

/// Prefix of the private directories worker sockets live in.
pub(crate) const DIR_PREFIX: &str = "isolated-workers-";

/// Runs the worker in a child process: by default the current executable
/// again, which hands over to the worker in
/// [`worker_entry`](crate::worker_entry).
///
/// ```no_run
/// use isolated_workers::ChildProcess;
/// let driver = ChildProcess::current_exe("calc").env("RUST_LOG", "debug");
/// ```
#[derive(Clone)]
pub struct ChildProcess {
    program: Result<PathBuf, String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    clear_env: bool,
    worker_name: String,
    limits: Vec<(Resource, u64, u64)>,
    pre_exec: Option<Arc<dyn Fn() -> io::Result<()> + Send + Sync>>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("worker_name", &self.worker_name)
            .field("limits", &self.limits)
            .field("pre_exec", &self.pre_exec.is_some())
            .finish_non_exhaustive()
    }
}

impl ChildProcess {
    /// Re-runs the current executable as worker `worker_name`.
    pub fn current_exe(worker_name: impl Into<String>) -> Self {
        let program = std::env::current_exe().map_err(|e| e.to_string());
        Self::with_program(program, worker_name.into())
    }

    /// Runs `program` as worker `worker_name`; the program must call
    /// [`worker_entry`](crate::worker_entry) with that name.
    pub fn program(program: impl Into<PathBuf>, worker_name: impl Into<String>) -> Self {
        Self::with_program(Ok(program.into()), worker_name.into())
    }

    fn with_program(program: Result<PathBuf, String>, worker_name: String) -> Self {
        Self {
            program,
            args: Vec::new(),
            envs: Vec::new(),
            clear_env: false,
            worker_name,
            limits: Vec::new(),
            pre_exec: None,
        }
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the child with an empty environment (plus what [`env`](Self::env)
    /// sets and what the worker needs to connect back).
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// Sets a resource limit (`setrlimit`) in the child before it starts,
    /// e.g. `limit(Resource::RLIMIT_AS, 512 << 20, 512 << 20)` to bound its
    /// address space, or `RLIMIT_CPU` to bound its CPU seconds.
    pub fn limit(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.limits.push((resource, soft, hard));
        self
    }

    /// Runs `hook` in the child after `fork` and before `exec`: the place
    /// to drop privileges, enter namespaces, or apply a seccomp filter.
    ///
    /// # Safety
    /// The hook runs in a forked copy of a multi-threaded process: it must
    /// only make async-signal-safe calls (no allocation, no locks). See
    /// [`std::os::unix::process::CommandExt::pre_exec`].
    pub unsafe fn pre_exec(
        mut self,
        hook: impl Fn() -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.pre_exec = Some(Arc::new(hook));
        self
    }

    /// The worker name the child is started as.
    pub fn worker_name(&self) -> &str {
        &self.worker_name
    }
}

impl<C: Contract> Driver<C> for ChildProcess {
    fn launch(
        &self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>> {
        Box::pin(self.clone().spawn_and_handshake::<C>(options.clone()))
    }
}

impl ChildProcess {
    async fn spawn_and_handshake<C: Contract>(
        self,
        options: WorkerOptions,
    ) -> Result<Connection, SpawnError> {
        let deadline = tokio::time::Instant::now() + options.startup_timeout;
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|source| SpawnError::Io {
                what: "socket directory",
                source,
            })?;
        let socket_path = dir.path().join("worker.sock");
        let listener = socket::listen(&socket_path).map_err(|source| SpawnError::Io {
            what: "socket",
            source,
        })?;
        let token = random_token().map_err(|source| SpawnError::Io {
            what: "token",
            source,
        })?;

        if let Some(name) = std::env::var_os(env::NAME) {
            // This process was started as a worker but never entered it:
            // spawning again would start the same mistake once more.
            return Err(SpawnError::Launch {
                program: "<this process>".into(),
                source: io::Error::other(format!(
                    "this process was started as worker {name:?} but did not call \
                     `worker_entry` with that name; refusing to spawn workers from it"
                )),
            });
        }
        let program = self.program.map_err(|e| SpawnError::Launch {
            program: "<current executable>".into(),
            source: io::Error::other(e),
        })?;
        // Inherited by this child only: the fd stays close-on-exec here.
        let mark = ReadMark::create();
        let passed = mark.as_ref().map(|(_, fd)| fd.as_raw_fd());
        let mut command = tokio::process::Command::new(&program);
        if self.clear_env {
            command.env_clear();
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(env::SOCKET, &socket_path)
            .env(env::TOKEN, &token)
            .env(env::NAME, &self.worker_name)
            .env(env::MAX_FRAME, options.max_frame_len.to_string())
            .env(env::GRACE_MS, options.close_grace.as_millis().to_string())
            .envs(forwarded_tracing().map(|level| (env::TRACE, level)))
            .envs(passed.map(|fd| (env::READ_MARK, fd.to_string())))
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let limits = self.limits.clone();
        let hook = self.pre_exec.clone();
        let host = std::process::id();
        // SAFETY: the closure only makes async-signal-safe system calls
        // (prctl, getppid, fcntl, setrlimit) and calls the user's hook, whose own
        // safety the user vouched for in `ChildProcess::pre_exec`.
        unsafe {
            command.pre_exec(move || {
                in_child_before_exec(host, &limits, passed)?;
                match &hook {
                    Some(hook) => hook(),
                    None => Ok(()),
                }
            });
        }
        let child = command.spawn().map_err(|source| SpawnError::Launch {
            program: program.display().to_string(),
            source,
        })?;
        // The child has its copy of the descriptor; the mapping is enough here.
        let mark = mark.map(|(mark, _fd)| mark);
        let mut process = ProcessHandle::watch(child, &self.worker_name);
        tracing::debug!(pid = process.pid(), worker = %self.worker_name, "spawned worker");

        let expected = Expected::worker_of::<C>(token, Some(process.pid()));
        let mut handshakes = FuturesUnordered::new();
        let exited = process.exited_within(options.startup_timeout);
        tokio::pin!(exited);
        let failure = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(stream) => handshakes.push(read_first_frame(stream)),
                    Err(e) => tracing::debug!("accept failed: {e}"),
                },
                Some(greeted) = handshakes.next() => match greeted {
                    Ok((stream, Header::Hello(hello))) => match expected.check(&stream, &hello) {
                        Ok(()) => {
                            tracing::debug!(pid = process.pid(), "worker handshake complete");
                            let halves = crate::wire::stream::split(stream).map_err(|source| SpawnError::Io { what: "socket", source })?;
                            let session = Session::spawned(dir, expected.token, process.pid(), mark);
                            return Ok(Connection::child_stream(halves, process, session));
                        }
                        Err(Verdict::Impostor(why)) => tracing::warn!("dropped a peer on the worker socket: {why}"),
                        Err(Verdict::Mismatch(why)) => break SpawnError::Handshake(why),
                    },
                    Ok((_, other)) => tracing::warn!("dropped a peer on the worker socket: it opened with {other:?}"),
                    Err(why) => tracing::warn!("dropped a peer on the worker socket: {why}"),
                },
                status = &mut exited => match status {
                    Some(ended) => {
                        let reason = ended.reason();
                        let stderr = process.stderr_tail(Duration::from_secs(1)).await;
                        return Err(SpawnError::Exited { reason, stderr });
                    }
                    // Still running at the deadline.
                    None => break SpawnError::Timeout {
                        after: options.startup_timeout,
                        stderr: String::new(),
                    },
                },
                _ = tokio::time::sleep_until(deadline) => {
                    break SpawnError::Timeout {
                        after: options.startup_timeout,
                        stderr: String::new(),
                    };
                }
            }
        };
        process.kill();
        let _ = process.exited_within(Duration::from_secs(5)).await;
        let stderr = process.stderr_tail(Duration::from_secs(1)).await;
        Err(match failure {
            SpawnError::Timeout { after, .. } => SpawnError::Timeout { after, stderr },
            other => other,
        })
    }
}

/// Set-up in the child between `fork` and `exec`: die with the host (on
/// Linux, a parent-death signal; elsewhere the closed socket tells the
/// worker), keep the read mark's descriptor, and apply resource limits.
/// Only async-signal-safe calls.
fn in_child_before_exec(
    host: u32,
    limits: &[(Resource, u64, u64)],
    mark: Option<std::os::fd::RawFd>,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SIGTERM, not SIGKILL: the worker then stops like on Close and
        // removes its socket directory. (The signal follows the thread that
        // spawned the child, which is the proxy's arbiter thread.)
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
        // The host may have died before the line above took effect.
        if nix::unistd::getppid().as_raw() as u32 != host {
            return Err(io::Error::other(
                "the host exited while the worker was starting",
            ));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = host;
    if let Some(fd) = mark {
        read_mark::keep_across_exec(fd)?;
    }
    for &(resource, soft, hard) in limits {
        nix::sys::resource::setrlimit(resource, soft, hard)?;
    }
    Ok(())
}

/// The most verbose level the host's global `tracing` subscriber wants, for
/// the worker to forward its own events at; `None` without a subscriber.
fn forwarded_tracing() -> Option<String> {
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    let level = tracing::level_filters::LevelFilter::current().into_level()?;
    Some(level.to_string())
}
