//! The proxy over a byte stream (child processes, custom stream drivers):
//! requests become frames, written by actix's framed writer inside the
//! proxy's own context (queued frames coalesce into one write), and replies
//! are read by a `StreamHandler` on the same context, so a request costs no
//! extra task hop. The end of the stream, or a panic the worker reports
//! (at once, before the worker exits), turns into a `Crashed` error for
//! every request still waiting that the worker may have started; those its
//! read mark shows it never read go to a fresh worker instead.

use std::any::Any;
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::counters::{SharedTally, Slot};
use super::phase::Crash;
use super::reply::{Caller, Reply, Returning};
use super::{Link, Tries, Worker};
use crate::config::{CrashPolicy, WorkerOptions};
use crate::contract::{Contract, WorkerMessage};
use crate::driver::process::EXIT_STATUS_WAIT;
use crate::driver::{Driver, ProcessHandle, StreamConnection};
use crate::error::{CrashReason, WorkerError};
use crate::middleware::{Body, Direction, Passage, Side, Typed};
use crate::socket::handshake::Greeting;
use crate::socket::session::Session;
use crate::wire::envelope::Header;
use crate::wire::frame::{Frame, FrameCodec, FrameError};
use crate::wire::stream::{inbound, Inbound, Severable};
use crate::wire::Serializer;

/// Header and length prefixes of a request stay well under this.
const FRAME_OVERHEAD: usize = 256;

/// What the request encoding buffer starts with, and so (by how `BytesMut`
/// grows a buffer still shared) the least it allocates when it must: the
/// payloads of pending requests share it, so small ones are encoded many
/// to an allocation rather than one each.
const SCRATCH_CHUNK: usize = 8 << 10;

/// How often, while requests are pending, the proxy looks for requests
/// whose caller dropped its future, to tell the worker to cancel them.
const ABANDONED_SWEEP: Duration = Duration::from_millis(100);

type Writer = FramedWrite<Frame, Box<dyn AsyncWrite + Unpin>, FrameCodec>;

/// The proxy's state for a worker reached over a byte stream.
pub(super) struct StreamLink {
    /// Tells this connection's events from those of an earlier one.
    link: u64,
    /// Set when the connection is given up: its writer then discards what
    /// is left instead of failing (and reporting a lost connection again).
    severed: Rc<Cell<bool>>,
    /// `None` once the connection is gone.
    writer: Option<Writer>,
    process: Option<ProcessHandle>,
    /// Dropped with the link (the socket directory, for child processes).
    _resources: Vec<Box<dyn Any>>,
    /// Whether the worker's Hello has been checked.
    greeted: bool,
    /// Shared with the replies handed to actix, which attach their callers.
    requests: Rc<RefCell<Requests>>,
    /// Requests waiting for an in-flight slot, oldest first.
    queue: VecDeque<Frame>,
    in_flight: usize,
    /// Request frames written on this connection: the last one's number
    /// (see `Pending::written`).
    written: u64,
    next_id: u64,
    /// Reused for encoding requests, so that large payloads do not cost a
    /// fresh allocation (and its page faults) each time.
    scratch: BytesMut,
    /// When abandoned requests were last looked for.
    last_sweep: Instant,
    /// Told when no request is pending any more (see `Drain`).
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// For a child worker: how to reach the same process again.
    pub(super) session: Option<Session>,
    tally: SharedTally,
}

impl Requests {
    /// Attaches the caller that waits for request `id`.
    pub(super) fn attach(&mut self, id: u64, caller: Box<dyn Caller>) {
        if let Some(pending) = self.pending.get_mut(&id) {
            pending.caller = Some(caller);
        }
    }
}

/// The requests the proxy has accepted and not yet resolved.
#[derive(Default)]
pub(super) struct Requests {
    pending: HashMap<u64, Pending>,
    /// Each pending request's deadline, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
}

struct Pending {
    message: &'static str,
    /// Where its message's counts are.
    counted: Slot,
    timeout: Duration,
    deadline: Instant,
    /// Which try this is; 1 for the first.
    attempt: u32,
    /// The encoded request, kept to send it again should the worker crash
    /// (before reading it, or under a `Retry` policy).
    payload: Bytes,
    /// Shared with the pool that sent it, if one did (see [`Tries`]).
    tries: Option<Tries>,
    /// Who waits for the outcome; `None` for `do_send` (nobody waits, but
    /// the request still runs).
    caller: Option<Box<dyn Caller>>,
    /// Its number among the request frames written on this connection,
    /// from 1; 0 while it waits in the queue.
    written: u64,
    /// `request{message, id, attempt}`, at DEBUG: what is logged about the
    /// request happens in it.
    span: RequestSpan,
}

/// A request's span, boxed, and absent when disabled: a `Span` is five
/// words, and carried inline it made every pending request too big to move
/// cheaply (measured: four more `memcpy` calls per request).
#[derive(Default)]
struct RequestSpan(Option<Box<tracing::Span>>);

impl RequestSpan {
    /// The span, or a disabled one.
    fn get(&self) -> &tracing::Span {
        static NONE: tracing::Span = tracing::Span::none();
        self.0.as_deref().unwrap_or(&NONE)
    }

    /// Keeps `span` if anyone listens to it.
    fn of(span: tracing::Span) -> Self {
        RequestSpan((!span.is_disabled()).then(|| Box::new(span)))
    }

    fn take(&mut self) -> tracing::Span {
        self.0.take().map_or_else(tracing::Span::none, |span| *span)
    }
}

/// A request whose worker crashed, to be sent again to a fresh one.
pub(super) struct Retry {
    message: &'static str,
    counted: Slot,
    payload: Bytes,
    timeout: Duration,
    /// The first try's deadline: retries do not extend it.
    deadline: Instant,
    attempt: u32,
    tries: Option<Tries>,
    caller: Option<Box<dyn Caller>>,
    tally: SharedTally,
}

impl Retry {
    /// Gives up on the request with `error`.
    pub(super) fn fail(self, error: WorkerError) {
        // The try it would have made next: where a pool that sends it on
        // to another member goes on counting.
        if let Some(tries) = &self.tries {
            tries.store(self.attempt, Ordering::Relaxed);
        }
        self.tally.borrow_mut().ended_at(self.counted, false, 0);
        if let Some(caller) = self.caller {
            caller.resolve(Err(error));
        }
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
        static LINK_IDS: AtomicU64 = AtomicU64::new(0);
        let link = LINK_IDS.fetch_add(1, Ordering::Relaxed);
        ctx.add_stream(inbound(connection.reader, options.max_frame_len, link));
        let (io, severed) = Severable::new(connection.writer);
        let mut writer = FramedWrite::new(
            Box::new(io) as Box<dyn AsyncWrite + Unpin>,
            FrameCodec::new(options.max_frame_len),
            ctx,
        );
        // Never pause the actor for a slow reader: the buffer is already
        // bounded by max_in_flight × max_frame_len, and pausing here is how
        // two peers that both write large frames deadlock.
        writer.set_buffer_capacity(0, usize::MAX);
        Self {
            link,
            severed,
            writer: Some(writer),
            process: connection.process,
            _resources: connection.resources,
            greeted: connection.greeted,
            requests: Rc::default(),
            queue: VecDeque::new(),
            in_flight: 0,
            written: 0,
            next_id: 1,
            scratch: BytesMut::with_capacity(SCRATCH_CHUNK),
            last_sweep: Instant::now(),
            drain_waiters: Vec::new(),
            session: connection.session,
            tally,
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
        self.link
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn queued(&self) -> usize {
        self.requests.borrow().pending.len() - self.in_flight
    }

    /// Registers and writes (or queues) one request; the reply resolves
    /// once the worker answers, the deadline passes, or the worker fails.
    pub(super) fn submit<M: WorkerMessage, S: Serializer>(
        &mut self,
        message: &M,
        options: &WorkerOptions,
        typed: Option<Typed<M>>,
        tries: Option<Tries>,
    ) -> Reply<M> {
        let can_send = self.in_flight < options.max_in_flight;
        if !can_send && self.queue.len() >= options.max_queued {
            return Reply::now(Err(WorkerError::Overloaded {
                limit: options.max_queued,
            }));
        }
        if let Err(e) = message.encode::<S>(&mut self.scratch) {
            self.scratch.clear();
            return Reply::now(Err(WorkerError::Unencodable {
                message: M::NAME,
                detail: e.0,
            }));
        }
        let mut payload = self.scratch.split().freeze();
        let middleware = if options.middleware.has_untyped() || typed.is_some() {
            // The id `register` will give it.
            let id = self.next_id;
            let mut passage = Passage::new(
                Side::Host,
                Direction::Outgoing,
                M::NAME,
                id,
                Body::Bytes(&mut payload),
            );
            if let Err(refused) = options.middleware.request(&mut passage) {
                self.next_id += 1; // the id was seen: do not give it again
                let error = WorkerError::Rejected(refused.error);
                let mut passage = Passage::new(
                    Side::Host,
                    Direction::Incoming,
                    M::NAME,
                    id,
                    Body::Failed(&error),
                );
                options.middleware.response_before(refused.at, &mut passage);
                return Reply::now(Err(error));
            }
            Some(Box::new(Returning {
                untyped: options.middleware.clone(),
                typed,
                id,
                sent: Instant::now(),
            }))
        } else {
            None
        };
        if payload.len() + FRAME_OVERHEAD > options.max_frame_len {
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
        let timeout = options.timeout_of(M::NAME);
        let counted = self.tally.borrow_mut().sent(M::NAME, payload.len());
        let written = self.number(can_send);
        let id = self.register(Pending {
            message: M::NAME,
            counted,
            timeout,
            deadline: Instant::now() + timeout,
            // A request a pool sends on from a member that gave up goes on
            // counting where that member stopped.
            attempt: tries
                .as_ref()
                .map_or(1, |tries| tries.load(Ordering::Relaxed)),
            payload: payload.clone(),
            tries,
            caller: None,
            written,
            span: RequestSpan::default(),
        });
        self.send_or_queue(id, M::NAME, payload, can_send);
        Reply::registered(self.requests.clone(), id, M::decode_reply::<S>, middleware)
    }

    /// Adds a request to the table under a fresh id.
    fn register(&mut self, mut pending: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        pending.span = RequestSpan::of(tracing::debug_span!(
            "request",
            message = pending.message,
            id,
            attempt = pending.attempt
        ));
        tracing::trace!(parent: pending.span.get(), queued = pending.written == 0, "sent");
        let mut requests = self.requests.borrow_mut();
        requests.deadlines.insert((pending.deadline, id));
        requests.pending.insert(id, pending);
        id
    }

    /// The number of the request frame about to be written, if `send`;
    /// else 0, for a request that waits in the queue.
    fn number(&mut self, send: bool) -> u64 {
        if !send {
            return 0;
        }
        self.written += 1;
        self.written
    }

    fn send_or_queue(&mut self, id: u64, message: &'static str, payload: Bytes, send: bool) {
        let frame = Frame {
            header: Header::Request {
                id,
                name: Cow::Borrowed(message),
            },
            payload,
        };
        if send {
            self.in_flight += 1;
            self.write(frame);
        } else {
            self.queue.push_back(frame);
        }
    }

    /// How many of the request frames written on this connection the
    /// worker read, by its read mark, if it has one. Only once the worker
    /// is dead is this final: a live one may read more.
    pub(super) fn read_through(&self) -> Option<u64> {
        let mark = self.session.as_ref()?.read_mark()?;
        // The worker writes the mark: believe no more than was written.
        Some(mark.load().min(self.written))
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
        let mut retries = Vec::new();
        for mut pending in self.take_all() {
            let span = pending.span.take();
            // Not read: no handler started it, so it is safe to run anew.
            // (Queued requests, numbered 0, were not even written.)
            let unread =
                read_through.is_some_and(|read| pending.written == 0 || pending.written > read);
            let attempt = match options.crash_policy_of(pending.message) {
                _ if unread => Some(pending.attempt), // not a try: it never ran
                CrashPolicy::Retry { attempts } if pending.attempt <= attempts => {
                    Some(pending.attempt + 1)
                }
                CrashPolicy::Retry { .. } | CrashPolicy::Reject => None,
            };
            match attempt {
                Some(attempt) => {
                    if unread {
                        tracing::debug!(parent: &span, "the worker crashed before reading it");
                    }
                    retries.push(Retry {
                        message: pending.message,
                        counted: pending.counted,
                        payload: pending.payload,
                        timeout: pending.timeout,
                        deadline: pending.deadline,
                        attempt,
                        tries: pending.tries,
                        caller: pending.caller,
                        tally: self.tally.clone(),
                    })
                }
                None => {
                    tracing::debug!(parent: &span, %reason, "the worker crashed");
                    self.tally.borrow_mut().ended_at(pending.counted, false, 0);
                    if let Some(caller) = pending.caller {
                        caller.resolve(Err(WorkerError::Crashed {
                            reason: reason.clone(),
                            message: message.clone(),
                            attempt: pending.attempt,
                        }));
                    }
                }
            }
        }
        self.notify_if_drained();
        retries
    }

    /// Sends a request again, to this (fresh) worker.
    pub(super) fn resubmit(&mut self, retry: Retry, max_in_flight: usize) {
        tracing::debug!(
            message = retry.message,
            attempt = retry.attempt,
            "retrying a request on a fresh worker"
        );
        let send = self.in_flight < max_in_flight;
        self.tally.borrow_mut().resent(retry.payload.len());
        let written = self.number(send);
        let id = self.register(Pending {
            message: retry.message,
            counted: retry.counted,
            timeout: retry.timeout,
            deadline: retry.deadline,
            attempt: retry.attempt,
            payload: retry.payload.clone(),
            tries: retry.tries,
            caller: retry.caller,
            written,
            span: RequestSpan::default(),
        });
        self.send_or_queue(id, retry.message, retry.payload, send);
    }

    fn write(&mut self, frame: Frame) {
        if let Some(writer) = &mut self.writer {
            writer.write(frame);
        }
    }

    /// Resolves every pending request with `error`.
    pub(super) fn fail_all(&mut self, error: impl Fn() -> WorkerError) {
        let tally = self.tally.clone();
        for pending in self.take_all() {
            tally.borrow_mut().ended_at(pending.counted, false, 0);
            tracing::debug!(parent: pending.span.get(), error = %error(), "failed");
            if let Some(caller) = pending.caller {
                caller.resolve(Err(error()));
            }
        }
        self.notify_if_drained();
    }

    /// Takes every request out of the table and the queue, for the caller
    /// to resolve: the worker will answer none of them.
    fn take_all(&mut self) -> impl Iterator<Item = Pending> {
        self.queue.clear();
        self.in_flight = 0;
        std::mem::take(&mut *self.requests.borrow_mut())
            .pending
            .into_values()
    }

    /// Resolves once no request is pending (at once if none is).
    pub(super) fn drained(&mut self) -> impl Future<Output = ()> + 'static {
        let (told, drained) = oneshot::channel();
        self.drain_waiters.push(told);
        self.notify_if_drained();
        async move {
            // A dropped sender (the link is gone) counts as drained too.
            let _ = drained.await;
        }
    }

    fn notify_if_drained(&mut self) {
        if self.requests.borrow().pending.is_empty() {
            for told in self.drain_waiters.drain(..) {
                let _ = told.send(());
            }
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
            // Requests that timed out while queued are skipped.
            let number = self.written + 1;
            if let Some(pending) = self.requests.borrow_mut().pending.get_mut(&id) {
                pending.written = number;
            } else {
                continue;
            }
            self.written = number;
            self.in_flight += 1;
            self.write(frame);
        }
    }

    /// Resolves request `id` with `outcome`, freeing its slot.
    fn resolve(&mut self, id: u64, outcome: Result<Bytes, WorkerError>, max_in_flight: usize) {
        let removed = {
            let mut requests = self.requests.borrow_mut();
            let pending = requests.pending.remove(&id);
            if let Some(pending) = &pending {
                requests.deadlines.remove(&(pending.deadline, id));
            }
            pending
        };
        let Some(pending) = removed else {
            return; // a reply to a request already given up on
        };
        if pending.written > 0 {
            self.in_flight -= 1;
        }
        let received = outcome.as_ref().map_or(0, Bytes::len);
        match &outcome {
            Ok(_) => tracing::debug!(parent: pending.span.get(), bytes = received, "answered"),
            Err(error) => tracing::debug!(parent: pending.span.get(), %error, "failed"),
        }
        self.tally
            .borrow_mut()
            .ended_at(pending.counted, outcome.is_ok(), received);
        if let Some(caller) = pending.caller {
            caller.resolve(outcome);
        }
        self.pump(max_in_flight);
        self.notify_if_drained();
    }

    /// When the proxy next needs to look at its requests: the earliest
    /// deadline, or the next sweep for abandoned requests.
    pub(super) fn next_check(&self) -> Option<Instant> {
        let requests = self.requests.borrow();
        let earliest = requests.deadlines.first()?.0;
        Some(earliest.min(self.last_sweep + ABANDONED_SWEEP))
    }

    /// Times out the requests past their deadline and cancels those whose
    /// caller went away; the worker is told to cancel each one it has.
    pub(super) fn check_requests(&mut self, now: Instant, max_in_flight: usize) {
        let mut expired = Vec::new();
        {
            let requests = self.requests.borrow();
            for &(deadline, id) in &requests.deadlines {
                if deadline > now {
                    break;
                }
                expired.push((id, true));
            }
            if now >= self.last_sweep + ABANDONED_SWEEP {
                self.last_sweep = now;
                let abandoned = requests
                    .pending
                    .iter()
                    .filter(|(_, p)| p.caller.as_ref().is_some_and(|c| c.gone()));
                expired.extend(abandoned.map(|(id, _)| (*id, false)));
            }
        }
        for (id, timed_out) in expired {
            let pending = self
                .requests
                .borrow()
                .pending
                .get(&id)
                .map(|p| (p.written > 0, p.message, p.timeout, p.span.get().clone()));
            let Some((sent, message, after, span)) = pending else {
                continue;
            };
            tracing::debug!(
                parent: &span,
                timed_out,
                "giving up on the request; cancelling it"
            );
            if sent {
                self.write(Frame::bare(Header::Cancel { id }));
            }
            self.resolve(
                id,
                Err(WorkerError::Timeout { after, message }),
                max_in_flight,
            );
        }
    }

    /// Asks the worker to stop serving and exit.
    pub(super) fn shut_down(&mut self) {
        self.write(Frame::bare(Header::Shutdown));
    }

    pub(super) fn process_mut(&mut self) -> Option<&mut ProcessHandle> {
        self.process.as_mut()
    }

    /// The span of request `id`, while it is pending.
    fn span_of(&self, id: u64) -> Option<tracing::Span> {
        let requests = self.requests.borrow();
        requests
            .pending
            .get(&id)
            .map(|pending| pending.span.get().clone())
    }

    /// Whether the worker outlives this host.
    pub(super) fn is_detached(&self) -> bool {
        self.session.as_ref().is_some_and(Session::is_detached)
    }

    /// Stops using the connection (its end or its worker's panic is being
    /// reported); `false` if that was done already.
    fn give_up_connection(&mut self) -> bool {
        let Some(mut writer) = self.writer.take() else {
            return false;
        };
        // Let actix's writer finish (and leave the context) now, without
        // reporting errors of a connection given up.
        self.severed.set(true);
        writer.close();
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

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// The byte-stream link of this phase (serving, closing, or dead).
    fn stream_link(&mut self) -> Option<&mut StreamLink> {
        match self.phase.link_mut() {
            Some(Link::Stream(link)) => Some(link),
            _ => None,
        }
    }

    /// The connection is gone (EOF, broken frame, write error): learn why
    /// the worker stopped, then fail everything still waiting.
    fn connection_lost(&mut self, detail: Option<String>, ctx: &mut Context<Self>) {
        let Some(link) = self.stream_link() else {
            return;
        };
        if !link.give_up_connection() {
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
        ctx.wait(waited.into_actor(self).map(move |exit, act, ctx| {
            let Some(Link::Stream(link)) = act.phase.link_mut() else {
                return;
            };
            // Only a worker known to be dead has read all it ever will.
            let read_through = match exit {
                Some(Some(_)) => link.read_through(),
                _ => None,
            };
            let reason = match exit {
                Some(Some(ended)) => ended.reason(),
                Some(None) => {
                    // Connection gone, process still there: end it.
                    link.kill();
                    CrashReason::ConnectionLost
                }
                None => CrashReason::ConnectionLost,
            };
            act.report_crash(reason, detail, read_through, ctx);
        }));
    }

    /// The worker reported a panic: its requests fail `Crashed` at once,
    /// without waiting for it to exit (it may still be printing the
    /// panic's backtrace). It gets the close grace to exit by itself.
    fn panicked(&mut self, message: String, ctx: &mut Context<Self>) {
        let grace = self.options.close_grace;
        let Some(link) = self.stream_link() else {
            return;
        };
        if !link.give_up_connection() {
            return;
        }
        // The worker's actor is gone: whatever the worker reads from now on
        // it cannot start, so its read mark can be trusted already.
        let read_through = link.read_through();
        // Out of the link, which a restart drops, killing its process.
        if let Some(process) = link.process.take() {
            actix_rt::spawn(async move {
                // Dropped, the handle kills the process if it is still there.
                let _ = process.exited_within(grace).await;
            });
        }
        self.report_crash(CrashReason::Panic, Some(message), read_through, ctx);
    }

    /// Fails (or keeps for sending again) the requests of a worker that
    /// died, which read `read_through` of them, if that is known.
    fn report_crash(
        &mut self,
        reason: CrashReason,
        message: Option<String>,
        read_through: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        let serving = self.phase.is_serving();
        let Some(Link::Stream(link)) = self.phase.link_mut() else {
            return;
        };
        let retries = link.crashed(&self.options, &reason, &message, read_through);
        if serving {
            tracing::warn!(contract = C::NAME, pid = ?link.pid(), %reason, ?message, "worker crashed");
            self.crashed(Crash { reason, message });
            return self.after_crash(ctx, retries);
        }
        let error = self.unavailable().unwrap_or(WorkerError::Closed);
        for retry in retries {
            retry.fail(error.clone());
        }
    }
}

impl<C: Contract, D: Driver<C>> StreamHandler<Inbound> for Worker<C, D> {
    fn handle(&mut self, Inbound { link, event }: Inbound, ctx: &mut Context<Self>) {
        let current =
            matches!(self.phase.link(), Some(Link::Stream(current)) if current.link == link);
        if !current {
            // A connection already given up: only its events still count.
            return self.events.given_up::<C::Serializer>(link, event);
        }
        if !matches!(event, Some(Ok(_))) {
            self.events.read_to_end(link);
        }
        let Some(item) = event else {
            return self.connection_lost(None, ctx);
        };
        let max_in_flight = self.options.max_in_flight;
        let frame = match item {
            Ok(frame) => frame,
            Err(FrameError::Io(e)) => {
                tracing::debug!("reading from the worker failed: {e}");
                return self.connection_lost(None, ctx);
            }
            Err(e) => return self.connection_lost(Some(format!("protocol error: {e}")), ctx),
        };
        let Some(Link::Stream(link)) = self.phase.link_mut() else {
            return;
        };
        if !link.greeted {
            return match Greeting::new::<C>().next(frame.header) {
                Ok(()) => link.greeted = true,
                Err(why) => self.connection_lost(Some(format!("handshake failed: {why}")), ctx),
            };
        }
        match frame.header {
            Header::Reply { id } => link.resolve(id, Ok(frame.payload), max_in_flight),
            Header::Error { id, error } => {
                link.resolve(id, Err(WorkerError::Remote(error)), max_in_flight)
            }
            Header::Unserved { id, why } => {
                link.resolve(id, Err(WorkerError::Protocol(why)), max_in_flight)
            }
            Header::Panicked { message } => self.panicked(message, ctx),
            Header::Event => {
                if let Err(e) = self.events.received::<C::Serializer>(&frame.payload) {
                    let detail = format!("protocol error: undecodable event: {e}");
                    self.connection_lost(Some(detail), ctx);
                }
            }
            Header::Log {
                request,
                level,
                target,
                message,
            } => {
                let span = request.and_then(|id| link.span_of(id));
                let pid = link.pid();
                forwarded(span.as_ref(), level, pid, &target, &message);
            }
            Header::Listening(point) => {
                if let Some(session) = &mut link.session {
                    session.listening_at(point);
                }
                self.phase.answered(true);
            }
            other => {
                let detail = format!("protocol error: unexpected {other:?} from the worker");
                self.connection_lost(Some(detail), ctx)
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The end of a connection arrives as an event (its own `None`); the
        // default here would stop the actor, which outlives its connections.
    }
}

impl<C: Contract, D: Driver<C>> WriteHandler<FrameError> for Worker<C, D> {
    fn error(&mut self, error: FrameError, ctx: &mut Self::Context) -> Running {
        tracing::debug!("writing to the worker failed: {error}");
        // Handled once actix's writer is done with this call: closing the
        // writer from inside it would borrow it twice.
        ctx.spawn(
            fut::ready(()).map(|(), worker: &mut Self, ctx| worker.connection_lost(None, ctx)),
        );
        // Stop writing (the actor itself lives on, see `finished`).
        Running::Stop
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

/// Logs a `tracing` event the worker forwarded, in the span of the request
/// it was emitted for (if that request is still pending here).
fn forwarded(
    span: Option<&tracing::Span>,
    level: u8,
    pid: Option<u32>,
    target: &str,
    message: &str,
) {
    let parent = span.and_then(tracing::Span::id);
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(
                target: "isolated_workers::worker",
                parent: parent.clone(),
                $level,
                pid,
                worker_target = target,
                "{message}"
            )
        };
    }
    match level {
        1 => at!(tracing::Level::ERROR),
        2 => at!(tracing::Level::WARN),
        3 => at!(tracing::Level::INFO),
        4 => at!(tracing::Level::DEBUG),
        _ => at!(tracing::Level::TRACE),
    }
}
