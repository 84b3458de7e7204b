//! The worker's end of the connection: an actor that reads requests,
//! dispatches each to the user's actor concurrently, and writes the
//! replies, with the worker's forwarded logs and events before them. How
//! the worker ends is [`exit`](super::exit); which host it serves, and
//! what it does when that host goes, is [`reattach`](super::reattach).

use std::pin::Pin;
use std::task::Poll;

use super::events::Outbox;
use super::exit::{Ending, PROTOCOL_EXIT_CODE};
use super::forward::Record;
use super::inbox::Inbox;
use super::reattach::{Host, Leaving, Listener};
use super::routes::{Outcome, Routes};
use crate::error::{ProtocolFailure, WorkerError};
use crate::ids::{IdMap, IdSet};
use crate::middleware::trip::{Leg, Trip, Untyped};
use crate::middleware::{Body, Middlewares};
use crate::socket::read_mark::ReadMark;
use crate::wire::envelope::{Header, Hello};
use crate::wire::frame::{Frame, FrameError, MAX_OVERHEAD};
use crate::wire::passing;
use crate::wire::stream::{inbound, Inbound, ReadEnd, WriteEnd};
use crate::wire::writer::FrameWriter;
use crate::wire::Serializer;
use actix::io::WriteHandler;
use actix::prelude::*;
use bytes::BytesMut;
use futures::future::{AbortHandle, Abortable, Aborted, LocalBoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

/// The worker's end of the connection, as an actor (see the module doc).
pub(crate) struct Server<A: Actor, S> {
    /// The user's actor; dropped to make it stop (actix stops an actor once
    /// its last address is gone, running its `stopping`/`stopped` hooks).
    pub(super) actor: Option<Inbox<A>>,
    routes: Routes<A, S>,
    /// The host connection: served, parked, or stopping.
    pub(super) host: Host,
    /// The id the next host connection gets.
    next_link: u64,
    /// What this worker opens each connection with.
    pub(super) hello: Hello,
    /// Where hosts reach a worker process again, once it listens.
    pub(super) listener: Listener,
    /// What kind of worker this is, as far as its end goes.
    pub(super) ending: Ending,
    /// The largest frame either side may send.
    max_frame_len: usize,
    /// The worker side's middleware.
    middleware: Middlewares,
    /// The worker's `tracing` events to forward, if the host wants them.
    records: Option<mpsc::Receiver<Record>>,
    /// Counts the current connection's requests read, for the host to tell
    /// after a crash which ones no handler can have started.
    read_mark: Option<ReadMark>,
    /// The events the worker emitted, waiting to be written.
    pub(super) outbox: Outbox,
    /// Requests handed to the actor since its context was last polled,
    /// each polled once right after that poll (see [`Fresh`]).
    fresh: Vec<Fresh>,
    /// Requests still being handled after that first poll. One set polled
    /// as one item of the context, so that only the requests whose reply
    /// is ready are polled.
    running: FuturesUnordered<InProgress>,
    /// How to drop a running request when the host cancels it.
    cancels: IdMap<AbortHandle>,
    /// Chunked requests whose first chunk was read (and counted by the
    /// read mark then), not yet whole.
    begun: IdSet,
    /// Reused for encoding replies.
    scratch: BytesMut,
    /// What the process exits with once the server stops.
    pub(super) exit_code: i32,
    /// The user's actor's context, run by this server's own task (see
    /// [`Dispatcher`]); `None` once it ended.
    actor_task: Option<LocalBoxFuture<'static, ()>>,
    /// Requests were read since the last dispatch (see [`AfterReading`]).
    read_since_dispatch: bool,
}

/// How a worker is served, as its entry point sets it up.
pub(crate) struct Settings {
    /// What kind of worker it is, as far as its end goes.
    pub(crate) ending: Ending,
    /// The worker's `tracing` events, to forward, if the host wants them.
    pub(crate) records: Option<mpsc::Receiver<Record>>,
    /// For a worker process the host shares one with: counts the requests
    /// read.
    pub(crate) read_mark: Option<ReadMark>,
    /// The worker side's middleware.
    pub(crate) middleware: Middlewares,
    /// The largest frame either side may send.
    pub(crate) max_frame_len: usize,
}

/// The connection to the host being served.
pub(crate) struct HostConnection {
    /// Tells this connection's frames from an earlier one's.
    id: u64,
    /// Where frames to the host go, metering the bytes not yet written
    /// (for the event backlog). Severed when the connection is given up,
    /// so that what is left in it is dropped instead of failing.
    pub(super) writer: FrameWriter,
    /// Whether the connection passes descriptors (shared memory in a reply
    /// goes as one then, see `SharedBytes`).
    passes_descriptors: bool,
}

/// A request just handed to the actor, not yet polled. Most handlers
/// answer as they are called, so the request's future is ready the first
/// time it is polled, right after the actor's context ran: it is polled
/// directly then, and only one still pending is made abortable and put in
/// the set of running ones. (Putting every request there cost ~1 k
/// instructions a request in the worker: a task node, an abort handle,
/// and the wake-up of the node when the reply was sent.)
struct Fresh {
    id: u64,
    traced: Option<Box<Traced>>,
    handled: LocalBoxFuture<'static, Outcome>,
}

/// One request being handled: its id and, once done, its outcome.
type InProgress = LocalBoxFuture<'static, (u64, Option<Box<Traced>>, Result<Outcome, Aborted>)>;

/// A request that passed the worker's untyped middleware, whose reply
/// passes it again. (Boxed where it is kept: inline, it made each request's
/// future too big for the allocator's fast path.)
struct Traced {
    /// The message's wire name, as the request named it.
    name: std::borrow::Cow<'static, str>,
    /// How far the request got through the untyped middleware.
    trip: Trip,
}

impl<A: Actor, S: Serializer> Server<A, S> {
    /// A server for `actor` (through `routes`), that opens each connection
    /// with `hello` and writes the events `outbox` collects; it serves no
    /// host until [`run`](Self::run).
    pub(crate) fn new(
        actor: Inbox<A>,
        routes: Routes<A, S>,
        hello: Hello,
        outbox: Outbox,
        settings: Settings,
    ) -> Self {
        let Settings {
            ending,
            records,
            read_mark,
            middleware,
            max_frame_len,
        } = settings;
        Self {
            actor: Some(actor),
            routes,
            host: Host::new(),
            next_link: 0,
            hello,
            listener: Listener::default(),
            ending,
            max_frame_len,
            middleware,
            records,
            read_mark,
            outbox,
            fresh: Vec::new(),
            running: FuturesUnordered::new(),
            cancels: IdMap::default(),
            begun: IdSet::default(),
            scratch: BytesMut::new(),
            exit_code: 0,
            actor_task: None,
            read_since_dispatch: false,
        }
    }

    /// Serves the host that started the worker, on `reader` and `writer`,
    /// as the actor of `ctx`; `actor_task` is the user's actor's context,
    /// which this server's task runs (see [`Dispatcher`]).
    pub(crate) fn run(
        mut self,
        reader: ReadEnd,
        writer: WriteEnd,
        actor_task: LocalBoxFuture<'static, ()>,
        ctx: &mut Context<Self>,
    ) -> Self {
        self.actor_task = Some(actor_task);
        ctx.spawn(Dispatcher);
        if self.ending.is_process() {
            Self::on_terminate_signal(ctx);
        }
        self.serve(reader, writer, false, ctx);
        self
    }

    /// Serves a host on a new connection, opening with this worker's Hello;
    /// `attached` for a host that attached (rather than spawned the worker).
    pub(super) fn serve(
        &mut self,
        reader: ReadEnd,
        writer: WriteEnd,
        attached: bool,
        ctx: &mut Context<Self>,
    ) {
        let id = self.next_link;
        self.next_link += 1;
        // Before the Hello: the host numbers this connection's requests
        // from 1 once it has read it.
        if let Some(mark) = &self.read_mark {
            mark.reset();
        }
        ctx.add_stream(inbound(reader, self.max_frame_len, id));
        // Between the reader and the writer among the context's items: the
        // requests read in a poll are dispatched, and their replies
        // written, in that same poll.
        ctx.spawn(AfterReading { connection: id });
        // As the proxy's, it never pauses because the host reads slowly.
        let meter = Some(self.outbox.meter());
        let passes_descriptors = writer.passes_descriptors();
        let mut writer = FrameWriter::new(writer, self.max_frame_len, meter, ctx);
        writer.write(Frame::bare(Header::Hello(self.hello.clone())));
        let link = HostConnection {
            id,
            writer,
            passes_descriptors,
        };
        self.take_host(link, attached, ctx);
    }

    pub(super) fn write(&mut self, frame: Frame) {
        let Some(host) = self.host.link_mut() else {
            return;
        };
        // Forwarded events first: one logged while a request was taken in
        // then reaches the host while the request is still pending there.
        if let Some(records) = &mut self.records {
            while let Ok(record) = records.try_recv() {
                host.writer.write(record.into_frame());
            }
        }
        // Events too: one emitted before a reply arrives before the reply.
        while let Some(event) = self.outbox.take() {
            host.writer.write(event);
        }
        host.writer.write(frame);
    }

    /// Writes the forwarded `tracing` records and the events waiting in
    /// their backlogs while the socket keeps up: a host that reads slowly
    /// leaves them in their bounded backlogs, not in the writer's buffer.
    fn pump_unasked(&mut self, task: &mut std::task::Context<'_>) {
        // Without a host, woken when one connects.
        let Some(host) = self.host.link_mut() else {
            return;
        };
        loop {
            if !self.outbox.has_room(task) {
                return;
            }
            if let Some(records) = &mut self.records {
                if let Poll::Ready(Some(record)) = records.poll_recv(task) {
                    host.writer.write(record.into_frame());
                    continue;
                }
            }
            match self.outbox.poll_take(task) {
                Poll::Ready(Some(event)) => host.writer.write(event),
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    /// Drops every running request: nobody will read its reply.
    pub(super) fn drop_requests(&mut self) {
        self.fresh.clear();
        self.running.clear();
        self.cancels.clear();
        self.begun.clear();
    }

    /// Polls the requests handed to the actor before its context last ran:
    /// writes the outcome of each that is ready, and keeps the rest
    /// running.
    fn poll_fresh(&mut self, task: &mut std::task::Context<'_>) {
        // Taken out, then put back empty, to keep its allocation.
        let mut fresh = std::mem::take(&mut self.fresh);
        for Fresh {
            id,
            traced,
            mut handled,
        } in fresh.drain(..)
        {
            match handled.as_mut().poll(task) {
                Poll::Ready(outcome) => self.finish(id, traced, outcome),
                Poll::Pending => self.keep_running(id, traced, handled),
            }
        }
        self.fresh = fresh;
    }

    /// Keeps request `id` running until its outcome is ready, or the host
    /// cancels it.
    fn keep_running(
        &mut self,
        id: u64,
        traced: Option<Box<Traced>>,
        handled: LocalBoxFuture<'static, Outcome>,
    ) {
        let (cancel, registration) = AbortHandle::new_pair();
        let handled = Abortable::new(handled, registration);
        self.running
            .push(Box::pin(async move { (id, traced, handled.await) }));
        self.cancels.insert(id, cancel);
    }

    /// Starts request `id` for message `name`, after the untyped middleware
    /// (which may refuse it).
    fn request(
        &mut self,
        id: u64,
        name: std::borrow::Cow<'static, str>,
        mut payload: bytes::Bytes,
    ) {
        let Some(actor) = &self.actor else {
            let why = ProtocolFailure::ShuttingDown;
            return self.write(Frame::bare(Header::Unserved { id, why }));
        };
        // What the worker logs while it takes the request in (middleware,
        // decoding) is forwarded with the request's id.
        let span = tracing::debug_span!("request", id);
        let _in_request = span.enter();
        // The worker's untyped middleware is the request's first leg here
        // (see `middleware::trip`); its route passes the typed one.
        let traced = if self.middleware.has_untyped() {
            let mut trip = Trip::new();
            let request = Untyped::new(&name, id, Body::Bytes(&mut payload));
            if let Err(refused) = trip.pass_in(Leg::WorkerUntyped, &self.middleware, request) {
                let failed = Leg::WorkerUntyped.refusal(refused.error.clone());
                let back = Untyped::new(&name, id, Body::Failed(&failed));
                trip.pass_out(Leg::WorkerUntyped, &self.middleware, back);
                let error = refused.error;
                return self.write(Frame::bare(Header::Error { id, error }));
            }
            Some(Box::new(Traced {
                name: name.clone(),
                trip,
            }))
        } else {
            None
        };
        let handled = self
            .routes
            .dispatch(actor, &name, &payload, &self.middleware);
        // (Boxed again only when someone listens.)
        let handled = match span.is_disabled() {
            true => handled,
            false => Box::pin(tracing::Instrument::instrument(handled, span.clone())),
        };
        self.fresh.push(Fresh {
            id,
            traced,
            handled,
        });
    }

    /// Writes the outcome of request `id`.
    fn finish(&mut self, id: u64, traced: Option<Box<Traced>>, outcome: Outcome) {
        if !self.cancels.is_empty() {
            self.cancels.remove(&id);
        }
        let mut frame = match outcome {
            Outcome::Reply(encode) => self.reply_frame(id, encode),
            Outcome::Failed(error) => Frame::bare(Header::Error { id, error }),
            Outcome::Unserved(why) => Frame::bare(Header::Unserved { id, why }),
            // The actor is gone; `actor_ended` reports why and exits.
            Outcome::ActorStopped => return,
        };
        if let Some(traced) = traced {
            let span = tracing::debug_span!("request", id);
            let _in_request = span.enter();
            let failed;
            let body = match &frame.header {
                Header::Error { error, .. } => {
                    failed = WorkerError::Remote(error.clone());
                    Body::Failed(&failed)
                }
                Header::Unserved { why, .. } => {
                    failed = WorkerError::Protocol(why.clone());
                    Body::Failed(&failed)
                }
                _ => Body::Bytes(&mut frame.payload),
            };
            let back = Untyped::new(&traced.name, id, body);
            traced
                .trip
                .pass_out(Leg::WorkerUntyped, &self.middleware, back);
        }
        self.write(frame);
    }

    /// The frame carrying a reply, or saying why it cannot be sent.
    fn reply_frame(&mut self, id: u64, encode: super::routes::ReplyEncoder) -> Frame {
        let passes = self.host.link().is_some_and(|host| host.passes_descriptors);
        let scratch = &mut self.scratch;
        let (encoded, descriptors) = passing::encoding(passes, || encode(scratch));
        let failure = match encoded {
            Ok(()) if self.scratch.len() + MAX_OVERHEAD > self.max_frame_len => {
                ProtocolFailure::ReplyTooLarge {
                    size: self.scratch.len(),
                    limit: self.max_frame_len,
                }
            }
            Ok(()) => {
                return Frame {
                    header: Header::Reply { id },
                    payload: self.scratch.split().freeze(),
                    descriptors,
                }
            }
            Err(e) => ProtocolFailure::ReplyUnencodable { detail: e.0 },
        };
        self.scratch.clear();
        Frame::bare(Header::Unserved { id, why: failure })
    }

    /// Runs the actor's context, writes the outcomes of the requests that
    /// ended, and the events waiting (see [`Dispatcher`]).
    fn dispatch(&mut self, ctx: &mut Context<Self>, task: &mut std::task::Context<'_>) {
        self.read_since_dispatch = false;
        // What the server wrote (a `Listening`, a reply) goes out before
        // any handler runs: one that blocks the thread would hold it back.
        if let Some(host) = self.host.link_mut() {
            host.writer.flush(task);
        }
        if let Some(actor) = &mut self.actor_task {
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                actor.as_mut().poll(task)
            }));
            if !matches!(polled, Ok(Poll::Pending)) {
                self.actor_task = None;
                self.actor_ended(polled.is_err(), ctx);
            }
        }
        self.poll_fresh(task);
        while let Poll::Ready(Some((id, traced, outcome))) = self.running.poll_next_unpin(task) {
            // An aborted request was cancelled by the host: nothing to send.
            if let Ok(outcome) = outcome {
                self.finish(id, traced, outcome);
            }
        }
        self.pump_unasked(task);
    }
}

/// Runs the user's actor's context, polls the running requests and writes
/// each outcome as it arrives, and the worker's events as they are emitted
/// (while the socket keeps up).
///
/// The actor's context is polled here, in the server's own task, rather
/// than on a task of its own: a request then wakes one task, not two, and
/// its reply is written in the same poll that ran its handler (callgrind:
/// ~0.9 k fewer instructions a request). A panic in the actor is caught
/// here, as a task of its own would have caught it.
struct Dispatcher;

impl<A: Actor, S: Serializer> ActorFuture<Server<A, S>> for Dispatcher {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        server: &mut Server<A, S>,
        ctx: &mut Context<Server<A, S>>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        server.dispatch(ctx, task);
        Poll::Pending
    }
}

/// Dispatches the requests a connection's reader just read, in the same
/// poll of the server's task: spawned between the reader and the writer,
/// so that the context polls it right after the reader, and the writer
/// right after it. Without it, the [`Dispatcher`] (polled before the
/// reader) would only see them in the next poll, which the requests'
/// arrival in the actor's inbox would have to wake: two polls a request
/// where one does. Ends with its connection.
struct AfterReading {
    connection: u64,
}

impl<A: Actor, S: Serializer> ActorFuture<Server<A, S>> for AfterReading {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        server: &mut Server<A, S>,
        ctx: &mut Context<Server<A, S>>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        if server.host.link().map(|host| host.id) != Some(self.connection) {
            return Poll::Ready(()); // its connection was given up
        }
        if server.read_since_dispatch {
            server.dispatch(ctx, task);
        }
        Poll::Pending
    }
}

impl<A: Actor, S: Serializer> StreamHandler<Inbound> for Server<A, S> {
    fn handle(&mut self, Inbound { connection, event }: Inbound, ctx: &mut Context<Self>) {
        if self.host.link().map(|host| host.id) != Some(connection) {
            return; // a connection already given up
        }
        let frame = match event {
            Some(Ok(frame)) => {
                self.host.heard();
                frame
            }
            // The host closed the connection, or died.
            None | Some(Err(FrameError::Io(_))) => return self.connection_ended(ctx),
            Some(Err(e)) => {
                eprintln!("isolated-workers: bad frame from the host: {e}");
                return self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        };
        match frame.header {
            Header::Request { id, name } => {
                // Counted before anything of it runs (the handler runs
                // later, in the actor's own task); a chunked one was
                // counted when it began.
                let counted = !self.begun.is_empty() && self.begun.remove(&id);
                if let (Some(mark), false) = (&self.read_mark, counted) {
                    mark.bump();
                }
                // Shared memory in the request takes its descriptor as the
                // request is decoded (`SharedBytes`).
                let max_shared = self.max_frame_len;
                passing::decoding(frame.descriptors, max_shared, || {
                    self.request(id, name, frame.payload)
                });
                self.read_since_dispatch = true;
            }
            // A chunked request begins (the reader hands it on whole once
            // it is): counted read now, in the order the host numbered it,
            // whichever request is whole first.
            Header::Opens { header, .. } if matches!(*header, Header::Request { .. }) => {
                if let Header::Request { id, .. } = *header {
                    if let Some(mark) = &self.read_mark {
                        mark.bump();
                    }
                    self.begun.insert(id);
                }
            }
            Header::Cancel { id } => {
                if let Some(cancel) = self.cancels.remove(&id) {
                    cancel.abort();
                } else if let Some(at) = self.fresh.iter().position(|fresh| fresh.id == id) {
                    // Dropping its future drops its handler's reply channel.
                    self.fresh.remove(at);
                }
            }
            Header::Shutdown => self.stop_serving(ctx),
            Header::Disconnect => self.listen_for_hosts(Leaving::Disconnect, ctx),
            Header::Detach { idle_timeout_ms } => {
                self.listen_for_hosts(Leaving::Detach { idle_timeout_ms }, ctx)
            }
            other => {
                eprintln!("isolated-workers: unexpected frame from the host: {other:?}");
                self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // Each connection's end arrives as an event (its `None`); the
        // default here would stop the server, which outlives connections.
    }
}

impl<A: Actor, S: Serializer> WriteHandler<FrameError> for Server<A, S> {
    fn error(&mut self, error: FrameError, ctx: &mut Self::Context) -> Running {
        // A host that went away is how serving normally ends; say nothing.
        let host_gone = matches!(&error, FrameError::Io(e)
            if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset));
        if !host_gone {
            eprintln!("isolated-workers: writing to the host failed: {error}");
        }
        // Only the current connection's writer can fail: a given-up one is
        // severed and drops what is left. Handled once the writer is done
        // with this call, since that touches the writer.
        let link = self.host.link().map(|host| host.id);
        ctx.spawn(fut::ready(()).map(move |(), server: &mut Self, ctx| {
            if server.host.link().map(|host| host.id) == link {
                server.connection_ended(ctx);
            }
        }));
        Running::Stop
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // A writer closes when the server exits (then stop, its last frames
        // flushed) or when its connection is given up (then serve on).
        if self.host.is_stopping() {
            ctx.stop();
        }
    }
}
