//! Messages every worker accepts whatever its driver: [`Close`] and
//! [`Status`].

use std::time::Duration;

use actix::prelude::*;

use super::Worker;
use crate::contract::Contract;
use crate::driver::Driver;
use crate::error::{CrashReason, WorkerError};
use crate::wire::envelope::Header;
use crate::wire::frame::Frame;

/// How long to wait for the kernel to reap a worker after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Stops the worker: fails the requests still waiting with
/// [`WorkerError::Closed`], asks the worker to exit, waits up to
/// [`WorkerOptions::close_grace`](crate::WorkerOptions::close_grace), then
/// kills it. Resolves once the worker has exited and been reaped and its
/// socket directory removed. Afterwards every send gives `Closed`.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct Close;

/// Asks for a [`WorkerStatus`].
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "WorkerStatus")]
pub struct Status;

/// A snapshot of a worker, answered to [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The worker's process id (child-process workers).
    pub pid: Option<u32>,
    /// Where the worker is in its life.
    pub state: WorkerState,
    /// Requests sent to the worker and not yet answered.
    pub in_flight: usize,
    /// Requests waiting for an in-flight slot.
    pub queued: usize,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Serving requests.
    Running,
    /// `Close` was received; shutting down.
    Closing,
    /// Closed: the worker is gone and its resources are released.
    Closed,
    /// The worker died without being asked to.
    Crashed {
        /// Exit code, signal, or lost connection.
        reason: CrashReason,
        /// What the worker said before dying, if anything.
        message: Option<String>,
    },
}

impl<C: Contract, D: Driver> Handler<Close> for Worker<C, D> {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Close, _: &mut Self::Context) -> Self::Result {
        if self.state == WorkerState::Closed {
            return Box::pin(fut::ready(()));
        }
        tracing::debug!(pid = ?self.pid, "closing worker");
        self.state = WorkerState::Closing;
        self.fail_all(|| WorkerError::Closed);
        if let Some(writer) = &mut self.writer {
            writer.write(Frame::bare(Header::Shutdown));
        }
        let graceful_exit = self
            .link
            .as_ref()
            .map(|link| link.process.exited_within(self.options.close_grace));
        Box::pin(
            async move {
                match graceful_exit {
                    Some(exit) => exit.await.is_some(),
                    None => true,
                }
            }
            .into_actor(self)
            .then(|exited, act, _| {
                let reaped = act.link.as_mut().map(|link| {
                    if !exited {
                        tracing::debug!(
                            pid = link.process.pid(),
                            "worker ignored shutdown; killing it"
                        );
                        link.process.kill();
                    }
                    link.process.exited_within(KILL_WAIT)
                });
                async move {
                    if let Some(reaped) = reaped {
                        reaped.await;
                    }
                }
                .into_actor(act)
            })
            .map(|(), act, _| {
                act.writer = None;
                act.link = None; // removes the socket directory
                act.state = WorkerState::Closed;
                tracing::debug!(pid = ?act.pid, "worker closed");
            }),
        )
    }
}

impl<C: Contract, D: Driver> Handler<Status> for Worker<C, D> {
    type Result = MessageResult<Status>;

    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        MessageResult(WorkerStatus {
            pid: self.pid,
            state: self.state.clone(),
            in_flight: self.in_flight,
            queued: self.pending.len() - self.in_flight,
        })
    }
}
