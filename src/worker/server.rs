//! The worker's end of the connection: an actor that reads requests,
//! dispatches each to the user's actor concurrently, writes replies, and
//! stops the worker on Shutdown, on the host's disappearance, or after
//! reporting a panic.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::Duration;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
use bytes::BytesMut;
use futures::future::{AbortHandle, Abortable, Aborted, LocalBoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncWrite;

use super::panic;
use super::routes::{Outcome, Routes};
use crate::error::RemoteError;
use crate::wire::envelope::Header;
use crate::wire::frame::{Frame, FrameCodec, FrameError};
use crate::wire::Serializer;

/// Exit code of a worker that reports a panic (Rust's own panic code).
const PANIC_EXIT_CODE: i32 = 101;
/// Exit code of a worker whose host broke the protocol.
const PROTOCOL_EXIT_CODE: i32 = 2;
/// Exit code after a second SIGTERM (128 + 15, as a shell reports it).
const TERMINATED_EXIT_CODE: i32 = 143;

pub(crate) struct Server<A: Actor, S> {
    /// The user's actor; dropped to make it stop (actix stops an actor once
    /// its last address is gone, running its `stopping`/`stopped` hooks).
    pub(crate) actor: Option<Addr<A>>,
    pub(crate) routes: Routes<A, S>,
    pub(crate) writer: FramedWrite<Frame, Box<dyn AsyncWrite + Unpin>, FrameCodec>,
    pub(crate) max_frame_len: usize,
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

/// One request being handled: its id and, once done, its outcome.
pub(crate) type InProgress = LocalBoxFuture<'static, (u64, Result<Outcome, Aborted>)>;

impl<A: Actor, S: Serializer> Server<A, S> {
    /// Starts handling request `id`.
    fn start(&mut self, id: u64, handled: LocalBoxFuture<'static, Outcome>) {
        let (cancel, registration) = AbortHandle::new_pair();
        let handled = Abortable::new(handled, registration);
        self.running
            .push(Box::pin(async move { (id, handled.await) }));
        self.cancels.insert(id, cancel);
        self.wake();
    }

    fn finish(&mut self, id: u64, outcome: Outcome) {
        self.cancels.remove(&id);
        let frame = match outcome {
            Outcome::Reply(encode) => self.reply_frame(id, encode),
            Outcome::Failed(error) => Frame::bare(Header::Error { id, error }),
            // The actor is gone; `actor_ended` reports why and exits.
            Outcome::ActorStopped => return,
        };
        self.writer.write(frame);
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
                self.writer.write(Frame::bare(Header::Panicked { message }));
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
        self.running.clear();
        self.cancels.clear();
        self.actor = None;
        match self.process {
            Some(grace) => {
                ctx.run_later(grace, |server, ctx| server.exit(server.exit_code, ctx));
            }
            None => self.exit(0, ctx),
        }
    }

    /// Stops on SIGTERM like on Shutdown; a second SIGTERM exits at once.
    pub(crate) fn on_terminate_signal(ctx: &mut Context<Self>) {
        use actix_rt::signal::unix::{signal, SignalKind};
        let Ok(mut terminate) = signal(SignalKind::terminate()) else {
            return; // the default action (exit) stays in place
        };
        let signals = futures::stream::poll_fn(move |task| terminate.poll_recv(task));
        ctx.add_stream(signals.map(|()| TerminateSignal));
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
    fn exit(&mut self, code: i32, _: &mut Context<Self>) {
        self.exit_code = code;
        self.stopping = true;
        self.actor = None;
        self.writer.close();
        self.wake();
        // Nothing more is read; in-flight handlers are dropped.
        self.running.clear();
        self.cancels.clear();
    }
}

/// A SIGTERM arrived.
struct TerminateSignal;

impl<A: Actor, S: Serializer> StreamHandler<TerminateSignal> for Server<A, S> {
    fn handle(&mut self, _: TerminateSignal, ctx: &mut Context<Self>) {
        if self.stopping {
            self.exit(TERMINATED_EXIT_CODE, ctx);
        } else {
            self.stop_serving(ctx);
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// Polls the running requests and writes each outcome as it arrives.
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
        while let Poll::Ready(Some((id, outcome))) = server.running.poll_next_unpin(task) {
            // An aborted request was cancelled by the host: nothing to send.
            if let Ok(outcome) = outcome {
                server.finish(id, outcome);
            }
        }
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

impl<A: Actor, S: Serializer> StreamHandler<Result<Frame, FrameError>> for Server<A, S> {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Context<Self>) {
        let frame = match item {
            Ok(frame) => frame,
            Err(e) => {
                eprintln!("isolated-workers: bad frame from the host: {e}");
                return self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        };
        match frame.header {
            Header::Request { id, name } => {
                let Some(actor) = &self.actor else {
                    let error = RemoteError::new("ShuttingDown", "the worker is shutting down");
                    return self.writer.write(Frame::bare(Header::Error { id, error }));
                };
                let handled = self.routes.dispatch(actor, &name, &frame.payload);
                self.start(id, handled);
            }
            Header::Cancel { id } => {
                if let Some(cancel) = self.cancels.remove(&id) {
                    cancel.abort();
                }
            }
            Header::Shutdown => self.stop_serving(ctx),
            other => {
                eprintln!("isolated-workers: unexpected frame from the host: {other:?}");
                self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The host closed the connection (or died): nobody to serve.
        self.stop_serving(ctx);
    }
}

impl<A: Actor, S: Serializer> WriteHandler<FrameError> for Server<A, S> {
    fn error(&mut self, error: FrameError, _: &mut Self::Context) -> Running {
        // A host that went away is how serving normally ends; say nothing.
        let host_gone = matches!(&error, FrameError::Io(e)
            if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset));
        if !host_gone {
            eprintln!("isolated-workers: writing to the host failed: {error}");
        }
        Running::Stop
    }
}
