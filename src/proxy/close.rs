//! Ending a worker: [`Close`] and [`Drain`], accepted by every worker, and
//! the escalation from a Shutdown frame to SIGTERM to SIGKILL. (The
//! lifecycle messages that need a capability are in `connection`.)

use std::time::Duration;

use actix::prelude::*;

use super::phase::Phase;
use super::{Accepted, Link, Worker};
use crate::contract::Contract;
use crate::driver::Driver;

/// How long to wait for the kernel to reap a worker after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Stops the worker. Accepted by every worker.
///
/// Requests still waiting resolve [`WorkerError::Closed`](crate::WorkerError::Closed). A child process
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
/// requests get [`WorkerError::Closed`](crate::WorkerError::Closed) at once; those already accepted
/// (in flight or queued) may finish for up to `within`; then it closes as
/// [`Close`] does, failing whatever is still pending. Accepted by every
/// worker.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Drain {
    /// How long the requests in flight may take to finish.
    pub within: Duration,
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Close {
    type Response = ResponseActFuture<Worker<C, D>, ()>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        if matches!(worker.phase, Phase::Closed) {
            return Box::pin(fut::ready(()));
        }
        if worker.phase.is_restarting() {
            // A restart still in its backoff does not start; one already
            // starting is closed once it is up (or has failed), so that
            // nothing of it is left once `Close` resolves.
            worker.phase.cancel_restart();
            return worker.after_launch(self);
        }
        tracing::debug!(contract = C::NAME, "closing worker");
        worker.phase.close();
        let grace = worker.options.close_grace;
        // A Shutdown frame, then SIGTERM, then SIGKILL, each after the
        // grace period, until the worker has exited.
        let asked = match worker.phase.link_mut() {
            Some(link) => link.shut_down(grace),
            None => Box::pin(std::future::ready(true)),
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
    let waited = match worker.phase.link_mut().and_then(Link::process_mut) {
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
        // A detached worker removes its directory as it exits; if it was
        // killed, it could not. (Another worker's session removes it when
        // dropped, with the link.)
        if let Some(session) = self.phase.closed().as_ref().and_then(Link::session) {
            session.remove_directory();
        }
        self.events.released();
        tracing::debug!(contract = C::NAME, "worker closed");
    }
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Drain {
    type Response = ResponseActFuture<Worker<C, D>, ()>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        if matches!(worker.phase, Phase::Closed) {
            return Box::pin(fut::ready(()));
        }
        if worker.phase.is_restarting() {
            return worker.after_launch(self);
        }
        tracing::debug!(contract = C::NAME, within = ?self.within, "draining worker");
        worker.phase.close();
        let drained = match worker.phase.link_mut() {
            Some(link) => link.drained(),
            None => Box::pin(std::future::ready(())),
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
