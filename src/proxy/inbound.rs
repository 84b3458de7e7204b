//! What a byte-stream worker sends the proxy, and how its connection ends:
//! the `StreamHandler` that reads its frames (replies, events, forwarded
//! logs, `Listening`, a panic report) and the `WriteHandler` of what the
//! proxy writes; the end of the connection or the worker's panic, turned
//! into a crash (`report_crash`), whose requests the table sorts into
//! retries and failures (`Requests::crashed`).

use actix::io::WriteHandler;
use actix::prelude::*;

use super::stream::StreamLink;
use super::{Link, Worker};
use crate::contract::Contract;
use crate::driver::process::EXIT_STATUS_WAIT;
use crate::driver::Driver;
use crate::error::Crash;
use crate::error::{CrashReason, WorkerError};
use crate::wire::envelope::Header;
use crate::wire::frame::FrameError;
use crate::wire::passing;
use crate::wire::stream::Inbound;

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
        let exit = link.process().map(|p| p.exited_within(EXIT_STATUS_WAIT));
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
        if let Some(process) = link.take_process() {
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
    fn handle(&mut self, Inbound { connection, event }: Inbound, ctx: &mut Context<Self>) {
        let current =
            matches!(self.phase.link(), Some(Link::Stream(current)) if current.id() == connection);
        if !current {
            // A connection already given up: only its events still count.
            return self.events.given_up::<C::Serializer>(connection, event);
        }
        if !matches!(event, Some(Ok(_))) {
            self.events.read_to_end(connection);
        }
        let Some(item) = event else {
            return self.connection_lost(None, ctx);
        };
        let frame = match item {
            Ok(frame) => frame,
            Err(FrameError::Io(e)) => {
                tracing::debug!("reading from the worker failed: {e}");
                return self.connection_lost(None, ctx);
            }
            Err(e) => return self.connection_lost(Some(format!("protocol error: {e}")), ctx),
        };
        let max_shared = self.options.max_frame_len;
        let Some(Link::Stream(link)) = self.phase.link_mut() else {
            return;
        };
        if !link.greeted() {
            if let Err(why) = link.greet::<C>(frame.header) {
                self.connection_lost(Some(format!("handshake failed: {why}")), ctx);
            }
            return;
        }
        match frame.header {
            // Shared memory in the reply takes its descriptor as the reply
            // is decoded (`SharedBytes`).
            Header::Reply { id } => passing::decoding(frame.descriptors, max_shared, || {
                link.resolve(id, Ok(frame.payload))
            }),
            Header::Error { id, error } => link.resolve(id, Err(WorkerError::Remote(error))),
            Header::Unserved { id, why } => link.resolve(id, Err(WorkerError::Protocol(why))),
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
