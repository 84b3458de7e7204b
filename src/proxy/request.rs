//! Contract messages on the host: each goes to the worker over the link its
//! driver made, and resolves with the reply, a timeout, or the worker's
//! failure.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::reply::Reply;
use super::{Accepted, Link, Worker};
use crate::contract::{Contract, InContract, WorkerMessage};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;
use crate::middleware::trip::{Leg, Trip};
use crate::middleware::Typed;

/// The number of a request's next try, shared between a pool and the
/// member it sent the request to: the member counts its tries from it and
/// leaves there the next one's number when it gives up, so that the pool
/// can send the request on to another member with its attempts counted.
pub(crate) type Tries = Arc<AtomicU32>;

/// A contract message with, if a pool sent it, the count of its tries so
/// far (see [`Tries`]), and its own timeout if it has one.
pub(crate) struct Attempt<M> {
    pub(crate) message: M,
    pub(crate) tries: Option<Tries>,
    /// In place of its message type's (see [`WithTimeout`](super::WithTimeout)).
    pub(crate) timeout: Option<Duration>,
}

impl<M: WorkerMessage> Message for Attempt<M> {
    type Result = M::Result;
}

impl<C, D, M> Accepted<C, D> for M
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = Reply<M>;

    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> Reply<M> {
        worker.request(self, None, None, ctx)
    }
}

impl<C, D, M> Accepted<C, D> for Attempt<M>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = Reply<M>;

    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> Reply<M> {
        worker.request(self.message, self.tries, self.timeout, ctx)
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Sends `message` to the worker, counting its tries in `tries` if a
    /// pool shares them, with `timeout` if it has one of its own (else its
    /// message type's).
    pub(super) fn request<M>(
        &mut self,
        mut message: M,
        tries: Option<Tries>,
        timeout: Option<Duration>,
        ctx: &mut Context<Self>,
    ) -> Reply<M>
    where
        D: Carries<M::Portability>,
        M: InContract<C>,
    {
        if self.needs_respawn() {
            // Start a fresh worker, then handle this message again: it
            // waits in the mailbox behind the restart.
            self.respawn(ctx, Vec::new());
            let again = ctx.address().send(Attempt {
                message,
                tries,
                timeout,
            });
            return Reply::later(Box::pin(async move {
                again.await.unwrap_or(Err(WorkerError::Closed))
            }));
        }
        if let Some(error) = self.unavailable() {
            return Reply::now(Err(error));
        }
        // The host's typed middleware is the request's first leg (see
        // `middleware::trip`); the link passes the others.
        let typed = self.options.middleware.for_type::<M>();
        let mut trip = Trip::new();
        if let Err(refused) = trip.pass_in(Leg::HostTyped, &typed, &mut message) {
            let mut outcome = Err(Leg::HostTyped.refusal(refused.error));
            trip.pass_out(Leg::HostTyped, &typed, &mut outcome);
            return Reply::now(outcome);
        }
        let options = &self.options;
        let timeout = timeout.unwrap_or_else(|| options.timeout_of(M::NAME));
        match self.phase.serving_mut() {
            Some(Link::Stream(link)) => {
                let back = typed.as_ref().map(Typed::share);
                link.submit::<M, C::Serializer>(&message, options, timeout, back, tries)
                    .through(&trip, &typed)
            }
            // A thread worker does not retry (the message moves into it),
            // so there are no tries to count.
            Some(Link::Local(local)) => {
                Reply::later(local.request(message, options, timeout, typed))
            }
            // `unavailable` answered for every other phase.
            Some(Link::Parked(_)) | None => {
                Reply::now(Err(WorkerError::Closed)).through(&trip, &typed)
            }
        }
    }
}
