//! The host side: [`Worker`], the actor whose mailbox forwards contract
//! messages to a worker and resolves each with its reply, a timeout, or the
//! worker's crash.
//!
//! The proxy owns the link: it writes frames (queued frames are coalesced
//! into one write by actix's framed writer), reads replies on its own task,
//! keeps the table of requests in flight, and turns the end of the
//! connection into a `Crashed` error for every request still waiting.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::time::Duration;

use crate::wire::stream::SharedStream;
use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::process::ProcessHandle;
use crate::driver::{ChildProcess, Driver, Link};
use crate::error::{CrashReason, SpawnError, WorkerError};
use crate::wire::envelope::Header;
use crate::wire::frame::{Frame, FrameCodec, FrameError};

mod lifecycle;
mod request;

pub use lifecycle::{Close, Status, WorkerState, WorkerStatus};

/// How long after the connection ends the proxy waits to learn the child's
/// exit status before reporting the crash without it.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);

/// The host's proxy for one worker of contract `C`, reached through driver
/// `D`. An actix actor: `Addr<Worker<C, D>>` accepts exactly the messages of
/// `C` (each answered with `Result<Reply, WorkerError>`) plus [`Close`] and
/// [`Status`].
///
/// Dropping the last `Addr` (or stopping the actix System) kills the worker
/// and removes its socket directory.
pub struct Worker<C: Contract, D: Driver = ChildProcess> {
    options: WorkerOptions,
    state: WorkerState,
    pid: Option<u32>,
    writer: Option<FramedWrite<Frame, SharedStream, FrameCodec>>,
    link: Option<LinkResources>,
    pending: HashMap<u64, Pending>,
    /// Requests waiting for an in-flight slot, oldest first.
    queue: VecDeque<Frame>,
    in_flight: usize,
    next_id: u64,
    /// The message of a `Panicked` frame, reported with the crash.
    last_words: Option<String>,
    _contract: PhantomData<fn() -> (C, D)>,
}

/// What must live exactly as long as the worker: its process and directory.
struct LinkResources {
    process: ProcessHandle,
    _dir: tempfile::TempDir,
}

/// A request the proxy has accepted and not yet resolved.
struct Pending {
    message: &'static str,
    reply: oneshot::Sender<Result<Bytes, WorkerError>>,
    /// Written to the worker (as opposed to waiting in the queue).
    sent: bool,
}

impl<C: Contract, D: Driver> std::fmt::Debug for Worker<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("contract", &C::NAME)
            .field("pid", &self.pid)
            .field("state", &self.state)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl<C: Contract, D: Driver> Worker<C, D> {
    /// Starts a worker with default [`WorkerOptions`] and returns the address
    /// of its proxy once the worker has completed its handshake.
    ///
    /// Must be called inside an actix System; the proxy runs on the current
    /// arbiter.
    ///
    /// # Errors
    /// [`SpawnError`] when the worker cannot be started, exits, or does not
    /// become ready within the startup timeout.
    ///
    /// # Examples
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # isolated_workers::contract! { Calc { Ping => () } }
    /// use isolated_workers::{ChildProcess, Worker};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::<Calc, ChildProcess>::spawn(ChildProcess::current_exe("calc")).await?;
    /// worker.send(Ping).await??;
    /// # Ok(()) }
    /// ```
    pub async fn spawn(driver: D) -> Result<Addr<Self>, SpawnError> {
        Self::spawn_with(driver, WorkerOptions::default()).await
    }

    /// [`spawn`](Self::spawn) with explicit options.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_with(driver: D, options: WorkerOptions) -> Result<Addr<Self>, SpawnError> {
        let link = driver.launch::<C>(&options).await?;
        Ok(Self::start_on(link, options))
    }

    fn start_on(link: Link, options: WorkerOptions) -> Addr<Self> {
        let Link {
            stream,
            process,
            dir,
        } = link;
        let pid = process.pid();
        Worker::create(move |ctx| {
            let (recv, send) = SharedStream::split(stream);
            ctx.add_stream(FramedRead::new(
                recv,
                FrameCodec::new(options.max_frame_len),
            ));
            let mut writer = FramedWrite::new(send, FrameCodec::new(options.max_frame_len), ctx);
            // Never pause the actor for a slow reader: the buffer is already
            // bounded by max_in_flight × max_frame_len, and pausing here is
            // how two peers that both write large frames deadlock.
            writer.set_buffer_capacity(0, usize::MAX);
            Worker {
                options,
                state: WorkerState::Running,
                pid: Some(pid),
                writer: Some(writer),
                link: Some(LinkResources { process, _dir: dir }),
                pending: HashMap::new(),
                queue: VecDeque::new(),
                in_flight: 0,
                next_id: 1,
                last_words: None,
                _contract: PhantomData,
            }
        })
    }

    /// Resolves every pending request with `error`.
    fn fail_all(&mut self, error: impl Fn() -> WorkerError) {
        self.queue.clear();
        self.in_flight = 0;
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(error()));
        }
    }

    /// Sends queued requests while there is room in flight.
    fn pump(&mut self) {
        while self.in_flight < self.options.max_in_flight {
            let Some(frame) = self.queue.pop_front() else {
                return;
            };
            let Header::Request { id, .. } = frame.header else {
                continue;
            };
            // Requests abandoned while queued are skipped.
            if let Some(pending) = self.pending.get_mut(&id) {
                pending.sent = true;
                self.in_flight += 1;
                if let Some(writer) = &mut self.writer {
                    writer.write(frame);
                }
            }
        }
    }

    /// Resolves request `id` with `outcome`, freeing its slot.
    fn resolve(&mut self, id: u64, outcome: Result<Bytes, WorkerError>) {
        if let Some(pending) = self.pending.remove(&id) {
            if pending.sent {
                self.in_flight -= 1;
            }
            let _ = pending.reply.send(outcome);
            self.pump();
        }
    }

    /// The connection is gone (EOF, broken frame, write error): learn why
    /// the worker stopped, then fail everything still waiting.
    fn connection_lost(&mut self, detail: Option<String>, ctx: &mut Context<Self>) {
        if self.writer.take().is_none() {
            return; // already handled
        }
        let Some(link) = &mut self.link else {
            return;
        };
        if detail.is_some() {
            // The worker broke the protocol: it cannot be trusted to go on.
            link.process.kill();
        }
        let exited = link.process.exited_within(EXIT_STATUS_WAIT);
        ctx.wait(exited.into_actor(self).map(move |status, act, _| {
            let reason = status
                .map(CrashReason::from_exit_status)
                .unwrap_or(CrashReason::ConnectionLost);
            let message = detail.or_else(|| act.last_words.take());
            if status.is_none() {
                if let Some(link) = &mut act.link {
                    link.process.kill();
                }
            }
            tracing::warn!(pid = ?act.pid, %reason, ?message, "worker crashed");
            if matches!(act.state, WorkerState::Running) {
                act.state = WorkerState::Crashed {
                    reason: reason.clone(),
                    message: message.clone(),
                };
            }
            act.fail_all(|| WorkerError::Crashed {
                reason: reason.clone(),
                message: message.clone(),
                attempt: 1,
            });
        }));
    }

    /// The error a request gets when the worker can no longer take it.
    fn unavailable(&self) -> Option<WorkerError> {
        match &self.state {
            WorkerState::Running => None,
            WorkerState::Closing | WorkerState::Closed => Some(WorkerError::Closed),
            WorkerState::Crashed { reason, message } => Some(WorkerError::Crashed {
                reason: reason.clone(),
                message: message.clone(),
                attempt: 1,
            }),
        }
    }
}

impl<C: Contract, D: Driver> Actor for Worker<C, D> {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.fail_all(|| WorkerError::Closed);
        // Dropping the link kills and reaps the child and removes its directory.
        if let Some(mut link) = self.link.take() {
            link.process.kill();
        }
    }
}

impl<C: Contract, D: Driver> StreamHandler<Result<Frame, FrameError>> for Worker<C, D> {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Context<Self>) {
        let frame = match item {
            Ok(frame) => frame,
            Err(FrameError::Io(e)) => {
                tracing::debug!("reading from the worker failed: {e}");
                return self.connection_lost(None, ctx);
            }
            Err(e) => return self.connection_lost(Some(format!("protocol error: {e}")), ctx),
        };
        match frame.header {
            Header::Reply { id } => self.resolve(id, Ok(frame.payload)),
            Header::Error { id, error } => self.resolve(id, Err(WorkerError::Remote(error))),
            Header::Panicked { message } => self.last_words = Some(message),
            other => {
                let detail = format!("protocol error: unexpected {other:?} from the worker");
                self.connection_lost(Some(detail), ctx)
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The default would stop the actor; a closed or crashed worker keeps
        // its proxy so that later sends get a clear error.
        self.connection_lost(None, ctx);
    }
}

impl<C: Contract, D: Driver> WriteHandler<FrameError> for Worker<C, D> {
    fn error(&mut self, error: FrameError, ctx: &mut Self::Context) -> Running {
        tracing::debug!("writing to the worker failed: {error}");
        self.connection_lost(None, ctx);
        // Stop writing (the actor itself lives on, see `finished`).
        Running::Stop
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}
