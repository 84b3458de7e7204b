//! The default driver: the worker runs in a child process that talks to the
//! host over a socketpair it inherits.
//!
//! Start-up, in order: make a socketpair; spawn the child with one end as
//! an inherited descriptor (its number and the worker name in the child's
//! environment); read the worker's Hello on the other end. Only the host
//! and the child hold an end, so nothing is on disk, there is no secret to
//! keep, and no one else can be on the other side. The whole start-up is
//! bounded by [`WorkerOptions::startup_timeout`]. A worker makes a
//! listening socket (in a private directory of its own) only when asked to
//! wait for its host (`Disconnect`, `Detach`).
//!
//! What both ends of the connection share (the environment's names, the
//! handshake, the attach socket, the session a host keeps) is in
//! `crate::socket`; this module starts the process.

use std::ffi::OsString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
pub use limits::Resource;

use super::process::ProcessHandle;
use super::{Connection, Driver};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::error::{HandshakeError, SpawnError};
use crate::socket::detach::follow_host;
use crate::socket::directory::sweep_leftovers;
use crate::socket::env;
use crate::socket::first_frame::read_first_frame;
use crate::socket::handshake::Greeting;
use crate::socket::read_mark::ReadMark;
use crate::socket::session::Session;
pub use crate::socket::DetachedWorker;

mod limits;
mod own_image;

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
    /// Whether `program` is the host's own executable, which the child
    /// then runs as the host's very build (see [`own_image`]).
    own_image: bool,
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
    /// Re-runs the current executable as worker `worker_name`: the very
    /// build the host runs, also for a worker started (or restarted) after
    /// the file was rebuilt in place (on Linux the child executes the host's
    /// own image; elsewhere the handshake refuses another build). In a test
    /// binary, see [`test_support!`](crate::test_support!).
    pub fn current_exe(worker_name: impl Into<String>) -> Self {
        let program = std::env::current_exe().map_err(|e| e.to_string());
        Self {
            own_image: true,
            ..Self::with_program(program, worker_name.into())
        }
    }

    /// Runs `program` as worker `worker_name`; the program must call
    /// [`worker_entry`](crate::worker_entry) with that name. A wrapper
    /// program (`setpriv`, `prlimit`, ...) must pass inherited descriptors
    /// on to what it runs: the worker's connection is one.
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
            own_image: false,
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
    /// [`std::os::unix::process::CommandExt::pre_exec`]. For a worker of
    /// [`current_exe`](Self::current_exe), the child then executes
    /// `/proc/self/exe` (Linux): a hook that changes the root must leave it
    /// reachable.
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

/// A worker process just spawned, before its Hello was read: the host's
/// end of its connection, and the handle that watches it.
pub(crate) struct Spawned {
    /// The host's end of the socketpair (blocking, close-on-exec).
    pub(crate) channel: UnixStream,
    /// Watches, kills and reaps the child.
    pub(crate) process: ProcessHandle,
    /// The count of request frames the worker read, if it has one.
    pub(crate) mark: Option<ReadMark>,
}

impl ChildProcess {
    async fn spawn_and_handshake<C: Contract>(
        self,
        options: WorkerOptions,
    ) -> Result<Connection, SpawnError> {
        let deadline = tokio::time::Instant::now() + options.startup_timeout;
        let Spawned {
            channel: ours,
            mut process,
            mark,
        } = self.spawn(&options, true)?;

        let greeted = async {
            ours.set_nonblocking(true)?;
            let mut stream = tokio::net::UnixStream::from_std(ours)?;
            let first = read_first_frame(&mut stream).await;
            Ok::<_, io::Error>((stream, first.map_err(io::Error::other)?))
        };
        let exited = process.exited_within(options.startup_timeout);
        let greeting = if self.own_image {
            Greeting::new::<C>().same_build()
        } else {
            Greeting::new::<C>()
        };
        let failure = tokio::select! {
            greeted = greeted => match greeted {
                Ok((stream, first)) => match greeting.next(first) {
                    Ok(()) => {
                        tracing::debug!(pid = process.pid(), "worker handshake complete");
                        let session = Session::spawned(process.pid(), mark);
                        match crate::wire::stream::split_tokio(stream) {
                            Ok(halves) => return Ok(Connection::child_stream(halves, process, session)),
                            Err(source) => SpawnError::Io { what: "connection", source },
                        }
                    }
                    Err(why) => SpawnError::Handshake(why),
                },
                // The worker's end closed before it said hello: it exited,
                // which the process watcher will tell.
                Err(_) => match exited.await {
                    Some(ended) => {
                        let reason = ended.reason();
                        let stderr = process.stderr_tail(Duration::from_secs(1)).await;
                        return Err(SpawnError::Exited { reason, stderr });
                    }
                    None => SpawnError::Handshake(HandshakeError::Closed),
                },
            },
            _ = tokio::time::sleep_until(deadline) => SpawnError::Timeout {
                after: options.startup_timeout,
                stderr: String::new(),
            },
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

impl ChildProcess {
    /// Spawns the worker process with its end of a fresh socketpair, and
    /// starts watching it; its Hello is not read. With `read_mark`, the
    /// worker gets a [`ReadMark`] to count the requests it read (only a
    /// host that reads the worker's frames itself can use one).
    pub(crate) fn spawn(
        &self,
        options: &WorkerOptions,
        read_mark: bool,
    ) -> Result<Spawned, SpawnError> {
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
        let program = self.program.clone().map_err(|e| SpawnError::Launch {
            program: "<current executable>".into(),
            source: io::Error::other(e),
        })?;
        sweep_leftovers_once();
        // Both ends are close-on-exec here, so that no other child this host
        // spawns meanwhile inherits the worker's end; the child clears the
        // flag on its own copy between fork and exec.
        let (ours, theirs) = socketpair().map_err(|source| SpawnError::Io {
            what: "socketpair",
            source,
        })?;
        // Without a hook of the user's to run between fork and exec, std
        // spawns with `posix_spawn` (no copy of the host's page tables, so
        // the host's size does not matter): the worker's end is then its
        // stdin, and the worker sets its parent-death signal itself.
        let fork_free =
            cfg!(target_os = "linux") && self.limits.is_empty() && self.pre_exec.is_none();
        let mut command = if self.own_image {
            own_image::command(&program, &self.args).map_err(|e| SpawnError::Launch {
                program: program.display().to_string(),
                source: io::Error::other(e),
            })?
        } else {
            let mut command = tokio::process::Command::new(&program);
            command.args(&self.args);
            command
        };
        if self.clear_env {
            command.env_clear();
        }
        command
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(env::NAME, &self.worker_name)
            .env(env::MAX_FRAME, options.max_frame_len.to_string())
            .env(env::GRACE_MS, options.close_grace.as_millis().to_string())
            .envs(forwarded_tracing().map(|level| (env::TRACE, level)))
            .stderr(Stdio::piped());
        let host = std::process::id();
        let (spawned, mark) = if fork_free {
            let mark = read_mark.then(ReadMark::create).flatten();
            command
                .env(env::CHANNEL_FD, "0")
                .env(env::HOST_PID, host.to_string())
                .envs(
                    mark.as_ref()
                        .map(|_| (env::READ_MARK, env::MARK_ON_CHANNEL)),
                )
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
            let spawned = command.spawn();
            // The child has its copy; the host's must go with the command,
            // or the host would never see the worker's end close.
            drop(command);
            let mark = match (mark, &spawned) {
                (Some((mark, fd)), Ok(_)) => match send_mark(&ours, &fd) {
                    Ok(()) => Some(mark),
                    Err(e) => {
                        // The worker waits for this first message: a bare
                        // byte tells it there is no mark.
                        tracing::debug!("no read mark for this worker: {e}");
                        let _ = std::io::Write::write_all(&mut &ours, &[0]);
                        None
                    }
                },
                _ => None,
            };
            (spawned, mark)
        } else {
            let channel = theirs.as_raw_fd();
            // Inherited by this child only, as the worker's end is.
            let mark = read_mark
                .then(ReadMark::create)
                .flatten()
                .and_then(|(mark, fd)| above_stdio(fd).ok().map(|fd| (mark, fd)));
            let passed = mark.as_ref().map(|(_, fd)| fd.as_raw_fd());
            command
                .env(env::CHANNEL_FD, channel.to_string())
                .envs(passed.map(|fd| (env::READ_MARK, fd.to_string())))
                .stdin(Stdio::null());
            let limits = self.limits.clone();
            let hook = self.pre_exec.clone();
            // SAFETY: the closure only makes async-signal-safe system calls
            // (prctl, getppid, fcntl, setrlimit) and calls the user's hook, whose
            // own safety the user vouched for in `ChildProcess::pre_exec`.
            unsafe {
                command.pre_exec(move || {
                    in_child_before_exec(host, [Some(channel), passed], &limits)?;
                    match &hook {
                        Some(hook) => hook(),
                        None => Ok(()),
                    }
                });
            }
            let spawned = command.spawn();
            // The child has its copies (or there is no child): the host's copy
            // of the worker's end must go, or the host would never see it
            // close; of the mark, the mapping is enough here.
            drop(theirs);
            (spawned, mark.map(|(mark, _fd)| mark))
        };
        let child = spawned.map_err(|source| SpawnError::Launch {
            program: program.display().to_string(),
            source,
        })?;
        let process = ProcessHandle::watch(child, &self.worker_name);
        tracing::debug!(pid = process.pid(), worker = %self.worker_name, "spawned worker");
        Ok(Spawned {
            channel: ours,
            process,
            mark,
        })
    }
}

/// Sends the read mark's descriptor to the worker as the channel's first
/// message: one byte, with the descriptor attached.
fn send_mark(channel: &std::os::unix::net::UnixStream, mark: &impl AsFd) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [mark.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the read mark's descriptor"));
    }
    sendmsg(
        channel,
        &[io::IoSlice::new(&[0])],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// A connected pair of sockets, both close-on-exec, the second being the
/// worker's end (see [`above_stdio`]).
fn socketpair() -> io::Result<(UnixStream, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    Ok((ours, above_stdio(theirs.into())?.into()))
}

/// `fd`, or a close-on-exec copy of it numbered 3 or above, for a child to
/// inherit: a host whose stdin, stdout or stderr is closed would otherwise
/// hand the child a number its stdio takes over.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Sweeps the attach directories of dead workers once per host process
/// (see [`sweep_leftovers`]): a worker killed while it waited for its host
/// could not remove its own.
fn sweep_leftovers_once() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| sweep_leftovers(&std::env::temp_dir()));
}

/// Set-up in the child between `fork` and `exec`: die with the host (on
/// Linux, a parent-death signal; elsewhere the closed socket tells the
/// worker), keep the worker's end of the socketpair and the read mark
/// across `exec`, and apply resource limits. Only async-signal-safe calls.
fn in_child_before_exec(
    host: u32,
    inherited: [Option<RawFd>; 2],
    limits: &[(Resource, u64, u64)],
) -> io::Result<()> {
    follow_host(host)?;
    for fd in inherited.into_iter().flatten() {
        // SAFETY: the parent holds each of these open until `spawn` has
        // returned, and the fork copied them into this child.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    limits::set(limits)
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
