//! The worker's end of the connection: an actor that reads requests,
//! dispatches each to the user's actor concurrently, writes replies, and
//! stops the worker on Shutdown, on the host's disappearance, or after
//! reporting a panic.

use std::collections::HashMap;

use actix::io::{FramedWrite, WriteHandler};
use actix::prelude::*;
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
    /// Requests being handled, so that a Cancel can drop them.
    pub(crate) running: HashMap<u64, SpawnHandle>,
    pub(crate) exit_code: i32,
    /// Whether stopping serving ends the process (a child worker) or only
    /// this server (a worker served in-process by `serve_io`).
    pub(crate) ends_process: bool,
}

impl<A: Actor, S: Serializer> Server<A, S> {
    fn finish(&mut self, id: u64, outcome: Outcome, ctx: &mut Context<Self>) {
        self.running.remove(&id);
        let frame = match outcome {
            // Header and prefixes stay well under 256 bytes.
            Outcome::Reply(payload) if payload.len() + 256 > self.max_frame_len => {
                Frame::bare(Header::Error {
                    id,
                    error: RemoteError::new(
                        "TooLarge",
                        format!(
                            "the reply is {} bytes, over the frame limit of {} bytes",
                            payload.len(),
                            self.max_frame_len
                        ),
                    ),
                })
            }
            Outcome::Reply(payload) => Frame {
                header: Header::Reply { id },
                payload,
            },
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

    /// Flushes what is written, then stops the worker with `code`.
    fn exit(&mut self, code: i32, ctx: &mut Context<Self>) {
        self.exit_code = code;
        self.writer.close();
        // Nothing more is read; in-flight handlers are dropped.
        for (_, handle) in self.running.drain() {
            ctx.cancel_future(handle);
        }
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
                let handle = ctx.spawn(
                    handled
                        .into_actor(self)
                        .map(move |outcome, act, ctx| act.finish(id, outcome, ctx)),
                );
                self.running.insert(id, handle);
            }
            Header::Cancel { id } => {
                if let Some(handle) = self.running.remove(&id) {
                    ctx.cancel_future(handle);
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
        eprintln!("isolated-workers: writing to the host failed: {error}");
        Running::Stop
    }
}
