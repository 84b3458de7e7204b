//! The pool's queue of requests waiting for a member: what waits in it
//! ([`Queued`], a request of any message type) and its sweep, one timer
//! for the whole queue, for requests past their deadline or whose caller
//! gave up.

use std::collections::VecDeque;
use std::time::Instant;

use actix::prelude::*;

use super::request::PoolRequest;
use super::WorkerPool;
use crate::contract::{Contract, InContract};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;

/// A request waiting in the pool's queue for a member, of any message type.
pub(super) trait Queued<C: Contract, D: Driver<C> + Clone> {
    /// Sends it to member `member`.
    fn dispatch(
        self: Box<Self>,
        pool: &mut WorkerPool<C, D>,
        member: usize,
        ctx: &mut Context<WorkerPool<C, D>>,
    );

    /// Fails it without sending it.
    fn fail(self: Box<Self>, error: WorkerError);

    /// When it times out.
    fn deadline(&self) -> Instant;

    /// Fails it with the timeout its deadline passed.
    fn expire(self: Box<Self>);

    /// Whether its caller is gone, so it need not be sent.
    fn abandoned(&self) -> bool;
}

impl<C, D, M> Queued<C, D> for PoolRequest<M>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability> + Clone,
    M: InContract<C>,
{
    fn dispatch(
        self: Box<Self>,
        pool: &mut WorkerPool<C, D>,
        member: usize,
        ctx: &mut Context<WorkerPool<C, D>>,
    ) {
        pool.dispatch(member, *self, true, ctx);
    }

    fn fail(self: Box<Self>, error: WorkerError) {
        self.caller.resolve(Err(error));
    }

    fn deadline(&self) -> Instant {
        self.deadline.at
    }

    fn expire(self: Box<Self>) {
        let error = PoolRequest::<M>::timed_out(&self.deadline, true);
        self.caller.resolve(Err(error));
    }

    fn abandoned(&self) -> bool {
        self.caller.abandoned()
    }
}

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Makes sure the queue is swept for requests past their deadline by
    /// `at`: one timer for the whole queue, due at its earliest deadline.
    pub(super) fn sweep_by(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some((due, timer)) = self.sweep {
            if due <= at {
                return;
            }
            ctx.cancel_future(timer);
        }
        let timer = ctx.run_later(at.saturating_duration_since(Instant::now()), |pool, ctx| {
            pool.sweep = None;
            pool.sweep_queue(ctx);
        });
        self.sweep = Some((at, timer));
    }

    /// Fails the waiting requests whose deadline has passed, and drops
    /// those whose caller gave up.
    fn sweep_queue(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for request in self.queue.drain(..) {
            if request.abandoned() {
                self.counters.abandoned += 1;
            } else if request.deadline() <= now {
                self.counters.expired += 1;
                request.expire();
            } else {
                kept.push_back(request);
            }
        }
        self.queue = kept;
        if let Some(next) = self.queue.iter().map(|request| request.deadline()).min() {
            self.sweep_by(next, ctx);
        }
    }
}
