//! How a contract message's outcome reaches its caller: [`Reply`], handed
//! to actix as the message's response, and the type-erased [`Caller`] the
//! proxy resolves when the worker answers.

use std::cell::RefCell;
use std::rc::Rc;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;

use super::stream::Requests;
use super::Worker;
use crate::contract::{Contract, WorkerMessage};
use crate::driver::Driver;
use crate::error::WorkerError;
use crate::wire::serializer::CodecError;

/// The caller of one request, with the type knowledge to decode its reply.
pub(super) trait Caller {
    fn resolve(self: Box<Self>, outcome: Result<Bytes, WorkerError>);
    /// Whether the caller dropped its future, so nobody waits any more.
    fn gone(&self) -> bool;
}

struct TypedCaller<M: WorkerMessage> {
    reply: OneshotSender<Result<M::Reply, WorkerError>>,
    decode: fn(&[u8]) -> Result<M::Reply, CodecError>,
}

impl<M: WorkerMessage> Caller for TypedCaller<M> {
    fn resolve(self: Box<Self>, outcome: Result<Bytes, WorkerError>) {
        let result = outcome.and_then(|payload| {
            (self.decode)(&payload).map_err(|e| WorkerError::Codec {
                what: format!("decode the reply to `{}`", M::NAME),
                detail: e.0,
            })
        });
        let _ = self.reply.send(result);
    }

    fn gone(&self) -> bool {
        self.reply.is_closed()
    }
}

/// What the proxy answers a contract message with: an outcome known at
/// once, a request registered in the link (its caller is attached when
/// actix hands over the reply channel, and resolved by the proxy itself —
/// no task per request), or a future (thread workers).
pub struct Reply<M: WorkerMessage>(ReplyKind<M>);

enum ReplyKind<M: WorkerMessage> {
    Now(Result<M::Reply, WorkerError>),
    Registered {
        requests: Rc<RefCell<Requests>>,
        id: u64,
        decode: fn(&[u8]) -> Result<M::Reply, CodecError>,
    },
    Later(LocalBoxFuture<'static, Result<M::Reply, WorkerError>>),
}

impl<M: WorkerMessage> Reply<M> {
    pub(super) fn now(outcome: Result<M::Reply, WorkerError>) -> Self {
        Self(ReplyKind::Now(outcome))
    }

    pub(super) fn registered(
        requests: Rc<RefCell<Requests>>,
        id: u64,
        decode: fn(&[u8]) -> Result<M::Reply, CodecError>,
    ) -> Self {
        Self(ReplyKind::Registered {
            requests,
            id,
            decode,
        })
    }

    pub(super) fn later(outcome: LocalBoxFuture<'static, Result<M::Reply, WorkerError>>) -> Self {
        Self(ReplyKind::Later(outcome))
    }
}

impl<M: WorkerMessage> std::fmt::Debug for Reply<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("message", &M::NAME)
            .finish_non_exhaustive()
    }
}

impl<C, D, M> MessageResponse<Worker<C, D>, M> for Reply<M>
where
    C: Contract,
    D: Driver<C>,
    M: WorkerMessage,
{
    fn handle(self, _: &mut Context<Worker<C, D>>, reply: Option<OneshotSender<M::Result>>) {
        let Some(reply) = reply else {
            return; // do_send: nobody waits
        };
        match self.0 {
            ReplyKind::Now(outcome) => {
                let _ = reply.send(outcome);
            }
            ReplyKind::Registered {
                requests,
                id,
                decode,
            } => {
                requests
                    .borrow_mut()
                    .attach(id, Box::new(TypedCaller::<M> { reply, decode }));
            }
            ReplyKind::Later(outcome) => {
                let mut reply = reply;
                actix_rt::spawn(async move {
                    tokio::select! {
                        outcome = outcome => {
                            let _ = reply.send(outcome);
                        }
                        // The caller dropped its future: drop the request,
                        // which withdraws it from the worker.
                        () = reply.closed() => {}
                    }
                });
            }
        }
    }
}
