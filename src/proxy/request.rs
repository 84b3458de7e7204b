//! Contract messages on the host: each goes to the worker over the link its
//! driver made, and resolves with the reply, a timeout, or the worker's
//! failure.

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::stream::Abandon;
use super::{Accepted, Link, Worker};
use crate::contract::{Contract, InContract, WorkerMessage};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;

impl<C, D, M> Accepted<C, D> for M
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = ResponseFuture<Result<M::Reply, WorkerError>>;

    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> Self::Response {
        if let Some(error) = worker.unavailable() {
            return Box::pin(std::future::ready(Err(error)));
        }
        let timeout = worker.options.request_timeout;
        match &mut worker.link {
            Link::Stream(link) => match link.submit::<M, C::Serializer>(&self, &worker.options) {
                Ok((id, outcome)) => {
                    Box::pin(await_reply::<C, D, M>(id, outcome, timeout, ctx.address()))
                }
                Err(error) => Box::pin(std::future::ready(Err(error))),
            },
            Link::Local(local) => local.request(self, timeout, ctx.address()),
            Link::Released => Box::pin(std::future::ready(Err(WorkerError::Closed))),
        }
    }
}

/// Waits for the outcome of stream request `id` and decodes the reply.
async fn await_reply<C, D, M>(
    id: u64,
    outcome: oneshot::Receiver<Result<Bytes, WorkerError>>,
    timeout: std::time::Duration,
    proxy: Addr<Worker<C, D>>,
) -> Result<M::Reply, WorkerError>
where
    C: Contract,
    D: Driver<C>,
    M: WorkerMessage,
{
    let guard = AbandonOnDrop {
        proxy: Some(proxy),
        id,
    };
    let outcome = match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(outcome)) => outcome,
        // The proxy stopped without answering.
        Ok(Err(_)) => Err(WorkerError::Closed),
        Err(_) => {
            drop(guard); // tells the worker to cancel it
            return Err(WorkerError::Timeout {
                after: timeout,
                message: M::NAME,
            });
        }
    };
    guard.disarm();
    let payload = outcome?;
    M::decode_reply::<C::Serializer>(&payload).map_err(|e| WorkerError::Codec {
        what: format!("decode the reply to `{}`", M::NAME),
        detail: e.0,
    })
}

/// Abandons the request when the caller's future is dropped, or times out,
/// before the outcome arrives.
struct AbandonOnDrop<C: Contract, D: Driver<C>> {
    proxy: Option<Addr<Worker<C, D>>>,
    id: u64,
}

impl<C: Contract, D: Driver<C>> AbandonOnDrop<C, D> {
    fn disarm(mut self) {
        self.proxy = None;
    }
}

impl<C: Contract, D: Driver<C>> Drop for AbandonOnDrop<C, D> {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.do_send(Abandon { id: self.id });
        }
    }
}
