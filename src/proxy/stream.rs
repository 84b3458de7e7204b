//! The proxy over a byte stream (child processes, custom stream drivers):
//! requests become frames, written by actix's framed writer inside the
//! proxy's own context (queued frames coalesce into one write), and replies
//! are read by a `StreamHandler` on the same context, so a request costs no
//! extra task hop. The end of the stream turns into a `Crashed` error for
//! every request still waiting.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use super::{Accepted, Link, Worker, WorkerState};
use crate::config::WorkerOptions;
use crate::contract::{Contract, WorkerMessage};
use crate::driver::{Driver, ProcessHandle, StreamConnection};
use crate::error::{CrashReason, WorkerError};
use crate::wire::envelope::{Header, Hello};
use crate::wire::frame::{Frame, FrameCodec, FrameError};
use crate::wire::{Serializer, PROTOCOL_VERSION};

/// How long after the connection ends the proxy waits to learn the child's
/// exit status before reporting the crash without it.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);

/// Header and length prefixes of a request stay well under this.
const FRAME_OVERHEAD: usize = 256;

type Writer = FramedWrite<Frame, Box<dyn AsyncWrite + Unpin>, FrameCodec>;

/// The proxy's state for a worker reached over a byte stream.
pub(super) struct StreamLink {
    /// `None` once the connection is gone.
    writer: Option<Writer>,
    process: Option<ProcessHandle>,
    /// Dropped with the link (the socket directory, for child processes).
    _resources: Vec<Box<dyn Any>>,
    /// Whether the worker's Hello has been checked.
    greeted: bool,
    pending: HashMap<u64, Pending>,
    /// Requests waiting for an in-flight slot, oldest first.
    queue: VecDeque<Frame>,
    in_flight: usize,
    next_id: u64,
    /// The message of a `Panicked` frame, reported with the crash.
    last_words: Option<String>,
}

/// A request the proxy has accepted and not yet resolved.
struct Pending {
    message: &'static str,
    reply: oneshot::Sender<Result<Bytes, WorkerError>>,
    /// Written to the worker (as opposed to waiting in the queue).
    sent: bool,
}

impl StreamLink {
    pub(super) fn start<A>(
        connection: StreamConnection,
        options: &WorkerOptions,
        ctx: &mut Context<A>,
    ) -> Self
    where
        A: Actor<Context = Context<A>>
            + StreamHandler<Result<Frame, FrameError>>
            + WriteHandler<FrameError>,
    {
        let codec = || FrameCodec::new(options.max_frame_len);
        ctx.add_stream(FramedRead::new(connection.reader, codec()));
        let mut writer = FramedWrite::new(connection.writer, codec(), ctx);
        // Never pause the actor for a slow reader: the buffer is already
        // bounded by max_in_flight × max_frame_len, and pausing here is how
        // two peers that both write large frames deadlock.
        writer.set_buffer_capacity(0, usize::MAX);
        Self {
            writer: Some(writer),
            process: connection.process,
            _resources: connection.resources,
            greeted: connection.greeted,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: 0,
            next_id: 1,
            last_words: None,
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessHandle::pid)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn queued(&self) -> usize {
        self.pending.len() - self.in_flight
    }

    /// Registers and writes (or queues) one request; returns its id and the
    /// channel its outcome arrives on.
    pub(super) fn submit<M: WorkerMessage, S: Serializer>(
        &mut self,
        message: &M,
        options: &WorkerOptions,
    ) -> Result<(u64, oneshot::Receiver<Result<Bytes, WorkerError>>), WorkerError> {
        let can_send = self.in_flight < options.max_in_flight;
        if !can_send && self.queue.len() >= options.max_queued {
            return Err(WorkerError::Overloaded {
                limit: options.max_queued,
            });
        }
        let mut payload = BytesMut::new();
        message
            .encode::<S>(&mut payload)
            .map_err(|e| WorkerError::Codec {
                what: format!("encode `{}`", M::NAME),
                detail: e.0,
            })?;
        if payload.len() + FRAME_OVERHEAD > options.max_frame_len {
            return Err(WorkerError::TooLarge {
                message: M::NAME,
                size: payload.len(),
                limit: options.max_frame_len,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame {
            header: Header::Request {
                id,
                name: M::NAME.to_owned(),
            },
            payload: payload.freeze(),
        };
        let (reply, outcome) = oneshot::channel();
        self.pending.insert(
            id,
            Pending {
                message: M::NAME,
                reply,
                sent: can_send,
            },
        );
        if can_send {
            self.in_flight += 1;
            self.write(frame);
        } else {
            self.queue.push_back(frame);
        }
        Ok((id, outcome))
    }

    fn write(&mut self, frame: Frame) {
        if let Some(writer) = &mut self.writer {
            writer.write(frame);
        }
    }

    /// Resolves every pending request with `error`.
    pub(super) fn fail_all(&mut self, error: impl Fn() -> WorkerError) {
        self.queue.clear();
        self.in_flight = 0;
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(error()));
        }
    }

    /// Sends queued requests while there is room in flight.
    fn pump(&mut self, max_in_flight: usize) {
        while self.in_flight < max_in_flight {
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
                self.write(frame);
            }
        }
    }

    /// Resolves request `id` with `outcome`, freeing its slot.
    fn resolve(&mut self, id: u64, outcome: Result<Bytes, WorkerError>, max_in_flight: usize) {
        if let Some(pending) = self.pending.remove(&id) {
            if pending.sent {
                self.in_flight -= 1;
            }
            let _ = pending.reply.send(outcome);
            self.pump(max_in_flight);
        }
    }

    /// Asks the worker to stop serving and exit.
    pub(super) fn shut_down(&mut self) {
        self.write(Frame::bare(Header::Shutdown));
    }

    /// Kills the worker process, if there is one.
    pub(super) fn kill(&mut self) {
        if let Some(process) = &mut self.process {
            process.kill();
        }
    }

    /// Resolves once the worker process has exited (`true`), or after
    /// `limit` (`false`). Without a process, at once with `true`.
    pub(super) fn exited_within(
        &self,
        limit: Duration,
    ) -> impl std::future::Future<Output = bool> + 'static {
        let exited = self.process.as_ref().map(|p| p.exited_within(limit));
        async move {
            match exited {
                Some(exited) => exited.await.is_some(),
                None => true,
            }
        }
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    pub(super) fn stream_link(&mut self) -> Option<&mut StreamLink> {
        match &mut self.link {
            Link::Stream(link) => Some(link),
            _ => None,
        }
    }

    /// The connection is gone (EOF, broken frame, write error): learn why
    /// the worker stopped, then fail everything still waiting.
    fn connection_lost(&mut self, detail: Option<String>, ctx: &mut Context<Self>) {
        let Some(link) = self.stream_link() else {
            return;
        };
        if link.writer.take().is_none() {
            return; // already handled
        }
        if detail.is_some() {
            // The worker broke the protocol: it cannot be trusted to go on.
            link.kill();
        }
        let exit = link
            .process
            .as_ref()
            .map(|p| p.exited_within(EXIT_STATUS_WAIT));
        let waited = async move {
            match exit {
                Some(exit) => Some(exit.await),
                None => None,
            }
        };
        ctx.wait(waited.into_actor(self).map(move |exit, act, _| {
            let Link::Stream(link) = &mut act.link else {
                return;
            };
            let last_words = link.last_words.take();
            let reason = match exit {
                Some(Some(status)) => CrashReason::from_exit_status(status),
                Some(None) => {
                    // Connection gone, process still there: end it.
                    link.kill();
                    CrashReason::ConnectionLost
                }
                None if last_words.is_some() => CrashReason::Panic,
                None => CrashReason::ConnectionLost,
            };
            let message = detail.or(last_words);
            link.fail_all(|| WorkerError::Crashed {
                reason: reason.clone(),
                message: message.clone(),
                attempt: 1,
            });
            if act.state == WorkerState::Running {
                tracing::warn!(contract = C::NAME, pid = ?link.pid(), %reason, ?message, "worker crashed");
                act.state = WorkerState::Crashed { reason, message };
            }
        }));
    }

    /// Checks the Hello a stream worker opens with (drivers that
    /// authenticate the peer check it themselves).
    fn check_hello(hello: &Hello) -> Result<(), String> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "the worker speaks protocol version {}, the host {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }
        if hello.contract != C::NAME || hello.contract_version != C::VERSION {
            return Err(format!(
                "the worker serves contract `{}` v{}, the host expects `{}` v{}",
                hello.contract,
                hello.contract_version,
                C::NAME,
                C::VERSION
            ));
        }
        if hello.serializer != <C::Serializer as Serializer>::NAME {
            return Err(format!(
                "the worker encodes with `{}`, the host with `{}`",
                hello.serializer,
                <C::Serializer as Serializer>::NAME
            ));
        }
        Ok(())
    }
}

impl<C: Contract, D: Driver<C>> StreamHandler<Result<Frame, FrameError>> for Worker<C, D> {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Context<Self>) {
        let max_in_flight = self.options.max_in_flight;
        let frame = match item {
            Ok(frame) => frame,
            Err(FrameError::Io(e)) => {
                tracing::debug!("reading from the worker failed: {e}");
                return self.connection_lost(None, ctx);
            }
            Err(e) => return self.connection_lost(Some(format!("protocol error: {e}")), ctx),
        };
        let Some(link) = self.stream_link() else {
            return;
        };
        if !link.greeted {
            let verdict = match &frame.header {
                Header::Hello(hello) => Self::check_hello(hello),
                other => Err(format!("expected a hello, got {other:?}")),
            };
            return match verdict {
                Ok(()) => link.greeted = true,
                Err(why) => self.connection_lost(Some(format!("handshake failed: {why}")), ctx),
            };
        }
        match frame.header {
            Header::Reply { id } => link.resolve(id, Ok(frame.payload), max_in_flight),
            Header::Error { id, error } => {
                link.resolve(id, Err(WorkerError::Remote(error)), max_in_flight)
            }
            Header::Panicked { message } => link.last_words = Some(message),
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

impl<C: Contract, D: Driver<C>> WriteHandler<FrameError> for Worker<C, D> {
    fn error(&mut self, error: FrameError, ctx: &mut Self::Context) -> Running {
        tracing::debug!("writing to the worker failed: {error}");
        self.connection_lost(None, ctx);
        // Stop writing (the actor itself lives on, see `finished`).
        Running::Stop
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

/// Tells the proxy that nobody waits for request `id` any more, so that the
/// worker is told to cancel it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(super) struct Abandon {
    pub(super) id: u64,
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Abandon {
    type Response = ();

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) {
        let max_in_flight = worker.options.max_in_flight;
        let Some(link) = worker.stream_link() else {
            return;
        };
        let Some(pending) = link.pending.get(&self.id) else {
            return;
        };
        tracing::debug!(
            id = self.id,
            message = pending.message,
            "request abandoned; cancelling it"
        );
        if pending.sent {
            link.write(Frame::bare(Header::Cancel { id: self.id }));
        }
        // Nobody listens any more; resolving only frees the slot.
        link.resolve(self.id, Err(WorkerError::Closed), max_in_flight);
    }
}
