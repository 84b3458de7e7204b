//! Contract messages on the host: each goes to the worker over the link its
//! driver made, and resolves with the reply, a timeout, or the worker's
//! failure.

use actix::prelude::*;

use super::reply::Reply;
use super::{Accepted, Link, Worker};
use crate::contract::{Contract, InContract};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;
use crate::middleware::Typed;

impl<C, D, M> Accepted<C, D> for M
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = Reply<M>;

    fn handle(mut self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> Reply<M> {
        if worker.needs_respawn() {
            // Start a fresh worker, then handle this message again: it
            // waits in the mailbox behind the restart.
            worker.respawn(ctx, Vec::new());
            let again = ctx.address().send(self);
            return Reply::later(Box::pin(async move {
                again.await.unwrap_or(Err(WorkerError::Closed))
            }));
        }
        if let Some(error) = worker.unavailable() {
            return Reply::now(Err(error));
        }
        let typed = worker.options.middleware.for_type::<M>();
        if let Some(typed) = &typed {
            if let Err(refused) = typed.request(&mut self) {
                let mut outcome = Err(WorkerError::Rejected(refused.error));
                typed.reply_before(refused.at, &mut outcome);
                return Reply::now(outcome);
            }
        }
        let options = &worker.options;
        match &mut worker.link {
            Link::Stream(link) => {
                let back = typed.as_ref().map(Typed::share);
                link.submit::<M, C::Serializer>(&self, options, back)
                    .through(typed.as_ref())
            }
            Link::Local(local) => Reply::later(local.request(self, options, typed)),
            Link::Parked(_) => Reply::now(Err(WorkerError::Disconnected)).through(typed.as_ref()),
            Link::Released => Reply::now(Err(WorkerError::Closed)).through(typed.as_ref()),
        }
    }
}
