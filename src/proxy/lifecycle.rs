//! Lifecycle messages: [`Close`] and [`Status`], accepted by every worker,
//! and [`Disconnect`], [`Reconnect`] and [`Detach`], accepted only where the
//! driver has the capability.

use std::time::Duration;

use actix::prelude::*;

use futures::future::LocalBoxFuture;

use super::{Accepted, Link, Worker};
use crate::contract::Contract;
use crate::driver::{CanDetach, CanReconnect, Driver};
use crate::error::{CrashReason, WorkerError};

/// How long to wait for the kernel to reap a worker after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Stops the worker. Accepted by every worker.
///
/// Requests still waiting resolve [`WorkerError::Closed`]. A child process
/// is asked to exit (a Shutdown frame: the worker drops its actor, so the
/// actor's `stopping`/`stopped` hooks run, and exits), given
/// [`WorkerOptions::close_grace`](crate::WorkerOptions::close_grace), then
/// sent SIGTERM and given the grace period again, then killed (SIGKILL);
/// `Close` resolves once it has been reaped and its socket directory
/// removed. A thread worker's arbiter is stopped (after the handler running
/// at that moment returns) and joined. Afterwards every send gives `Closed`.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct Close;

/// Stops the worker after letting the requests in flight finish: new
/// requests get [`WorkerError::Closed`] at once; those already accepted
/// (in flight or queued) may finish for up to `within`; then it closes as
/// [`Close`] does, failing whatever is still pending. Accepted by every
/// worker.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long the requests in flight may take to finish.
    pub within: Duration,
}

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
    /// Fresh workers started after crashes, within the restart window.
    pub restarts: u32,
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
    /// The worker died without being asked to; the next request starts a
    /// fresh one.
    Crashed {
        /// Exit code, signal, or lost connection.
        reason: CrashReason,
        /// What the worker said before dying, if anything.
        message: Option<String>,
    },
    /// The worker crashed more often than the restart budget allows; the
    /// proxy no longer restarts it and fails every request.
    GaveUp {
        /// Restarts made within the restart window.
        restarts: u32,
        /// What went wrong last.
        last: String,
    },
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Close {
    type Response = ResponseActFuture<Worker<C, D>, ()>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        if worker.state == WorkerState::Closed {
            return Box::pin(fut::ready(()));
        }
        tracing::debug!(contract = C::NAME, "closing worker");
        worker.state = WorkerState::Closing;
        let grace = worker.options.close_grace;
        let finished: LocalBoxFuture<'static, ()> = match &mut worker.link {
            Link::Stream(link) => {
                link.fail_all(|| WorkerError::Closed);
                link.shut_down();
                // Shutdown frame, then SIGTERM, then SIGKILL, each after
                // the grace period, until the worker has exited.
                let asked = link.exited_within(grace);
                return Box::pin(
                    asked
                        .into_actor(worker)
                        .then(move |exited, worker, _| {
                            escalate(worker, exited, grace, Escalation::Terminate)
                        })
                        .then(move |exited, worker, _| {
                            escalate(worker, exited, KILL_WAIT, Escalation::Kill)
                        })
                        .map(|_, worker, _| worker.released()),
                );
            }
            Link::Local(local) => Box::pin(local.join()),
            Link::Released => Box::pin(std::future::ready(())),
        };
        Box::pin(
            finished
                .into_actor(worker)
                .map(|(), worker, _| worker.released()),
        )
    }
}

/// The next step of closing a worker that has not exited yet.
#[derive(Debug, Clone, Copy)]
enum Escalation {
    Terminate,
    Kill,
}

/// Unless the worker has `exited`, takes the next step and waits up to
/// `wait` for it to exit.
fn escalate<C: Contract, D: Driver<C>>(
    worker: &mut Worker<C, D>,
    exited: bool,
    wait: Duration,
    step: Escalation,
) -> impl ActorFuture<Worker<C, D>, Output = bool> {
    let waited = match worker.stream_link() {
        Some(link) if !exited => {
            tracing::debug!(pid = ?link.pid(), ?step, "worker still running while closing");
            match step {
                Escalation::Terminate => link.terminate(),
                Escalation::Kill => link.kill(),
            }
            Some(link.exited_within(wait))
        }
        _ => None,
    };
    async move {
        match waited {
            Some(waited) => waited.await,
            None => true,
        }
    }
    .into_actor(worker)
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Drops what the worker held (removing a child's socket directory) and
    /// marks it closed.
    fn released(&mut self) {
        self.link = Link::Released;
        self.state = WorkerState::Closed;
        tracing::debug!(contract = C::NAME, "worker closed");
    }
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Drain {
    type Response = ResponseActFuture<Worker<C, D>, ()>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        if worker.state == WorkerState::Closed {
            return Box::pin(fut::ready(()));
        }
        tracing::debug!(contract = C::NAME, within = ?self.within, "draining worker");
        worker.state = WorkerState::Closing;
        let drained: LocalBoxFuture<'static, ()> = match &mut worker.link {
            Link::Stream(link) => Box::pin(link.drained()),
            Link::Local(local) => Box::pin(local.drained()),
            Link::Released => Box::pin(std::future::ready(())),
        };
        let within = self.within;
        Box::pin(
            async move {
                let _ = tokio::time::timeout(within, drained).await;
            }
            .into_actor(worker)
            .then(|(), worker, ctx| Accepted::<C, D>::handle(Close, worker, ctx)),
        )
    }
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Status {
    type Response = MessageResult<Status>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        let (pid, in_flight, queued) = match &worker.link {
            Link::Stream(link) => (link.pid(), link.in_flight(), link.queued()),
            Link::Local(local) => (None, local.in_flight(), local.queued()),
            Link::Released => (None, 0, 0),
        };
        MessageResult(WorkerStatus {
            pid,
            state: worker.state.clone(),
            in_flight,
            queued,
            restarts: worker.restarts.len() as u32,
        })
    }
}

/// Drops the connection to a worker that keeps running and keeps its state.
/// Accepted by workers whose driver [`CanReconnect`].
///
/// Not implemented yet: answers [`WorkerError::Unsupported`] and leaves
/// the connection as it is. (The connection-lifecycle work replaces this.)
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), WorkerError>")]
pub struct Disconnect;

/// Restores the connection dropped by [`Disconnect`]. Accepted by workers
/// whose driver [`CanReconnect`].
///
/// Not implemented yet: answers [`WorkerError::Unsupported`].
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), WorkerError>")]
pub struct Reconnect;

/// Lets the worker outlive the host. Accepted by workers whose driver
/// [`CanDetach`].
///
/// Not implemented yet: answers [`WorkerError::Unsupported`].
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), WorkerError>")]
pub struct Detach;

// Each lifecycle message is accepted only under its capability. Written
// out rather than by a macro: the compiler quotes these impls when a
// message is refused, and the bound should read plainly there.

impl<C: Contract, D: Driver<C> + CanReconnect> Accepted<C, D> for Disconnect {
    type Response = Result<(), WorkerError>;

    fn handle(self, _: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        Err(WorkerError::Unsupported { what: "Disconnect" })
    }
}

impl<C: Contract, D: Driver<C> + CanReconnect> Accepted<C, D> for Reconnect {
    type Response = Result<(), WorkerError>;

    fn handle(self, _: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        Err(WorkerError::Unsupported { what: "Reconnect" })
    }
}

impl<C: Contract, D: Driver<C> + CanDetach> Accepted<C, D> for Detach {
    type Response = Result<(), WorkerError>;

    fn handle(self, _: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        Err(WorkerError::Unsupported { what: "Detach" })
    }
}
