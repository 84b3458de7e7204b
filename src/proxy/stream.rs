//! The proxy over a byte stream (child processes, custom stream drivers):
//! the transport for the request table (`requests.rs`). Requests become
//! frames, written by the connection's frame writer (`wire::writer`) inside
//! the proxy's own context (queued frames coalesce into one vectored write,
//! large payloads uncopied), and replies are read by a
//! `StreamHandler` on the same context, so a request costs no extra task
//! hop. The end of the stream, or a panic the worker reports (at once,
//! before the worker exits), is a crash: the table fails every request
//! still waiting that the worker may have started, and carries those its
//! read mark shows it never read over to a fresh worker.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::io::WriteHandler;
use actix::prelude::*;
use bytes::{Bytes, BytesMut};

use super::counters::SharedTally;
use super::reply::{Reply, Returning};
use super::requests::{
    deadline_in, Attach, Caller, Carried, Expired, Held, Limits, Request, Requests,
};
use super::Tries;
use crate::config::WorkerOptions;
use crate::contract::{Contract, WorkerMessage};
use crate::driver::{ProcessHandle, StreamConnection};
use crate::error::{CrashReason, HandshakeError, WorkerError};
use crate::middleware::trip::{Leg, Trip, Untyped};
use crate::middleware::{Body, Typed};
use crate::socket::handshake::Greeting;
use crate::socket::session::Session;
use crate::wire::envelope::Header;
use crate::wire::frame::{Descriptors, Frame, FrameError, MAX_OVERHEAD};
use crate::wire::passing;
use crate::wire::stream::{inbound, Inbound};
use crate::wire::writer::FrameWriter;
use crate::wire::Serializer;

/// What the request encoding buffer starts with, and so (by how `BytesMut`
/// grows a buffer still shared) the least it allocates when it must: the
/// payloads of pending requests share it, so small ones are encoded many
/// to an allocation rather than one each.
const SCRATCH_CHUNK: usize = 8 << 10;

/// The proxy's state for a worker reached over a byte stream.
pub(super) struct StreamLink {
    /// Tells this connection's events from those of an earlier one.
    connection: u64,
    /// `None` once the connection is gone.
    writer: Option<FrameWriter>,
    /// Whether the connection passes descriptors (shared memory in a
    /// request goes as one then, see `SharedBytes`).
    passes_descriptors: bool,
    process: Option<ProcessHandle>,
    /// Dropped with the link (the socket directory, for child processes).
    _resources: Vec<Box<dyn Any>>,
    /// Whether the worker's Hello has been checked.
    greeted: bool,
    /// Shared with the replies handed to actix, which attach their callers.
    /// (The table numbers the requests it puts in flight: over this
    /// connection, that is the number of each request frame, which the
    /// worker's read mark counts.)
    requests: Rc<RefCell<Requests<Encoded>>>,
    /// Reused for encoding requests, so that large payloads do not cost a
    /// fresh allocation (and its page faults) each time.
    scratch: BytesMut,
    /// For a child worker: how to reach the same process again.
    pub(super) session: Option<Session>,
}

/// What the byte-stream link keeps in the table per request.
pub(super) struct Encoded {
    /// The encoded request: written when it leaves the queue, and kept to
    /// send it again should the worker crash (before reading it, or under a
    /// `Retry` policy).
    payload: Bytes,
    /// The descriptors of the shared memory the payload refers to.
    descriptors: Descriptors,
    /// Shared with the pool that sent it, if one did (see [`Tries`]).
    tries: Option<Tries>,
    /// Who waits for the outcome, once attached; `None` for `do_send`
    /// (nobody waits, but the request still runs).
    caller: Option<Box<dyn Caller>>,
}

impl Held for Encoded {
    /// A caller that drops its future leaves a closed reply channel, which
    /// only a look finds.
    const SWEPT: bool = true;

    fn abandoned(&self) -> bool {
        self.caller.as_ref().is_some_and(|caller| caller.hung_up())
    }
}

impl Attach for RefCell<Requests<Encoded>> {
    fn attach(&self, id: u64, caller: Box<dyn Caller>) {
        if let Some(held) = self.borrow_mut().held_mut(id) {
            held.caller = Some(caller);
        }
    }
}

/// A request whose worker crashed, to be sent again to a fresh one.
pub(super) struct Retry(Carried<Encoded>);

impl Retry {
    /// Gives up on the request with `error`.
    pub(super) fn fail(self, error: WorkerError) {
        let request = self.0.give_up();
        // The try it would have made next: where a pool that sends it on
        // to another member goes on counting.
        if let Some(tries) = &request.held.tries {
            tries.store(request.attempt, Ordering::Relaxed);
        }
        if let Some(caller) = request.held.caller {
            caller.resolve(Err(error));
        }
    }
}

/// The frame of request `id`, as `held`.
fn request_frame(id: u64, message: &'static str, held: &Encoded) -> Frame {
    Frame {
        header: Header::Request {
            id,
            name: Cow::Borrowed(message),
        },
        payload: held.payload.clone(),
        descriptors: held.descriptors.clone(),
    }
}

impl StreamLink {
    pub(super) fn start<A>(
        connection: StreamConnection,
        options: &WorkerOptions,
        tally: SharedTally,
        ctx: &mut Context<A>,
    ) -> Self
    where
        A: Actor<Context = Context<A>> + StreamHandler<Inbound> + WriteHandler<FrameError>,
    {
        static CONNECTION_IDS: AtomicU64 = AtomicU64::new(0);
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        ctx.add_stream(inbound(connection.reader, options.max_frame_len, id));
        // It never pauses the actor for a slow reader: what it queues is
        // already bounded by max_in_flight × max_frame_len, and pausing
        // here is how two peers that both write large frames deadlock.
        let passes_descriptors = connection.writer.passes_descriptors();
        let writer = FrameWriter::new(connection.writer, options.max_frame_len, None, ctx);
        Self {
            connection: id,
            writer: Some(writer),
            passes_descriptors,
            process: connection.process,
            _resources: connection.resources,
            greeted: connection.greeted,
            requests: Rc::new(RefCell::new(Requests::new(Limits::of(options), tally))),
            scratch: BytesMut::with_capacity(SCRATCH_CHUNK),
            session: connection.session,
        }
    }

    /// Asks the worker to listen for a host (`Disconnect`, `Detach`); it
    /// answers `Listening` (see `Phase::Asking`).
    pub(super) fn ask_to_listen(&mut self, header: Header) {
        self.write(Frame::bare(header));
    }

    /// Closes the connection gracefully, so that the worker sees it end,
    /// and returns the worker process and session, which outlive it.
    pub(super) fn hang_up(mut self) -> (Option<ProcessHandle>, Option<Session>) {
        self.fail_all(|| WorkerError::Disconnected);
        if let Some(mut writer) = self.writer.take() {
            writer.close();
        }
        (self.process.take(), self.session.take())
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessHandle::pid)
    }

    /// Tells this connection's frames from an earlier one's.
    pub(super) fn id(&self) -> u64 {
        self.connection
    }

    pub(super) fn in_flight(&self) -> usize {
        self.requests.borrow().in_flight()
    }

    pub(super) fn queued(&self) -> usize {
        self.requests.borrow().queued()
    }

    /// Registers and writes (or queues) one request; the reply resolves
    /// once the worker answers, `timeout` passes, or the worker fails.
    pub(super) fn submit<M: WorkerMessage, S: Serializer>(
        &mut self,
        message: &M,
        options: &WorkerOptions,
        timeout: Duration,
        typed: Option<Typed<M>>,
        tries: Option<Tries>,
    ) -> Reply<M> {
        if let Err(overloaded) = self.requests.borrow().admit() {
            return Reply::now(Err(overloaded));
        }
        let scratch = &mut self.scratch;
        let (encoded, descriptors) =
            passing::encoding(self.passes_descriptors, || message.encode::<S>(scratch));
        if let Err(e) = encoded {
            self.scratch.clear();
            return Reply::now(Err(WorkerError::Unencodable {
                message: M::NAME,
                detail: e.0,
            }));
        }
        let mut payload = self.scratch.split().freeze();
        let middleware = if options.middleware.has_untyped() || typed.is_some() {
            // The id `register` will give it.
            let id = self.requests.borrow().next_id();
            // It went through the host's typed middleware, if any
            // (`Worker::request` answered otherwise).
            let mut trip = Trip::through(Leg::HostTyped, None);
            let request = Untyped::new(M::NAME, id, Body::Bytes(&mut payload));
            if let Err(refused) = trip.pass_in(Leg::HostUntyped, &options.middleware, request) {
                self.requests.borrow_mut().skip_id(); // seen: never give it again
                let error = Leg::HostUntyped.refusal(refused.error);
                let back = Untyped::new(M::NAME, id, Body::Failed(&error));
                trip.pass_out(Leg::HostUntyped, &options.middleware, back);
                return Reply::now(Err(error));
            }
            Some(Box::new(Returning {
                untyped: options.middleware.clone(),
                typed,
                id,
                trip,
            }))
        } else {
            None
        };
        if payload.len() + MAX_OVERHEAD > options.max_frame_len {
            let error = WorkerError::TooLarge {
                message: M::NAME,
                size: payload.len(),
                limit: options.max_frame_len,
            };
            if let Some(middleware) = &middleware {
                middleware.untyped(&mut Err(error.clone()));
            }
            return Reply::now(Err(error));
        }
        let request = Request {
            message: M::NAME,
            timeout,
            deadline: deadline_in(timeout),
            // A request a pool sends on from a member that gave up goes on
            // counting where that member stopped.
            attempt: tries
                .as_ref()
                .map_or(1, |tries| tries.load(Ordering::Relaxed)),
            held: Encoded {
                payload,
                descriptors,
                tries,
                caller: None,
            },
        };
        let size = request.held.payload.len();
        let frame = request_frame(0, M::NAME, &request.held);
        let (id, send) = self.requests.borrow_mut().register(request, size);
        if send {
            self.write(frame.numbered(id));
        }
        Reply::registered(self.requests.clone(), id, M::decode_reply::<S>, middleware)
    }

    /// How many of the request frames written on this connection the
    /// worker read, by its read mark, if it has one. Only once the worker
    /// is dead is this final: a live one may read more.
    pub(super) fn read_through(&self) -> Option<u64> {
        let mark = self.session.as_ref()?.read_mark()?;
        // The worker writes the mark: believe no more than was written.
        Some(mark.load().min(self.requests.borrow().started()))
    }

    /// The worker crashed: resolves each request `Crashed`, except those
    /// returned for a fresh worker: those the worker never read (by
    /// `read_through`, the read mark of the dead worker; `None` without
    /// one), as they are, and those their crash policy retries, as their
    /// next attempt.
    pub(super) fn crashed(
        &mut self,
        options: &WorkerOptions,
        reason: &CrashReason,
        message: &Option<String>,
        read_through: Option<u64>,
    ) -> Vec<Retry> {
        let policy = |message: &str| options.crash_policy_of(message);
        let crash = (self.requests.borrow_mut()).crashed(reason, message, policy, read_through);
        for (held, error) in crash.failed {
            if let Some(caller) = held.caller {
                caller.resolve(Err(error));
            }
        }
        crash.carried.into_iter().map(Retry).collect()
    }

    /// Sends a request again, to this (fresh) worker.
    pub(super) fn resubmit(&mut self, retry: Retry) {
        let frame = request_frame(0, retry.0.request.message, &retry.0.request.held);
        let size = retry.0.request.held.payload.len();
        let (id, send) = (self.requests.borrow_mut()).resubmit(retry.0, size);
        if send {
            self.write(frame.numbered(id));
        }
    }

    fn write(&mut self, frame: Frame) {
        if let Some(writer) = &mut self.writer {
            writer.write(frame);
        }
    }

    /// Resolves every pending request with `error`.
    pub(super) fn fail_all(&mut self, error: impl Fn() -> WorkerError) {
        let error = error();
        let failed = self.requests.borrow_mut().fail_all(&error);
        for held in failed {
            if let Some(caller) = held.caller {
                caller.resolve(Err(error.clone()));
            }
        }
    }

    /// Resolves once no request is pending (at once if none is).
    pub(super) fn drained(&mut self) -> impl Future<Output = ()> + 'static {
        self.requests.borrow_mut().drained()
    }

    /// Writes the queued requests the table lets go, while slots are free.
    fn pump(&mut self) {
        let mut requests = self.requests.borrow_mut();
        while let Some((id, request)) = requests.start_next() {
            let frame = request_frame(id, request.message, &request.held);
            if let Some(writer) = &mut self.writer {
                writer.write(frame);
            }
        }
    }

    /// Resolves request `id` with `outcome`, freeing its slot.
    pub(super) fn resolve(&mut self, id: u64, outcome: Result<Bytes, WorkerError>) {
        let answered = outcome.as_ref().map(Bytes::len);
        let Some(held) = self.requests.borrow_mut().resolve(id, answered) else {
            return; // a reply to a request already given up on
        };
        self.pump();
        if let Some(caller) = held.caller {
            caller.resolve(outcome);
        }
    }

    /// When the proxy next needs to look at its requests: the earliest
    /// deadline, or the next sweep for abandoned requests.
    pub(super) fn next_check(&self) -> Option<Instant> {
        self.requests.borrow().next_check()
    }

    /// Times out the requests past their deadline and cancels those whose
    /// caller went away; the worker is told to cancel each one it has.
    pub(super) fn check_requests(&mut self, now: Instant) {
        let expired = self.requests.borrow_mut().expire(now);
        for Expired {
            id,
            in_flight,
            error,
            held,
        } in expired
        {
            if in_flight {
                self.write(Frame::bare(Header::Cancel { id }));
            }
            if let Some(caller) = held.caller {
                caller.resolve(Err(error));
            }
        }
        self.pump();
    }

    /// Asks the worker to stop serving and exit.
    pub(super) fn shut_down(&mut self) {
        self.write(Frame::bare(Header::Shutdown));
    }

    /// The worker process, if the worker is one (and it was not taken).
    pub(super) fn process(&self) -> Option<&ProcessHandle> {
        self.process.as_ref()
    }

    /// Takes the worker process out of the link, to let it end on its own.
    pub(super) fn take_process(&mut self) -> Option<ProcessHandle> {
        self.process.take()
    }

    /// Whether the worker's Hello has been checked.
    pub(super) fn greeted(&self) -> bool {
        self.greeted
    }

    /// Checks the worker's first frame, its Hello.
    pub(super) fn greet<C: Contract>(&mut self, first: Header) -> Result<(), HandshakeError> {
        Greeting::new::<C>().next(first)?;
        self.greeted = true;
        Ok(())
    }

    pub(super) fn process_mut(&mut self) -> Option<&mut ProcessHandle> {
        self.process.as_mut()
    }

    /// The span of request `id`, while it is pending.
    pub(super) fn span_of(&self, id: u64) -> Option<tracing::Span> {
        self.requests.borrow().span_of(id).cloned()
    }

    /// Whether the worker outlives this host.
    pub(super) fn is_detached(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_detached)
    }

    /// Stops using the connection (its end or its worker's panic is being
    /// reported); `false` if that was done already.
    pub(super) fn give_up_connection(&mut self) -> bool {
        let Some(mut writer) = self.writer.take() else {
            return false;
        };
        // The writer leaves the context now, without reporting errors of a
        // connection given up.
        writer.sever();
        true
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
