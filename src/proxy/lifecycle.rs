//! Lifecycle messages accepted by every worker: [`Close`], [`Drain`] and
//! [`Status`]. (Those that need a capability are in `connection`.)

use std::time::Duration;

use actix::prelude::*;

use futures::future::LocalBoxFuture;

use super::{Accepted, Link, Worker};
use crate::contract::Contract;
use crate::driver::Driver;
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
/// at that moment returns) and joined. A `Close` that arrives while a fresh
/// worker is about to start after a crash cancels that start, or, if the
/// worker is already starting, waits for it and closes it.
/// Afterwards every send gives `Closed`.
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
    /// Which proxy this is (as named in its [`LifecycleEvent`](super::LifecycleEvent)s).
    pub id: super::WorkerId,
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
    /// Whether the worker outlives the host (see
    /// [`Detach`](crate::proxy::Detach)).
    pub detached: bool,
    /// How long the current worker has been running (since it was
    /// spawned, restarted, or attached to).
    pub uptime: Duration,
    /// What the proxy has counted.
    pub counters: super::Counters,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Serving requests.
    Running,
    /// The connection was closed with [`Disconnect`](crate::proxy::Disconnect);
    /// the worker runs on, keeping its state, until
    /// [`Reconnect`](crate::proxy::Reconnect).
    Disconnected,
    /// `Close` was received; shutting down.
    Closing,
    /// Closed: the worker is gone and its resources are released.
    Closed,
    /// The worker died without being asked to. A fresh one is started at
    /// once if the worker is [supervised](crate::Worker::supervise), else
    /// by the next request.
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
        if worker.restart.launching {
            // A restart still in its backoff does not start; one already
            // starting is closed once it is up (or has failed), so that
            // nothing of it is left once `Close` resolves.
            if let Some(cancel) = worker.restart.cancel.take() {
                let _ = cancel.send(());
            }
            return worker.after_launch(self);
        }
        tracing::debug!(contract = C::NAME, "closing worker");
        worker.state = WorkerState::Closing;
        let grace = worker.options.close_grace;
        // A Shutdown frame, then SIGTERM, then SIGKILL, each after the
        // grace period, until the worker has exited.
        let asked: LocalBoxFuture<'static, bool> = match &mut worker.link {
            Link::Stream(link) => {
                link.fail_all(|| WorkerError::Closed);
                link.shut_down();
                Box::pin(link.exited_within(grace))
            }
            // No connection to say it on: start with SIGTERM.
            Link::Parked(_) => Box::pin(std::future::ready(false)),
            Link::Local(local) => {
                return Box::pin(
                    local
                        .join()
                        .into_actor(worker)
                        .map(|(), worker, _| worker.released()),
                )
            }
            Link::Released => Box::pin(std::future::ready(true)),
        };
        Box::pin(
            asked
                .into_actor(worker)
                .then(move |exited, worker, _| {
                    escalate(worker, exited, grace, Escalation::Terminate)
                })
                .then(move |exited, worker, _| {
                    escalate(worker, exited, KILL_WAIT, Escalation::Kill)
                })
                .map(|_, worker, _| worker.released()),
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
    let waited = match worker.link.process_mut() {
        Some(process) if !exited => {
            tracing::debug!(
                pid = process.pid(),
                ?step,
                "worker still running while closing"
            );
            match step {
                Escalation::Terminate => process.terminate(),
                Escalation::Kill => process.kill(),
            }
            Some(process.exited_within(wait))
        }
        _ => None,
    };
    async move {
        match waited {
            Some(waited) => waited.await.is_some(),
            None => true,
        }
    }
    .into_actor(worker)
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Drops what the worker held (removing a child's socket directory) and
    /// marks it closed.
    fn released(&mut self) {
        let link = std::mem::replace(&mut self.link, Link::Released);
        // A detached worker removes its directory as it exits; if it was
        // killed, it could not. (Another worker's session removes it when
        // dropped, with the link.)
        if let Some(session) = link.session() {
            session.remove_directory();
        }
        self.events.released();
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
        if worker.restart.launching {
            return worker.after_launch(self);
        }
        tracing::debug!(contract = C::NAME, within = ?self.within, "draining worker");
        worker.state = WorkerState::Closing;
        let drained: LocalBoxFuture<'static, ()> = match &mut worker.link {
            Link::Stream(link) => Box::pin(link.drained()),
            Link::Local(local) => Box::pin(local.drained()),
            Link::Parked(_) | Link::Released => Box::pin(std::future::ready(())),
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
            Link::Parked(parked) => (Some(parked.pid()), 0, 0),
            Link::Local(local) => (None, local.in_flight(), local.queued()),
            Link::Released => (None, 0, 0),
        };
        MessageResult(WorkerStatus {
            id: worker.id,
            pid,
            state: worker.state.clone(),
            in_flight,
            queued,
            restarts: worker.restart.count(),
            detached: worker.link.session().is_some_and(|s| s.is_detached()),
            uptime: worker.started.elapsed(),
            counters: worker.tally.borrow().snapshot(),
        })
    }
}
