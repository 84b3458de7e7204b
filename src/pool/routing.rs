//! Routing: which member a request goes to (the least loaded with room),
//! sending it there and resolving its caller when the member answers,
//! sending a retried request on to another member when its own gave up,
//! and handing waiting requests to members as they free up.

use std::time::Instant;

use actix::prelude::*;

use super::request::{Deadline, PoolCaller, PoolRequest, Reroute};
use super::status::PoolState;
use super::WorkerPool;
use crate::contract::{Contract, InContract};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;
use crate::proxy::Attempt;

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// The member to send the next request to: the fewest in flight (the
    /// oldest on a tie), among those below the per-member limit.
    pub(super) fn least_loaded(&self) -> Option<usize> {
        let limit = self.options.per_member();
        self.members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.in_flight < limit)
            .min_by_key(|(_, member)| member.in_flight)
            .map(|(index, _)| index)
    }

    /// Sends `request` to member `index`; its caller is resolved, and the
    /// member's count lowered, when the member answers or the caller gives
    /// up.
    ///
    /// A request that `waited` in the queue keeps the deadline it got when
    /// the pool accepted it: it fails with `Timeout` at once if that has
    /// passed, and is withdrawn from the member when it passes.
    pub(super) fn dispatch<M>(
        &mut self,
        index: usize,
        request: PoolRequest<M>,
        waited: bool,
        ctx: &mut Context<Self>,
    ) where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        let PoolRequest {
            message,
            caller,
            deadline,
            reroute,
        } = request;
        let left = waited.then(|| deadline.at.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            self.counters.expired += 1;
            caller.resolve(Err(PoolRequest::<M>::timed_out(&deadline, true)));
            return;
        }
        let member = &mut self.members[index];
        member.took();
        let id = member.id;
        self.counters.dispatched += 1;
        let tries = reroute.as_ref().map(|reroute| reroute.tries.clone());
        // The member times the request out by the pool's timeout for it:
        // its message type's in the members' options, unless it has one
        // of its own. (One that waited is timed out here first, by what
        // was left of it.)
        let sent = member.worker.send(Attempt {
            message,
            tries,
            timeout: Some(deadline.after),
        });
        let gone = caller.hung_up();
        let answered = async move {
            // Only a request that waited needs a timer of its own: the
            // member's timeout is the right one for the rest.
            let expired = async move {
                match left {
                    Some(left) => tokio::time::sleep(left).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A member whose proxy is gone is as good as closed.
                outcome = sent => Some(outcome.unwrap_or(Err(WorkerError::Closed))),
                // Dropping `sent` withdraws the request from the member.
                () = gone => None,
                () = expired => Some(Err(PoolRequest::<M>::timed_out(&deadline, false))),
            }
        };
        ctx.spawn(answered.into_actor(self).map(move |outcome, pool, ctx| {
            pool.settle(id, outcome, caller, deadline, reroute, ctx);
            pool.pump(ctx);
        }));
    }

    /// Member `id` is done with a request: resolves its caller with
    /// `outcome`, or sends it on to another member if the member gave up
    /// and its crash policy retries it; `None` if its caller gave up.
    /// (The caller then pumps the queue.)
    pub(super) fn settle<M>(
        &mut self,
        id: u64,
        outcome: Option<M::Result>,
        caller: PoolCaller<M>,
        deadline: Deadline,
        reroute: Option<Reroute>,
        ctx: &mut Context<Self>,
    ) where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        let error = outcome.as_ref().and_then(|outcome| outcome.as_ref().err());
        self.answered(id, error, ctx);
        let gave_up = matches!(error, Some(WorkerError::GaveUp { .. }));
        match (outcome, reroute) {
            (Some(Err(error)), Some(reroute)) if gave_up => {
                self.reroute(caller, deadline, reroute, error, ctx);
            }
            (Some(outcome), _) => {
                match &outcome {
                    Ok(_) => self.counters.answered += 1,
                    Err(_) => self.counters.failed += 1,
                }
                caller.resolve(outcome);
            }
            (None, _) => self.counters.abandoned += 1,
        }
    }

    /// A member gave up on a request its crash policy retries: sends it
    /// on, counting its tries on, to another member — at once if one has
    /// room, else first in the queue. Fails it with `error` once as many
    /// members as the pool may have gave up on it.
    fn reroute<M>(
        &mut self,
        caller: PoolCaller<M>,
        deadline: Deadline,
        mut reroute: Reroute,
        error: WorkerError,
        ctx: &mut Context<Self>,
    ) where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        reroute.gave_up += 1;
        let goes_on = self.state == PoolState::Open && reroute.gave_up < self.options.ceiling();
        let message = goes_on
            .then(|| M::decode::<C::Serializer>(&reroute.payload).ok())
            .flatten();
        let Some(message) = message else {
            self.counters.failed += 1;
            return caller.resolve(Err(error));
        };
        self.counters.rerouted += 1;
        tracing::debug!(
            contract = C::NAME,
            message = M::NAME,
            "a member gave up on a request; sending it to another"
        );
        let request = PoolRequest {
            message,
            caller,
            deadline,
            reroute: Some(reroute),
        };
        match self.least_loaded() {
            Some(index) => self.dispatch(index, request, true, ctx),
            // First: it waited longest. It was counted against the queue's
            // bound when it was accepted, so it may go over it now.
            None => {
                self.queue.push_front(Box::new(request));
                self.sweep_by(deadline.at, ctx);
                self.grow(ctx);
            }
        }
    }

    /// Member `id` is done with a request, which ended with `error` if
    /// it failed.
    fn answered(&mut self, id: u64, error: Option<&WorkerError>, ctx: &mut Context<Self>) {
        let Some(index) = self.position(id) else {
            return; // it left the pool meanwhile
        };
        let gave_up = matches!(
            error,
            Some(WorkerError::GaveUp { .. } | WorkerError::Closed)
        );
        if gave_up && self.state == PoolState::Open {
            self.replace(index, ctx);
        } else if self.members[index].finished() {
            self.watch_idle(index, ctx);
        }
    }

    /// Sends waiting requests to members with room for them.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        while !self.queue.is_empty() {
            let Some(index) = self.least_loaded() else {
                break;
            };
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            if request.abandoned() {
                self.counters.abandoned += 1;
                continue;
            }
            request.dispatch(self, index, ctx);
        }
    }
}
