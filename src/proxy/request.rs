//! Contract messages on the host: each is stamped with an id, encoded,
//! written (or queued for a free in-flight slot), and answered by a future
//! that resolves with the reply, a timeout, or the worker's failure.

use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;
use tokio::sync::oneshot;

use super::{Pending, Worker};
use crate::contract::{Contract, InContract, WorkerMessage};
use crate::driver::Driver;
use crate::error::WorkerError;
use crate::wire::envelope::Header;
use crate::wire::frame::Frame;
use crate::wire::Serializer;

impl<C, D, M> Handler<M> for Worker<C, D>
where
    C: Contract,
    D: Driver,
    M: InContract<C>,
{
    type Result = ResponseFuture<Result<M::Reply, WorkerError>>;

    fn handle(&mut self, message: M, ctx: &mut Context<Self>) -> Self::Result {
        let (id, reply) = match self.submit(message) {
            Ok(submitted) => submitted,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        let guard = AbandonOnDrop {
            proxy: Some(ctx.address().recipient()),
            id,
        };
        let timeout = self.options.request_timeout;
        Box::pin(async move {
            let outcome = match tokio::time::timeout(timeout, reply).await {
                Ok(Ok(outcome)) => outcome,
                // The proxy stopped without answering.
                Ok(Err(_)) => Err(WorkerError::Closed),
                Err(_) => Err(WorkerError::Timeout {
                    after: timeout,
                    message: M::NAME,
                }),
            };
            if !matches!(outcome, Err(WorkerError::Timeout { .. })) {
                guard.disarm();
            }
            let payload = outcome?;
            C::Serializer::decode::<M::Reply>(&payload).map_err(|e| WorkerError::Codec {
                what: format!("decode the reply to `{}`", M::NAME),
                detail: e.0,
            })
        })
    }
}

impl<C: Contract, D: Driver> Worker<C, D> {
    /// Registers and writes (or queues) one request; returns its id and the
    /// channel its outcome arrives on.
    fn submit<M: WorkerMessage>(
        &mut self,
        message: M,
    ) -> Result<(u64, oneshot::Receiver<Result<bytes::Bytes, WorkerError>>), WorkerError> {
        if let Some(error) = self.unavailable() {
            return Err(error);
        }
        let can_send = self.in_flight < self.options.max_in_flight;
        if !can_send && self.queue.len() >= self.options.max_queued {
            return Err(WorkerError::Overloaded {
                limit: self.options.max_queued,
            });
        }
        let mut payload = BytesMut::new();
        C::Serializer::encode(&message, &mut payload).map_err(|e| WorkerError::Codec {
            what: format!("encode `{}`", M::NAME),
            detail: e.0,
        })?;
        // Header and length prefixes stay well under 256 bytes.
        if payload.len() + 256 > self.options.max_frame_len {
            return Err(WorkerError::TooLarge {
                message: M::NAME,
                size: payload.len(),
                limit: self.options.max_frame_len,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame {
            header: Header::Request {
                id,
                name: M::NAME.to_owned(),
            },
            payload: payload.freeze(),
        };
        let (reply, outcome) = oneshot::channel();
        self.pending.insert(
            id,
            Pending {
                message: M::NAME,
                reply,
                sent: can_send,
            },
        );
        if can_send {
            self.in_flight += 1;
            if let Some(writer) = &mut self.writer {
                writer.write(frame);
            }
        } else {
            self.queue.push_back(frame);
        }
        Ok((id, outcome))
    }
}

/// Tells the proxy that nobody waits for request `id` any more.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Abandon {
    id: u64,
}

impl<C: Contract, D: Driver> Handler<Abandon> for Worker<C, D> {
    type Result = ();

    fn handle(&mut self, Abandon { id }: Abandon, _: &mut Self::Context) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        tracing::debug!(
            id,
            message = pending.message,
            "request abandoned; cancelling it"
        );
        if pending.sent {
            if let Some(writer) = &mut self.writer {
                writer.write(Frame::bare(Header::Cancel { id }));
            }
        }
        // Nobody listens any more; the outcome only frees the slot.
        self.resolve(
            id,
            Err(WorkerError::Timeout {
                after: Duration::ZERO,
                message: "",
            }),
        );
    }
}

/// Abandons the request when the caller's future is dropped or times out
/// before the outcome arrives, so that the worker is told to cancel it.
struct AbandonOnDrop {
    proxy: Option<Recipient<Abandon>>,
    id: u64,
}

impl AbandonOnDrop {
    fn disarm(mut self) {
        self.proxy = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.do_send(Abandon { id: self.id });
        }
    }
}
