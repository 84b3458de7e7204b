//! Drivers: how a worker is started and reached, and what it can do.
//!
//! A [`Driver`] starts a worker and returns a [`Connection`] for the proxy
//! to drive. Built in: [`ChildProcess`] (the default: a child process over a
//! local socket) and [`Thread`] (an actix arbiter in the host process).
//!
//! What a driver can do is said by marker traits, checked at compile time:
//! [`CanReconnect`] and [`CanDetach`] unlock the `Disconnect`, `Reconnect`
//! and `Detach` messages; [`SharesMemory`] unlocks `#[local]` messages,
//! which are moved to the worker instead of serialized. Generic code asks
//! for what it needs:
//!
//! ```
//! use actix::Addr;
//! use isolated_workers::driver::{CanReconnect, Driver};
//! use isolated_workers::{Contract, Worker};
//! use isolated_workers::proxy::Disconnect;
//!
//! /// Compiles only for workers whose driver can reconnect.
//! fn drop_link<C: Contract, D: Driver<C> + CanReconnect>(worker: &Addr<Worker<C, D>>) {
//!     worker.do_send(Disconnect);
//! }
//! ```

use std::any::Any;

use futures::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::WorkerOptions;
use crate::contract::{Contract, LocalOnly, Portable};
use crate::error::SpawnError;

pub mod child_process;
pub(crate) mod process;
pub mod thread;

pub use child_process::ChildProcess;
pub use thread::Thread;

pub(crate) use process::ProcessHandle;
pub(crate) use thread::LocalConnection;

/// Starts a worker serving contract `C` and hands the proxy a live
/// [`Connection`] to it.
///
/// Implement it to start workers some other way (a wrapper program, a
/// remote launcher, an in-memory stream for tests); the proxy brings the
/// rest — request ids, timeouts, crash reports, `Close`, `Status`. The
/// worker side of a byte stream is served by [`serve_io`](crate::worker::serve_io)
/// (or [`worker_entry`](crate::worker_entry) in a child process).
///
/// A driver's capabilities are the marker traits it implements:
/// [`CanReconnect`], [`CanDetach`], [`SharesMemory`].
pub trait Driver<C: Contract>: Sized + Unpin + 'static {
    /// Starts the worker; resolves once it is ready to serve, within
    /// [`WorkerOptions::startup_timeout`]. Called again to start a fresh
    /// worker after a crash.
    ///
    /// # Errors
    /// A [`SpawnError`] naming why the worker could not be started.
    fn launch(
        &self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>>;
}

/// A started worker, as a driver hands it to the proxy.
#[derive(Debug)]
pub struct Connection {
    pub(crate) kind: ConnectionKind,
}

#[derive(Debug)]
pub(crate) enum ConnectionKind {
    /// Frames over a byte stream.
    Stream(StreamConnection),
    /// Values moved to an actor in this process.
    Local(LocalConnection),
}

/// A worker reached over a byte stream.
pub(crate) struct StreamConnection {
    pub(crate) reader: crate::wire::stream::ReadEnd,
    pub(crate) writer: crate::wire::stream::WriteEnd,
    pub(crate) process: Option<ProcessHandle>,
    /// Dropped after the worker is gone (directories, guards).
    pub(crate) resources: Vec<Box<dyn Any>>,
    /// Whether the driver already checked the worker's Hello; if not, the
    /// proxy expects it as the first frame.
    pub(crate) greeted: bool,
    /// For a child worker: how to reach the same process again. This is
    /// the one place the generic connection knows a concrete driver:
    /// reconnecting and detaching are features of the proxy that only
    /// [`ChildProcess`] workers have (see [`CanReconnect`], [`CanDetach`]),
    /// and the proxy needs the session to offer them. `None` for every
    /// other driver.
    pub(crate) session: Option<crate::socket::session::Session>,
}

impl std::fmt::Debug for StreamConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConnection")
            .field("process", &self.process)
            .field("greeted", &self.greeted)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A worker that speaks this crate's wire protocol on `io`: the other
    /// end is served by [`serve_io`](crate::worker::serve_io). The proxy
    /// checks the worker's Hello (protocol, contract, serializer) as the
    /// first frame. Authenticating the peer is the driver's job.
    pub fn stream<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let reader: Box<dyn AsyncRead + Unpin> = Box::new(reader);
        let writer: Box<dyn AsyncWrite + Unpin> = Box::new(writer);
        Self::halves(reader.into(), writer.into(), false)
    }

    pub(crate) fn halves(
        reader: crate::wire::stream::ReadEnd,
        writer: crate::wire::stream::WriteEnd,
        greeted: bool,
    ) -> Self {
        Self {
            kind: ConnectionKind::Stream(StreamConnection {
                reader,
                writer,
                process: None,
                resources: Vec::new(),
                greeted,
                session: None,
            }),
        }
    }

    /// A child worker's connection, after the driver checked its Hello.
    pub(crate) fn child_stream(
        (reader, writer): crate::wire::stream::Halves,
        process: ProcessHandle,
        session: crate::socket::session::Session,
    ) -> Self {
        let mut connection = Self::halves(reader.into(), writer.into(), true);
        if let ConnectionKind::Stream(stream) = &mut connection.kind {
            stream.process = Some(process);
            stream.session = Some(session);
        }
        connection
    }

    /// The worker is this child process: the proxy watches it, reports its
    /// exit status when it dies, and kills and reaps it on `Close` or drop.
    /// (Stream connections only; ignored for others.)
    pub fn child(self, child: tokio::process::Child) -> Self {
        self.with_process(ProcessHandle::watch(child, "child"))
    }

    pub(crate) fn with_process(mut self, process: ProcessHandle) -> Self {
        if let ConnectionKind::Stream(stream) = &mut self.kind {
            stream.process = Some(process);
        }
        self
    }

    /// Keeps `resource` alive until the worker is gone (for instance the
    /// directory holding its socket). (Stream connections only.)
    pub fn keep<R: 'static>(mut self, resource: R) -> Self {
        if let ConnectionKind::Stream(stream) = &mut self.kind {
            stream.resources.push(Box::new(resource));
        }
        self
    }
}

/// A driver whose workers can be disconnected from and reconnected to
/// without losing their state: unlocks `Disconnect` and `Reconnect`.
///
/// Sealed: reconnecting needs a worker that listens for its host after
/// the handshake, which only this crate's [`ChildProcess`] workers do.
#[diagnostic::on_unimplemented(
    message = "driver `{Self}` cannot disconnect from a worker and reconnect to it",
    note = "`Disconnect` and `Reconnect` need a driver whose worker outlives its connection, such as `ChildProcess`"
)]
pub trait CanReconnect: sealed::Sealed {}

/// A driver whose workers can outlive the host: unlocks `Detach`.
///
/// Sealed, as [`CanReconnect`] is: only [`ChildProcess`] workers can.
#[diagnostic::on_unimplemented(
    message = "driver `{Self}` cannot detach a worker from the host",
    note = "`Detach` needs a driver whose worker can outlive the host process, such as `ChildProcess`"
)]
pub trait CanDetach: sealed::Sealed {}

/// A driver whose workers share memory with the host: unlocks `#[local]`
/// messages, which are moved to the worker rather than serialized.
#[diagnostic::on_unimplemented(
    message = "driver `{Self}` does not share memory with the host, so it cannot carry `#[local]` messages",
    note = "declare the message without `#[local]` (it must then be serializable), or use a driver that shares memory, such as `Thread`"
)]
pub trait SharesMemory {}

/// Which messages a driver can carry, by their
/// [`Portability`](crate::contract::Portability): every driver carries
/// portable ones; only drivers that share memory carry `#[local]` ones.
pub trait Carries<P> {}

impl<D> Carries<Portable> for D {}
impl<D: SharesMemory> Carries<LocalOnly> for D {}

mod sealed {
    /// Drivers of this crate whose workers listen for their host again.
    pub trait Sealed {}
    impl Sealed for super::ChildProcess {}
}

impl CanReconnect for ChildProcess {}
impl CanDetach for ChildProcess {}
impl<A> SharesMemory for Thread<A> {}
