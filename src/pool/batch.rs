//! A [`Batch`] sent to a pool: each item is placed as a lone request
//! would be (the least loaded member with room, else the queue, else
//! `Overloaded`), and each member gets its share as one sub-batch
//! (`Attempts`), so that the batch crosses each member's mailbox once.
//! Items that wait in the queue go on one by one as members free up; an
//! item whose member gives up is rerouted alone (`settle`).

use actix::dev::MessageResponse;
use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;

use super::request::{PoolCaller, PoolReply, PoolRequest};
use super::status::PoolState;
use super::WorkerPool;
use crate::contract::{Contract, InContract};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;
use crate::proxy::{Attempt, Attempts, Batch, BatchReply};

/// Every message of the contract, in a batch: see [`Batch`].
impl<C, D, M> Handler<Batch<M>> for WorkerPool<C, D>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability> + Clone,
    M: InContract<C>,
{
    type Result = BatchReply<M>;

    fn handle(&mut self, batch: Batch<M>, ctx: &mut Context<Self>) -> BatchReply<M> {
        let open = self.state == PoolState::Open;
        if open && !batch.is_empty() {
            self.ensure_min(ctx);
        }
        // Each member's share, by its place in `members` (which stays put
        // while the batch is placed).
        let mut shares: Vec<Vec<PoolRequest<M>>> =
            self.members.iter().map(|_| Vec::new()).collect();
        let mut queued = false;
        let mut outcomes = Vec::with_capacity(batch.len());
        for message in batch {
            let (sender, outcome) = oneshot::channel();
            outcomes.push(outcome);
            let placed = match open {
                true => self.place(),
                false => Err(WorkerError::Closed),
            };
            let free = match placed {
                Ok(free) => free,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    continue;
                }
            };
            let (caller, reply) = PoolCaller::new();
            <PoolReply<M> as MessageResponse<Self, M>>::handle(reply, ctx, Some(sender));
            let request = self.request(message, None, caller);
            match free {
                Some(index) => {
                    // Taken now, so that the next item sees the member's
                    // load with it.
                    self.members[index].took();
                    shares[index].push(request);
                }
                None => {
                    self.wait(request, ctx);
                    queued = true;
                }
            }
        }
        if queued {
            self.grow(ctx);
        }
        for (index, share) in shares.into_iter().enumerate() {
            if !share.is_empty() {
                self.dispatch_share(index, share, ctx);
            }
        }
        BatchReply::gathering(outcomes)
    }
}

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Sends member `index` its share of a batch in one message (each
    /// request already counted against it with `took`), and settles each
    /// request when the member answers, or when the batch's caller gives
    /// up (which withdraws the share from the member).
    fn dispatch_share<M>(
        &mut self,
        index: usize,
        share: Vec<PoolRequest<M>>,
        ctx: &mut Context<Self>,
    ) where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        let member = &self.members[index];
        let id = member.id;
        self.counters.dispatched += share.len() as u64;
        let mut attempts = Vec::with_capacity(share.len());
        let mut waiting = Vec::with_capacity(share.len());
        for request in share {
            let tries = (request.reroute.as_ref()).map(|reroute| reroute.tries.clone());
            attempts.push(Attempt {
                message: request.message,
                tries,
                // Its member's own timeout for it, unless it has one of
                // its own (see `dispatch`).
                timeout: Some(request.deadline.after),
            });
            waiting.push((request.caller, request.deadline, request.reroute));
        }
        let sent = member.worker.send(Attempts(attempts));
        // The items of one batch share its caller: they go together.
        let gone = join_all(waiting.iter().map(|(caller, ..)| caller.hung_up()));
        let answered = async move {
            tokio::select! {
                outcomes = sent => Some(outcomes),
                // Dropping `sent` withdraws the share from the member.
                _ = gone => None,
            }
        };
        ctx.spawn(answered.into_actor(self).map(move |outcomes, pool, ctx| {
            let mut outcomes = match outcomes {
                Some(Ok(outcomes)) => outcomes.into_iter(),
                // A member whose proxy is gone is as good as closed.
                Some(Err(_)) => Vec::new().into_iter(),
                None => {
                    for (caller, deadline, reroute) in waiting {
                        pool.settle(id, None, caller, deadline, reroute, ctx);
                    }
                    return pool.pump(ctx);
                }
            };
            for (caller, deadline, reroute) in waiting {
                let outcome = outcomes.next().unwrap_or(Err(WorkerError::Closed));
                pool.settle(id, Some(outcome), caller, deadline, reroute, ctx);
            }
            pool.pump(ctx);
        }));
    }
}
