//! Errors: what went wrong with a request ([`WorkerError`]), with starting a
//! worker ([`SpawnError`]), inside the worker's handler ([`RemoteError`]),
//! with the request on the worker's side of the wire ([`ProtocolFailure`]),
//! with a connection command ([`ConnectionError`], [`AttachError`]), and
//! why a worker died ([`CrashReason`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a request to a worker did not produce a reply.
///
/// Every request resolves: with the reply, or with exactly one of these.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The worker's handler (or the worker's middleware) returned an error.
    #[error("the worker answered with an error: {0}")]
    Remote(#[from] RemoteError),
    /// The worker could not serve the request for a reason of the
    /// protocol's, not the handler's: it does not know the message, could
    /// not decode it, could not send the reply, or is shutting down. The
    /// worker serves on.
    #[error(transparent)]
    Protocol(ProtocolFailure),
    /// No reply arrived within the request's deadline. A request that had
    /// reached the worker was told to cancel there; one still `queued` never
    /// reached it.
    #[error(
        "`{message}` timed out after {after:?}{}",
        if *queued { " waiting in the queue, before it reached a worker" } else { "" }
    )]
    Timeout {
        /// The deadline that passed.
        after: Duration,
        /// The wire name of the message.
        message: &'static str,
        /// Whether it was still waiting in a queue (a
        /// [`WorkerPool`](crate::WorkerPool)'s, or a worker proxy's behind
        /// [`WorkerOptions::max_in_flight`](crate::WorkerOptions::max_in_flight))
        /// when its deadline passed: it never reached a worker, so the
        /// worker had nothing to cancel. A sign that more workers (or a
        /// larger in-flight bound) are needed rather than faster ones.
        queued: bool,
    },
    /// The worker died while the request was in flight (or before it was sent).
    #[error(
        "the worker crashed ({reason}){}{}",
        if *attempt > 1 { format!(" on attempt {attempt}") } else { String::new() },
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Crashed {
        /// Exit code, signal, or lost connection.
        reason: CrashReason,
        /// What the worker said before dying (its panic message), if anything.
        message: Option<String>,
        /// Which attempt this was; 1 for the first try.
        attempt: u32,
    },
    /// The worker kept crashing: it was restarted as often as
    /// [`WorkerOptions::max_restarts`](crate::WorkerOptions::max_restarts)
    /// allows, and the proxy gave up on it.
    #[error("gave up on the worker after {restarts} restarts within {within:?}; last: {last}")]
    GaveUp {
        /// Restarts made within the window.
        restarts: u32,
        /// The restart window.
        within: Duration,
        /// The last crash (a fresh worker that failed to start counts as one:
        /// see [`Crash`]).
        last: Crash,
    },
    /// The worker was closed; it accepts no more requests.
    #[error("the worker is closed")]
    Closed,
    /// Too many requests are already waiting for this worker, or for a
    /// free member of this [`WorkerPool`](crate::WorkerPool): the request
    /// was refused at once, not queued.
    #[error("the worker is overloaded: {limit} requests are already queued")]
    Overloaded {
        /// The queue bound that was hit.
        limit: usize,
    },
    /// A middleware on this host refused the request; it was not sent.
    #[error("refused by the host's middleware: {0}")]
    Rejected(RemoteError),
    /// The connection to the worker was closed with
    /// [`Disconnect`](crate::Disconnect); send
    /// [`Reconnect`](crate::Reconnect) to restore it.
    #[error("the worker is disconnected")]
    Disconnected,
    /// A [`WorkerPool`](crate::WorkerPool) had no member to send the
    /// request to, and could not start one. The next request tries again.
    #[error("no pool member could be started: {cause}")]
    NoMember {
        /// Why the last member the pool tried to start did not start.
        /// (Its text is part of this error's, so it is not repeated as
        /// the `source()`.)
        cause: Arc<SpawnError>,
    },
    /// The request could not be encoded on this host; it was not sent.
    #[error("could not encode `{message}`: {detail}")]
    Unencodable {
        /// The wire name of the message.
        message: &'static str,
        /// The serializer's own error text.
        detail: String,
    },
    /// The worker's reply could not be decoded on this host: the worker
    /// did handle the request.
    #[error("could not decode the reply to `{message}`: {detail}")]
    UndecodableReply {
        /// The wire name of the message.
        message: &'static str,
        /// The serializer's own error text.
        detail: String,
    },
    /// The request's frame is larger than the configured maximum.
    #[error("`{message}` is {size} bytes encoded, over the frame limit of {limit} bytes")]
    TooLarge {
        /// The wire name of the message.
        message: &'static str,
        /// Its encoded size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// An error raised inside the worker, carried to the host intact.
///
/// Handlers on the worker side return `Err(RemoteError::new(..).into())`
/// (or convert any `std::error::Error` with [`RemoteError::from_error`]).
///
/// ```
/// use isolated_workers::RemoteError;
/// let e = RemoteError::new("DivideByZero", "cannot divide 1 by zero").with_code(22);
/// assert_eq!(e.to_string(), "DivideByZero: cannot divide 1 by zero (code 22)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct RemoteError {
    /// A short, stable name for the kind of error, e.g. `DivideByZero`.
    pub name: String,
    /// A human-readable description.
    pub message: String,
    /// An optional machine-readable code.
    pub code: Option<i64>,
    /// The `source()` chain of the original error, outermost first.
    pub causes: Vec<String>,
}

impl RemoteError {
    /// An error with a name and a message.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: message.into(),
            code: None,
            causes: Vec::new(),
        }
    }

    /// Adds a machine-readable code.
    pub fn with_code(mut self, code: i64) -> Self {
        self.code = Some(code);
        self
    }

    /// Captures any error: its type name (last path segment), its message and
    /// its `source()` chain.
    pub fn from_error<E: std::error::Error + ?Sized>(error: &E) -> Self {
        let full = std::any::type_name::<E>();
        let name = full.rsplit("::").next().unwrap_or(full);
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        Self {
            name: name.to_owned(),
            message: error.to_string(),
            code: None,
            causes,
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)?;
        if let Some(code) = self.code {
            write!(f, " (code {code})")?;
        }
        for cause in &self.causes {
            write!(f, "; caused by: {cause}")?;
        }
        Ok(())
    }
}

impl From<WorkerError> for RemoteError {
    /// A worker-side handler that itself called another worker may return
    /// that error; it travels as a remote error named after its kind.
    fn from(error: WorkerError) -> Self {
        match error {
            WorkerError::Remote(remote) => remote,
            other => RemoteError::new("WorkerError", other.to_string()),
        }
    }
}

/// Why a worker could not serve a request, for a reason of the protocol's
/// rather than its handler's. Carried by [`WorkerError::Protocol`].
///
/// The worker answers with it and serves on; it travels on the wire in a
/// frame of its own, so it cannot be mistaken for a [`RemoteError`] a
/// handler returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolFailure {
    /// The worker's contract has no message of this wire name: the host's
    /// contract has drifted from the worker's.
    #[error("the worker does not handle a message named `{name}`")]
    UnknownMessage {
        /// The message's wire name.
        name: String,
    },
    /// The worker could not decode the request: the host's message type
    /// has drifted from the worker's.
    #[error("the worker could not decode `{message}`: {detail}")]
    Undecodable {
        /// The message's wire name.
        message: String,
        /// The serializer's own error text.
        detail: String,
    },
    /// The handler replied, but the worker could not encode the reply.
    #[error("the worker could not encode the reply: {detail}")]
    ReplyUnencodable {
        /// The serializer's own error text.
        detail: String,
    },
    /// The handler replied, but the encoded reply is larger than the frame
    /// limit ([`WorkerOptions::max_frame_len`](crate::WorkerOptions::max_frame_len)).
    #[error("the reply is {size} bytes, over the frame limit of {limit} bytes")]
    ReplyTooLarge {
        /// The reply's encoded size.
        size: usize,
        /// The frame limit.
        limit: usize,
    },
    /// The worker is shutting down and takes no more requests.
    #[error("the worker is shutting down")]
    ShuttingDown,
}

/// Error returned by [`Disconnect`](crate::Disconnect),
/// [`Reconnect`](crate::Reconnect) and [`Detach`](crate::Detach): why the
/// worker's connection could not be closed, restored or handed over.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The worker is closed (or closing).
    #[error("the worker is closed")]
    Closed,
    /// The worker is not running: it crashed before the command, while it
    /// was disconnected, or while the command waited for it. As after any
    /// crash, the next request starts a fresh worker (if the worker has a
    /// driver to start one with).
    #[error(
        "the worker crashed ({reason}){}",
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Crashed {
        /// Exit code, signal, or lost connection.
        reason: CrashReason,
        /// What the worker said before dying (its panic message), if anything.
        message: Option<String>,
    },
    /// The worker kept crashing and the proxy gave up on it, as
    /// [`WorkerError::GaveUp`] says.
    #[error("gave up on the worker after {restarts} restarts within {within:?}; last: {last}")]
    GaveUp {
        /// Restarts made within the window.
        restarts: u32,
        /// The restart window.
        within: Duration,
        /// The last crash (see [`Crash`]).
        last: Crash,
    },
    /// The worker is disconnected: send [`Reconnect`](crate::Reconnect)
    /// first. (Returned by `Detach`.)
    #[error("the worker is disconnected")]
    Disconnected,
    /// The worker did not confirm `Disconnect` or `Detach` within
    /// [`WorkerOptions::startup_timeout`](crate::WorkerOptions::startup_timeout).
    /// The connection is kept, and the worker serves on.
    #[error("the worker did not confirm within {after:?}")]
    NotConfirmed {
        /// How long the proxy waited.
        after: Duration,
    },
    /// An earlier `Disconnect` or `Detach` still waits for the worker's
    /// confirmation.
    #[error("another Disconnect or Detach is under way")]
    UnderWay,
    /// `Reconnect` could not reach the worker, which still runs (or is
    /// not known to have ended). The worker stays disconnected.
    #[error("could not reconnect to the worker: {0}")]
    Unreachable(#[source] AttachError),
    /// The worker confirmed `Detach` without saying where it accepts its
    /// host again, so no handle can be made. (This crate's workers always
    /// say it.)
    #[error("the worker never said where it accepts its host")]
    NotListening,
    /// The proxy holds no connection to a worker process that it could
    /// hang up, restore or hand over. This crate's drivers never leave a
    /// proxy so; it is reported rather than assumed impossible.
    #[error("the proxy holds no connection to a worker process")]
    NoProcess,
}

/// How a worker died: why, and what it said. What a proxy that gave up
/// reports as the last crash ([`WorkerError::GaveUp`],
/// [`LifecycleEvent::GaveUp`](crate::LifecycleEvent::GaveUp),
/// [`WorkerState::GaveUp`](crate::WorkerState::GaveUp)). A fresh worker
/// that failed to start counts as a crash with
/// [`CrashReason::ConnectionLost`] and the message "restart failed: …".
///
/// ```
/// use isolated_workers::{Crash, CrashReason};
/// let crash = Crash::new(CrashReason::Panic, Some("boom".into()));
/// assert_eq!(crash.to_string(), "crashed (panicked): boom");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Crash {
    /// Exit code, signal, or lost connection.
    pub reason: CrashReason,
    /// What the worker said before dying (its panic message), if anything.
    pub message: Option<String>,
}

impl Crash {
    /// A crash for `reason`, with what the worker said.
    pub fn new(reason: CrashReason, message: Option<String>) -> Self {
        Self { reason, message }
    }

    /// The error a request gets for it (its first attempt).
    pub(crate) fn error(&self) -> WorkerError {
        WorkerError::Crashed {
            reason: self.reason.clone(),
            message: self.message.clone(),
            attempt: 1,
        }
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "crashed ({})", self.reason)?;
        match &self.message {
            Some(message) => write!(f, ": {message}"),
            None => Ok(()),
        }
    }
}

/// Why a worker stopped without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrashReason {
    /// The process exited with this code.
    Exit(i32),
    /// The process was killed by this signal.
    Signal(i32),
    /// The worker panicked: a thread worker, or a worker that reported its
    /// panic (a child process then exits with code 101, which the host
    /// does not wait for).
    Panic,
    /// The connection broke but the cause could not be learned.
    ConnectionLost,
    /// The worker's actor stopped by itself (it called `ctx.stop()`).
    Stopped,
    /// The connection to a worker on another machine was lost (through
    /// NATS: missed heartbeats, a message missing, a reconnect of either
    /// side): whether the worker still runs is not known here, and its
    /// agent ends it. Says what was noticed.
    RemoteLost(String),
}

/// Serialized as `{"kind": .., "code": .., "text": ..}`: `kind` the
/// variant in snake case (`exit`, `signal`, `panic`, `connection_lost`,
/// `stopped`, `remote_lost`), `code` the exit code or signal number (`null` for the
/// others), `text` what `Display` says ("killed by SIGKILL"). By hand, as
/// serde's derive has no shape that gives every variant the same fields.
impl Serialize for CrashReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The shape written.
        #[derive(Serialize)]
        struct Written {
            /// The variant.
            kind: &'static str,
            /// Its number, if it has one.
            code: Option<i32>,
            /// Its `Display`.
            text: String,
        }
        let (kind, code) = match self {
            CrashReason::Exit(code) => ("exit", Some(*code)),
            CrashReason::Signal(signal) => ("signal", Some(*signal)),
            CrashReason::Panic => ("panic", None),
            CrashReason::ConnectionLost => ("connection_lost", None),
            CrashReason::Stopped => ("stopped", None),
            CrashReason::RemoteLost(_) => ("remote_lost", None),
        };
        let text = self.to_string();
        Written { kind, code, text }.serialize(serializer)
    }
}

impl fmt::Display for CrashReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashReason::Exit(code) => write!(f, "exit code {code}"),
            CrashReason::Signal(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "killed by {name}"),
                None => write!(f, "killed by signal {signal}"),
            },
            CrashReason::Panic => f.write_str("panicked"),
            CrashReason::ConnectionLost => f.write_str("connection lost"),
            CrashReason::Stopped => f.write_str("its actor stopped"),
            CrashReason::RemoteLost(why) => {
                write!(f, "the connection to the remote worker was lost: {why}")
            }
        }
    }
}

/// The C name of signal number `signal` ("SIGKILL"), for the signals a
/// process can be killed by; `None` for another number. Written out here
/// because rustix's `Signal` prints as `Signal::KILL`.
#[cfg(unix)]
fn signal_name(signal: i32) -> Option<&'static str> {
    use rustix::process::Signal;
    Some(match Signal::from_named_raw(signal)? {
        Signal::HUP => "SIGHUP",
        Signal::INT => "SIGINT",
        Signal::QUIT => "SIGQUIT",
        Signal::ILL => "SIGILL",
        Signal::TRAP => "SIGTRAP",
        Signal::ABORT => "SIGABRT",
        Signal::BUS => "SIGBUS",
        Signal::FPE => "SIGFPE",
        Signal::KILL => "SIGKILL",
        Signal::USR1 => "SIGUSR1",
        Signal::SEGV => "SIGSEGV",
        Signal::USR2 => "SIGUSR2",
        Signal::PIPE => "SIGPIPE",
        Signal::ALARM => "SIGALRM",
        Signal::TERM => "SIGTERM",
        Signal::CHILD => "SIGCHLD",
        Signal::CONT => "SIGCONT",
        Signal::STOP => "SIGSTOP",
        Signal::TSTP => "SIGTSTP",
        Signal::TTIN => "SIGTTIN",
        Signal::TTOU => "SIGTTOU",
        Signal::URG => "SIGURG",
        Signal::XCPU => "SIGXCPU",
        Signal::XFSZ => "SIGXFSZ",
        Signal::VTALARM => "SIGVTALRM",
        Signal::PROF => "SIGPROF",
        Signal::WINCH => "SIGWINCH",
        Signal::IO => "SIGIO",
        Signal::SYS => "SIGSYS",
        #[cfg(target_os = "linux")]
        Signal::POWER => "SIGPWR",
        #[cfg(all(
            target_os = "linux",
            not(any(
                target_arch = "mips",
                target_arch = "mips32r6",
                target_arch = "mips64",
                target_arch = "mips64r6",
                target_arch = "sparc",
                target_arch = "sparc64"
            ))
        ))]
        Signal::STKFLT => "SIGSTKFLT",
        _ => return None,
    })
}

#[cfg(all(test, target_os = "linux"))]
mod signal_name_tests {
    use super::signal_name;

    #[test]
    fn every_standard_signal_has_its_c_name_and_other_numbers_none() {
        let named: Vec<_> = (1..=31).map(|n| signal_name(n).unwrap()).collect();
        assert_eq!(named[9 - 1], "SIGKILL");
        assert_eq!(named[15 - 1], "SIGTERM");
        assert_eq!(named[6 - 1], "SIGABRT");
        assert_eq!(named[14 - 1], "SIGALRM");
        assert!(named.iter().all(|name| name.starts_with("SIG")));
        let distinct: std::collections::HashSet<_> = named.iter().collect();
        assert_eq!(distinct.len(), 31, "{named:?}");
        for other in [0, -1, 32, 34, 64, i32::MAX] {
            assert_eq!(signal_name(other), None, "{other}");
        }
    }
}

#[cfg(not(unix))]
fn signal_name(_: i32) -> Option<&'static str> {
    None
}

impl CrashReason {
    /// The reason a process with this exit status stopped.
    pub fn from_exit_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            if let Some(signal) = status.signal() {
                return CrashReason::Signal(signal);
            }
        }
        match status.code() {
            Some(code) => CrashReason::Exit(code),
            None => CrashReason::ConnectionLost,
        }
    }
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The program could not be started at all.
    #[error("could not start `{program}`: {source}")]
    Launch {
        /// The program that was run.
        program: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The worker exited before it completed the handshake.
    #[error("the worker exited before it was ready ({reason}){}", stderr_tail(.stderr))]
    Exited {
        /// How it exited.
        reason: CrashReason,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// The worker did not complete the handshake within the startup timeout.
    #[error("the worker was not ready within {after:?}{}", stderr_tail(.stderr))]
    Timeout {
        /// The startup timeout.
        after: Duration,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// The worker's actor panicked while it was being created.
    #[error("the worker panicked while starting: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// The worker said hello but disagreed about the protocol, contract or
    /// serializer (or did not say hello).
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    /// No agent could take the worker: none serves the contract on the
    /// claim subject, all are at capacity, or the one that answered could
    /// not start it (the `nats` module, feature `nats`).
    #[error("no agent could start the worker (claims on `{subject}`): {why}")]
    NoAgent {
        /// The subject the claim was sent on.
        subject: String,
        /// What the agents (or their absence) said.
        why: String,
    },
    /// A local resource (directory, socket, thread) could not be set up.
    #[error("could not set up the worker's {what}: {source}")]
    Io {
        /// What was being set up.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Why a host could not attach (or reconnect) to a running worker.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The handle is for another contract than the one the host asked for.
    #[error("the handle is for contract `{found}`, the host expects `{expected}`")]
    ContractMismatch {
        /// The host's contract and version, e.g. `calc v1`.
        expected: String,
        /// The handle's contract and version.
        found: String,
    },
    /// No worker runs behind the handle (it exited, was killed, or timed
    /// out idle). Its leftover socket directory, if any, was removed.
    #[error("worker {pid} is gone: {detail}")]
    Gone {
        /// The worker's process id, as the handle says.
        pid: u32,
        /// What connecting found.
        detail: String,
    },
    /// The worker refused the token the host presented.
    #[error("the worker refused the token")]
    WrongToken,
    /// Another host is attached to the worker; a worker serves one host at
    /// a time.
    #[error("another host is attached to the worker")]
    Busy,
    /// The worker answered, but does not speak what the host does
    /// (protocol, contract or serializer), or is not who the handle says.
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    /// The worker did not complete the handshake in time.
    #[error("the worker did not answer within {0:?}")]
    Timeout(Duration),
}

/// Why a host and a worker could not open a connection: what the worker's
/// first frame said (or that there was none), or who the OS says is on the
/// other end. Both [`SpawnError::Handshake`] and [`AttachError::Handshake`]
/// carry it; its text is the sentence after "handshake failed: ".
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The worker speaks another version of the wire protocol.
    #[error("the worker speaks protocol version {worker}, the host {host}")]
    Protocol {
        /// The worker's protocol version.
        worker: u32,
        /// The host's.
        host: u32,
    },
    /// The worker serves another contract, or another version of it.
    #[error(
        "the worker serves contract `{worker}` v{worker_version}, the host expects `{host}` v{host_version}"
    )]
    Contract {
        /// The contract the worker serves.
        worker: String,
        /// Its version.
        worker_version: u32,
        /// The contract the host expects.
        host: String,
        /// Its version.
        host_version: u32,
    },
    /// The worker encodes payloads with another
    /// [`Serializer`](crate::Serializer).
    #[error("the worker encodes with `{worker}`, the host with `{host}`")]
    Serializer {
        /// The worker's serializer, by its name.
        worker: String,
        /// The host's.
        host: String,
    },
    /// The worker was started from the host's executable
    /// ([`ChildProcess::current_exe`](crate::ChildProcess::current_exe)) but
    /// runs another build of it: the file was rebuilt or replaced after the
    /// host started, and the worker runs the file, not the host's image
    /// (on Linux a worker always runs the host's image). Each identity is
    /// the executable's `device:inode:size:mtime`.
    #[error(
        "the worker runs another build of the executable ({worker}) than the host ({host}): \
         the file was replaced after the host started; restart the host to run the new build"
    )]
    OtherBuild {
        /// The worker's executable.
        worker: String,
        /// The host's.
        host: String,
    },
    /// The worker's first frame is not its Hello.
    #[error("expected a hello, got {got}")]
    Unexpected {
        /// What came instead.
        got: String,
    },
    /// The worker closed its connection before it said hello.
    #[error("the worker closed its connection without a hello")]
    Closed,
    /// The worker's first frame could not be read: the connection ended
    /// within it, it is over the size a first frame may have, or it is not
    /// a frame of this protocol. The text says which.
    #[error("{0}")]
    Unreadable(String),
    /// The worker's Hello does not carry the attach secret the host
    /// presented: it is not the worker that listens there.
    #[error("the worker's hello has the wrong token")]
    WrongWorkerToken,
    /// The process on the other end runs as another user.
    #[error("peer runs as uid {uid}, not {ours}")]
    ForeignUser {
        /// The peer's effective user id.
        uid: u32,
        /// This process's.
        ours: u32,
    },
    /// The process on the other end is not the worker the handle names.
    #[error("peer is process {pid}, not {expected}")]
    OtherProcess {
        /// The peer's process id.
        pid: i32,
        /// The worker's, as the handle says.
        expected: u32,
    },
    /// The handle was made by a host that speaks another protocol version.
    #[error("the handle is for protocol version {handle}, this host speaks {host}")]
    HandleProtocol {
        /// The protocol version the handle names.
        handle: u32,
        /// This host's.
        host: u32,
    },
    /// `Reconnect` to a worker that never said where it accepts its host.
    #[error("the worker never said where it accepts its host")]
    NotListening,
    /// The connection could not be set up for frames.
    #[error(transparent)]
    Io(std::sync::Arc<std::io::Error>),
}

fn stderr_tail(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{}", stderr.trim_end())
    }
}
