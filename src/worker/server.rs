//! The worker's end of the connection: an actor that reads requests,
//! dispatches each to the user's actor concurrently, writes replies, and
//! stops the worker on Shutdown, on the host's disappearance, or after
//! reporting a panic.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Poll, Waker};

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

pub(crate) struct Server<A: Actor, S> {
    pub(crate) actor: Addr<A>,
    pub(crate) routes: Routes<A, S>,
    pub(crate) writer: FramedWrite<Frame, Box<dyn AsyncWrite + Unpin>, FrameCodec>,
    pub(crate) max_frame_len: usize,
    /// Requests being handled. One set polled as one item of the context,
    /// so that only the requests whose reply is ready are polled.
    pub(crate) running: FuturesUnordered<InProgress>,
    /// How to drop a running request when the host cancels it.
    pub(crate) cancels: HashMap<u64, AbortHandle>,
    /// Wakes the context after a request is added to `running`.
    pub(crate) wake_running: Option<Waker>,
    /// Reused for encoding replies.
    pub(crate) scratch: BytesMut,
    pub(crate) exit_code: i32,
    /// Whether stopping serving ends the process (a child worker) or only
    /// this server (a worker served in-process by `serve_io`).
    pub(crate) ends_process: bool,
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
        if let Some(waker) = &self.wake_running {
            waker.wake_by_ref();
        }
    }

    fn finish(&mut self, id: u64, outcome: Outcome, ctx: &mut Context<Self>) {
        self.cancels.remove(&id);
        let frame = match outcome {
            Outcome::Reply(encode) => self.reply_frame(id, encode),
            Outcome::Failed(error) => Frame::bare(Header::Error { id, error }),
            Outcome::ActorStopped => {
                let message = panic::take_message(std::thread::current().id())
                    .unwrap_or_else(|| "the worker actor stopped unexpectedly".into());
                self.writer.write(Frame::bare(Header::Panicked { message }));
                return self.exit(PANIC_EXIT_CODE, ctx);
            }
        };
        self.writer.write(frame);
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

    /// Flushes what is written, then stops the worker with `code`.
    fn exit(&mut self, code: i32, _: &mut Context<Self>) {
        self.exit_code = code;
        self.writer.close();
        // Nothing more is read; in-flight handlers are dropped.
        self.running.clear();
        self.cancels.clear();
    }
}

/// Polls the running requests and writes each outcome as it arrives.
pub(crate) struct Dispatcher;

impl<A: Actor, S: Serializer> ActorFuture<Server<A, S>> for Dispatcher {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        server: &mut Server<A, S>,
        ctx: &mut Context<Server<A, S>>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        if server.wake_running.is_none() {
            server.wake_running = Some(task.waker().clone());
        }
        while let Poll::Ready(Some((id, outcome))) = server.running.poll_next_unpin(task) {
            // An aborted request was cancelled by the host: nothing to send.
            if let Ok(outcome) = outcome {
                server.finish(id, outcome, ctx);
            }
        }
        Poll::Pending
    }
}

impl<A: Actor, S: Serializer> Actor for Server<A, S> {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        if self.ends_process {
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
                let handled = self.routes.dispatch(&self.actor, &name, &frame.payload);
                self.start(id, handled);
            }
            Header::Cancel { id } => {
                if let Some(cancel) = self.cancels.remove(&id) {
                    cancel.abort();
                }
            }
            Header::Shutdown => self.exit(0, ctx),
            other => {
                eprintln!("isolated-workers: unexpected frame from the host: {other:?}");
                self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The host closed the connection (or died): nobody to serve.
        self.exit(0, ctx);
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
