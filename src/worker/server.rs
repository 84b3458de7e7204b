//! The worker's end of the connection: an actor that reads requests,
//! dispatches each to the user's actor concurrently, writes replies, and
//! stops the worker on Shutdown, on the host's disappearance, or after
//! reporting a panic. A worker process that was told its host will come
//! back (`Disconnect`), or that outlives its host (`Detach`), parks instead
//! when the connection ends, keeping its actor, and serves the next host
//! that attaches.

use std::cell::Cell;
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::BytesMut;
use futures::future::{AbortHandle, Abortable, Aborted, LocalBoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncWrite;

use super::attach::{refuse_busy, NewHost, Reattach};
use super::events::{MeteredCodec, Outbox};
use super::forward::Record;
use super::panic;
use super::routes::{Outcome, Routes};
use super::watchdog;
use crate::driver::child_process::read_mark::ReadMark;
use crate::error::{RemoteError, WorkerError};
use crate::middleware::trip::{Leg, Trip, Untyped};
use crate::middleware::{Body, Middlewares};
use crate::wire::envelope::{Header, Hello};
use crate::wire::frame::{Frame, FrameError};
use crate::wire::stream::{inbound, split, Inbound, Severable};
use crate::wire::Serializer;
use tokio::sync::mpsc;

/// How long an attach finding another host served waits for that host's
/// connection to end before it is refused as busy.
const BUSY_RECHECK: Duration = Duration::from_millis(100);

/// Exit code of a worker that reports a panic (Rust's own panic code).
const PANIC_EXIT_CODE: i32 = 101;
/// Exit code of a worker whose host broke the protocol.
const PROTOCOL_EXIT_CODE: i32 = 2;
/// Exit code after a second SIGTERM (128 + 15, as a shell reports it).
const TERMINATED_EXIT_CODE: i32 = 143;

type Writer = FramedWrite<Frame, Box<dyn AsyncWrite + Unpin>, MeteredCodec>;

pub(crate) struct Server<A: Actor, S> {
    /// The user's actor; dropped to make it stop (actix stops an actor once
    /// its last address is gone, running its `stopping`/`stopped` hooks).
    pub(crate) actor: Option<super::inbox::Inbox<A>>,
    pub(crate) routes: Routes<A, S>,
    /// The host being served; `None` while the worker is parked.
    pub(crate) host: Option<HostLink>,
    /// The id the next host connection gets.
    pub(crate) next_link: u64,
    /// What this worker opens each connection with.
    pub(crate) hello: Hello,
    /// For a worker process: how hosts reach it again. `None` for a worker
    /// served in-process, which serves one connection only.
    pub(crate) reattach: Option<Reattach>,
    pub(crate) max_frame_len: usize,
    /// The worker side's middleware.
    pub(crate) middleware: Middlewares,
    /// The worker's `tracing` events to forward, if the host wants them.
    pub(crate) records: Option<mpsc::Receiver<Record>>,
    /// Counts the current connection's requests read, for the host to tell
    /// after a crash which ones no handler can have started.
    pub(crate) read_mark: Option<ReadMark>,
    /// The events the worker emitted, waiting to be written.
    pub(crate) outbox: Outbox,
    /// Requests being handled. One set polled as one item of the context,
    /// so that only the requests whose reply is ready are polled.
    pub(crate) running: FuturesUnordered<InProgress>,
    /// How to drop a running request when the host cancels it.
    pub(crate) cancels: HashMap<u64, AbortHandle>,
    /// Wakes this server's context: after a request is added to `running`,
    /// and after the writer is told to close (actix's writer notices only
    /// when next polled).
    pub(crate) waker: Option<Waker>,
    /// Reused for encoding replies.
    pub(crate) scratch: BytesMut,
    pub(crate) exit_code: i32,
    /// For a worker process, how long its actor gets to stop before the
    /// process exits anyway; `None` for a worker served in-process, whose
    /// end stops only this server.
    pub(crate) process: Option<Duration>,
    /// Set once the worker was asked to stop.
    pub(crate) stopping: bool,
}

/// What the host asked when it said it would leave.
#[derive(Debug, Clone, Copy)]
enum Leaving {
    /// It will hang up and come back.
    Disconnect,
    /// The worker is to outlive it.
    Detach { idle_timeout_ms: Option<u64> },
}

/// The connection to the host being served.
pub(crate) struct HostLink {
    /// Tells this connection's frames from an earlier one's.
    id: u64,
    writer: Writer,
    /// Cuts the writer off when the connection is given up, so that what
    /// is left in it is dropped instead of failing.
    severed: Rc<Cell<bool>>,
    /// Whether a host attached on this connection (rather than spawning
    /// the worker with it) has said anything yet: one that has not may
    /// have given up before the worker took its connection in (a
    /// `Reconnect` that timed out while the worker was busy).
    unproven: bool,
}

/// One request being handled: its id and, once done, its outcome.
pub(crate) type InProgress =
    LocalBoxFuture<'static, (u64, Option<Box<Traced>>, Result<Outcome, Aborted>)>;

/// A request that passed the worker's untyped middleware, whose reply
/// passes it again. (Boxed where it is kept: inline, it made each request's
/// future too big for the allocator's fast path.)
pub(crate) struct Traced {
    name: std::borrow::Cow<'static, str>,
    trip: Trip,
}

impl<A: Actor, S: Serializer> Server<A, S> {
    /// Serves a host on a new connection, opening with this worker's Hello;
    /// `attached` for a host that attached (rather than spawned the worker).
    pub(crate) fn serve(
        &mut self,
        reader: Box<dyn tokio::io::AsyncRead + Unpin>,
        writer: Box<dyn AsyncWrite + Unpin>,
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
        let (writer, severed) = Severable::new(writer);
        let (writer, codec) = self.outbox.metered(Box::new(writer), self.max_frame_len);
        let mut writer = FramedWrite::new(writer, codec, ctx);
        // See the proxy: never pause reading because the host reads slowly.
        writer.set_buffer_capacity(0, usize::MAX);
        writer.write(Frame::bare(Header::Hello(self.hello.clone())));
        self.host = Some(HostLink {
            id,
            writer,
            severed,
            unproven: attached,
        });
    }

    fn write(&mut self, frame: Frame) {
        let Some(host) = &mut self.host else {
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
        while let Some(host) = &mut self.host {
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
    fn drop_requests(&mut self) {
        self.running.clear();
        self.cancels.clear();
    }

    /// The host's connection ended (or broke): park if the host is
    /// expected back, the worker outlives it, or the host that attached on
    /// it never spoke (it gave up before it was served); else stop serving.
    fn connection_ended(&mut self, ctx: &mut Context<Self>) {
        let unproven = self.host.as_ref().is_some_and(|host| host.unproven);
        // Nothing more can be written to a connection that ended: exiting
        // must not wait for its writer to flush.
        self.hang_up();
        let Some(reattach) = &mut self.reattach else {
            return self.stop_serving(ctx);
        };
        if unproven {
            // The worker waits for its host as it did before this one came.
            reattach.host_will_return = true;
        }
        if !reattach.parks_on_hangup() || self.stopping {
            return self.stop_serving(ctx);
        }
        if !reattach.detached {
            // Waits for the host that said it would return (whose own
            // death its parent-death signal reports).
            return;
        }
        if let Some(idle) = reattach.idle_timeout {
            reattach.idle_timer = Some(ctx.run_later(idle, |server, ctx| {
                server.idle_timer_fired(ctx);
            }));
        }
    }

    /// Gives up the current connection, dropping what it had running.
    fn hang_up(&mut self) {
        if let Some(host) = self.host.take() {
            host.severed.set(true);
            let mut writer = host.writer;
            writer.close();
        }
        self.drop_requests();
    }

    fn idle_timer_fired(&mut self, ctx: &mut Context<Self>) {
        if self.host.is_none() {
            self.stop_serving(ctx);
        }
    }

    /// A host presented the token: serve it, unless one is served already.
    fn attach(&mut self, NewHost(stream): NewHost, ctx: &mut Context<Self>) {
        if self.stopping {
            return; // dropping the stream hangs up
        }
        let Some(reattach) = &mut self.reattach else {
            return;
        };
        if self.host.is_some() {
            if !reattach.host_will_return {
                // The host served may have gone already, its end not yet
                // read here: look again shortly before refusing.
                return self.attach_unless_busy(NewHost(stream), ctx);
            }
            // The host said it would hang up and come back, and it is back
            // before its old connection's end was read here.
            self.hang_up();
        }
        let Some(reattach) = &mut self.reattach else {
            return;
        };
        reattach.host_will_return = false;
        if let Some(timer) = reattach.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        match split(stream) {
            Ok((reader, writer)) => self.serve(Box::new(reader), Box::new(writer), true, ctx),
            Err(e) => eprintln!("isolated-workers: could not take over the connection: {e}"),
        }
    }

    fn attach_unless_busy(&mut self, host: NewHost, ctx: &mut Context<Self>) {
        ctx.run_later(BUSY_RECHECK, move |server, ctx| {
            if server.host.is_some() {
                refuse_busy(host.0);
            } else {
                server.attach(host, ctx);
            }
        });
    }

    /// `Disconnect` or `Detach`: listen for the host's return, then say so.
    fn listen_for_hosts(&mut self, asked: Leaving, ctx: &mut Context<Self>) {
        let Some(reattach) = &mut self.reattach else {
            eprintln!("isolated-workers: `{asked:?}` needs a worker process");
            return self.exit(PROTOCOL_EXIT_CODE, ctx);
        };
        match asked {
            Leaving::Detach { idle_timeout_ms } => {
                if let Err(e) = super::detach::leave_host() {
                    eprintln!("isolated-workers: could not detach from the host: {e}");
                    return self.exit(PROTOCOL_EXIT_CODE, ctx);
                }
                reattach.detached = true;
                reattach.idle_timeout = idle_timeout_ms.map(Duration::from_millis);
            }
            Leaving::Disconnect => {
                reattach.host_will_return = true;
                // The host has failed the requests in flight.
                self.drop_requests();
            }
        }
        let Some(reattach) = &mut self.reattach else {
            return;
        };
        match reattach.listen() {
            Ok((point, hosts)) => {
                if let Some(hosts) = hosts {
                    ctx.add_stream(hosts);
                }
                // Hosts that attach are greeted with the secret too: it
                // proves to them who they reached.
                self.hello.token = point.token.clone();
                self.write(Frame::bare(Header::Listening(point)));
            }
            Err(e) => {
                eprintln!("isolated-workers: could not listen for the host: {e}");
                self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        }
    }

    /// Starts handling request `id`.
    fn start(
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
        self.wake();
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
            let error = RemoteError::new("ShuttingDown", "the worker is shutting down");
            return self.write(Frame::bare(Header::Error { id, error }));
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
        self.start(id, traced, handled);
    }

    fn finish(&mut self, id: u64, traced: Option<Box<Traced>>, outcome: Outcome) {
        self.cancels.remove(&id);
        let mut frame = match outcome {
            Outcome::Reply(encode) => self.reply_frame(id, encode),
            Outcome::Failed(error) => Frame::bare(Header::Error { id, error }),
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
                _ => Body::Bytes(&mut frame.payload),
            };
            let back = Untyped::new(&traced.name, id, body);
            traced
                .trip
                .pass_out(Leg::WorkerUntyped, &self.middleware, back);
        }
        self.write(frame);
    }

    /// The user's actor has stopped: after a panic (report it, exit 101),
    /// because it was asked to (exit), or on its own (exit too: there is
    /// nothing left to serve).
    pub(crate) fn actor_ended(
        &mut self,
        ended: Result<(), tokio::task::JoinError>,
        ctx: &mut Context<Self>,
    ) {
        match ended {
            Err(e) if e.is_panic() && !self.stopping => {
                let message = panic::take_message(std::thread::current().id())
                    .unwrap_or_else(|| "the worker's actor panicked".into());
                self.write(Frame::bare(Header::Panicked { message }));
                self.exit(PANIC_EXIT_CODE, ctx);
            }
            _ => self.exit(self.exit_code, ctx),
        }
    }

    /// Stops serving gracefully: drops the actor so that actix stops it
    /// (its hooks run), then exits once it has stopped, or after the grace
    /// period at the latest.
    fn stop_serving(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        if self.process.is_some() {
            watchdog::arm();
        }
        self.drop_requests();
        self.actor = None;
        match self.process {
            Some(grace) => {
                ctx.run_later(grace, |server, ctx| server.exit(server.exit_code, ctx));
            }
            None => self.exit(0, ctx),
        }
    }

    /// Stops on SIGTERM (also the parent-death signal: the host is gone)
    /// like on Shutdown; a second SIGTERM exits at once. (Should the
    /// thread be too busy to see it, the [`watchdog`] ends the process.)
    ///
    /// Awaited in a task of its own that messages the server, not as a
    /// stream of the server's context: actix polls every stream of a
    /// context each time the context wakes, and this one would cost every
    /// request's wake-up hundreds of instructions.
    pub(crate) fn on_terminate_signal(ctx: &mut Context<Self>) {
        use actix_rt::signal::unix::{signal, SignalKind};
        let Ok(mut terminate) = signal(SignalKind::terminate()) else {
            return; // the default action (exit) stays in place
        };
        let server = ctx.address().downgrade();
        actix_rt::spawn(async move {
            while terminate.recv().await.is_some() {
                let Some(server) = server.upgrade() else {
                    return;
                };
                server.do_send(TerminateSignal);
            }
        });
    }

    /// The frame carrying a reply, or an error if it cannot be sent.
    fn reply_frame(&mut self, id: u64, encode: super::routes::ReplyEncoder) -> Frame {
        let failure = match encode(&mut self.scratch) {
            // Header and prefixes stay well under 256 bytes.
            Ok(()) if self.scratch.len() + 256 > self.max_frame_len => RemoteError::new(
                "TooLarge",
                format!(
                    "the reply is {} bytes, over the frame limit of {} bytes",
                    self.scratch.len(),
                    self.max_frame_len
                ),
            ),
            Ok(()) => {
                return Frame {
                    header: Header::Reply { id },
                    payload: self.scratch.split().freeze(),
                }
            }
            Err(e) => RemoteError::new("EncodeError", format!("could not encode the reply: {e}")),
        };
        self.scratch.clear();
        Frame::bare(Header::Error { id, error: failure })
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    /// Flushes what is written, then stops the worker with `code`.
    fn exit(&mut self, code: i32, ctx: &mut Context<Self>) {
        self.exit_code = code;
        self.stopping = true;
        if self.process.is_some() {
            watchdog::arm();
        }
        self.actor = None;
        // Nothing more is read; in-flight handlers are dropped.
        self.drop_requests();
        match &mut self.host {
            // The server stops once the writer has flushed (`finished`).
            Some(host) => {
                // What the actor emitted up to its end goes out first.
                while let Some(event) = self.outbox.take() {
                    host.writer.write(event);
                }
                host.writer.close();
                self.wake();
            }
            None => ctx.stop(),
        }
    }
}

/// A SIGTERM arrived.
struct TerminateSignal;

impl Message for TerminateSignal {
    type Result = ();
}

impl<A: Actor, S: Serializer> Handler<TerminateSignal> for Server<A, S> {
    type Result = ();

    fn handle(&mut self, _: TerminateSignal, ctx: &mut Context<Self>) {
        if self.stopping {
            self.exit(TERMINATED_EXIT_CODE, ctx);
        } else {
            self.stop_serving(ctx);
        }
    }
}

/// Polls the running requests and writes each outcome as it arrives, and
/// the worker's events as they are emitted (while the socket keeps up).
pub(crate) struct Dispatcher;

impl<A: Actor, S: Serializer> ActorFuture<Server<A, S>> for Dispatcher {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        server: &mut Server<A, S>,
        _: &mut Context<Server<A, S>>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        if server.waker.is_none() {
            server.waker = Some(task.waker().clone());
        }
        while let Poll::Ready(Some((id, traced, outcome))) = server.running.poll_next_unpin(task) {
            // An aborted request was cancelled by the host: nothing to send.
            if let Ok(outcome) = outcome {
                server.finish(id, traced, outcome);
            }
        }
        server.pump_unasked(task);
        Poll::Pending
    }
}

impl<A: Actor, S: Serializer> Actor for Server<A, S> {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.process.is_some() {
            System::current().stop_with_code(self.exit_code);
        }
    }
}

impl<A: Actor, S: Serializer> StreamHandler<Inbound> for Server<A, S> {
    fn handle(&mut self, Inbound { link, event }: Inbound, ctx: &mut Context<Self>) {
        if self.host.as_ref().map(|host| host.id) != Some(link) {
            return; // a connection already given up
        }
        let frame = match event {
            Some(Ok(frame)) => {
                if let Some(host) = &mut self.host {
                    host.unproven = false;
                }
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
                // later, in the actor's own task).
                if let Some(mark) = &self.read_mark {
                    mark.bump();
                }
                self.request(id, name, frame.payload)
            }
            Header::Cancel { id } => {
                if let Some(cancel) = self.cancels.remove(&id) {
                    cancel.abort();
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

impl<A: Actor, S: Serializer> StreamHandler<NewHost> for Server<A, S> {
    fn handle(&mut self, host: NewHost, ctx: &mut Context<Self>) {
        self.attach(host, ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
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
        // severed and swallows what is left. Handled once actix's writer
        // is done with this call, since that touches the writer.
        let link = self.host.as_ref().map(|host| host.id);
        ctx.spawn(fut::ready(()).map(move |(), server: &mut Self, ctx| {
            if server.host.as_ref().map(|host| host.id) == link {
                server.connection_ended(ctx);
            }
        }));
        Running::Stop
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // A writer closes when the server exits (then stop, its last frames
        // flushed) or when its connection is given up (then serve on).
        if self.stopping {
            ctx.stop();
        }
    }
}
