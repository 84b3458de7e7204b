//! How a contract message's outcome reaches its caller: [`Reply`], handed
//! to actix as the message's response, and `TypedCaller`, the
//! [`Caller`] the proxy resolves when the worker answers.

use std::rc::Rc;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;

use super::requests::{Attach, Caller};
use super::Worker;
use crate::contract::{Contract, WorkerMessage};
use crate::driver::Driver;
use crate::error::WorkerError;
use crate::middleware::trip::{Leg, Trip, Untyped};
use crate::middleware::{Middlewares, Typed};
use crate::wire::serializer::CodecError;

/// The caller of one request of type `M`.
struct TypedCaller<M: WorkerMessage> {
    /// `None` for `do_send`: nobody waits, but the middleware sees the end.
    reply: Option<OneshotSender<Result<M::Reply, WorkerError>>>,
    decode: fn(&[u8]) -> Result<M::Reply, CodecError>,
    /// The middleware the reply passes on its way back, if any.
    middleware: Option<Box<Returning<M>>>,
}

/// What a reply needs to pass the host's middleware on its way back.
pub(super) struct Returning<M: WorkerMessage> {
    pub(super) untyped: Middlewares,
    pub(super) typed: Option<Typed<M>>,
    pub(super) id: u64,
    /// How far the request got through the host's chains, and since when.
    pub(super) trip: Trip,
}

impl<M: WorkerMessage> Returning<M> {
    /// Passes `outcome` through the untyped middleware, last to first.
    pub(super) fn untyped(&self, outcome: &mut Result<Bytes, WorkerError>) {
        let back = Untyped::bytes(M::NAME, self.id, outcome);
        self.trip.pass_out(Leg::HostUntyped, &self.untyped, back);
    }

    /// Passes the decoded outcome through `M`'s typed middleware, last to
    /// first.
    fn typed(&self, outcome: &mut Result<M::Reply, WorkerError>) {
        self.trip.pass_out(Leg::HostTyped, &self.typed, outcome);
    }
}

impl<M: WorkerMessage> Caller for TypedCaller<M> {
    fn resolve(self: Box<Self>, mut outcome: Result<Bytes, WorkerError>) {
        if let Some(middleware) = &self.middleware {
            middleware.untyped(&mut outcome);
        }
        let mut result = outcome.and_then(|payload| {
            (self.decode)(&payload).map_err(|e| WorkerError::UndecodableReply {
                message: M::NAME,
                detail: e.0,
            })
        });
        if let Some(middleware) = &self.middleware {
            middleware.typed(&mut result);
        }
        if let Some(reply) = self.reply {
            let _ = reply.send(result);
        }
    }

    fn hung_up(&self) -> bool {
        // A `do_send` is never abandoned: nobody was waiting to begin with.
        self.reply.as_ref().is_some_and(OneshotSender::is_closed)
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
        requests: Rc<dyn Attach>,
        id: u64,
        decode: fn(&[u8]) -> Result<M::Reply, CodecError>,
        middleware: Option<Box<Returning<M>>>,
    },
    Later(LocalBoxFuture<'static, Result<M::Reply, WorkerError>>),
}

impl<M: WorkerMessage> Reply<M> {
    pub(super) fn now(outcome: Result<M::Reply, WorkerError>) -> Self {
        Self(ReplyKind::Now(outcome))
    }

    pub(super) fn registered(
        requests: Rc<dyn Attach>,
        id: u64,
        decode: fn(&[u8]) -> Result<M::Reply, CodecError>,
        middleware: Option<Box<Returning<M>>>,
    ) -> Self {
        Self(ReplyKind::Registered {
            requests,
            id,
            decode,
            middleware,
        })
    }

    /// Passes an outcome known at once back through `M`'s typed
    /// middleware, as far as `trip` went in (the untyped middleware, if the
    /// request reached it, has seen the outcome already).
    // Inlined where the reply is made: out of line, every request's reply
    // was moved in and out of it (callgrind: 28 instructions a request).
    #[inline]
    pub(super) fn through(mut self, trip: &Trip, typed: &Option<Typed<M>>) -> Self {
        if let ReplyKind::Now(outcome) = &mut self.0 {
            trip.pass_out(Leg::HostTyped, typed, outcome);
        }
        self
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

/// The answer to `M`, or to a message that wraps it (`Attempt<M>`).
impl<C, D, M, N> MessageResponse<Worker<C, D>, N> for Reply<M>
where
    C: Contract,
    D: Driver<C>,
    M: WorkerMessage,
    N: Message<Result = M::Result>,
{
    #[inline]
    fn handle(self, _: &mut Context<Worker<C, D>>, reply: Option<OneshotSender<M::Result>>) {
        // `reply` is `None` for `do_send`: nobody waits, but the request
        // runs, and the middleware sees how it ends.
        match self.0 {
            ReplyKind::Now(outcome) => {
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            ReplyKind::Registered {
                requests,
                id,
                decode,
                middleware,
            } => {
                if reply.is_none() && middleware.is_none() {
                    return; // a `do_send` with nothing to tell
                }
                let caller = TypedCaller::<M> {
                    reply,
                    decode,
                    middleware,
                };
                requests.attach(id, Box::new(caller));
            }
            ReplyKind::Later(outcome) => {
                let Some(mut reply) = reply else {
                    actix_rt::spawn(outcome);
                    return;
                };
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
