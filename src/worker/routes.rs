//! Dispatch by wire name: for each message of a contract, how to decode it,
//! hand it to the worker actor, and encode the reply.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::marker::PhantomData;

use actix::prelude::*;
use bytes::BytesMut;
use futures::future::LocalBoxFuture;

use crate::contract::{Contract, WorkerMessage};
use crate::error::{ProtocolFailure, RemoteError, WorkerError};
use crate::ids::IdHasher;
use crate::middleware::trip::{Leg, Trip};
use crate::middleware::Middlewares;
use crate::wire::serializer::CodecError;
use crate::wire::Serializer;

use super::inbox::{Inbox, TypedInbox};

/// A contract that actor `A` can serve: implemented by
/// [`contract!`](crate::contract!) for every actor that handles all of the
/// contract's messages.
#[diagnostic::on_unimplemented(
    message = "`{A}` cannot serve contract `{Self}`",
    note = "a worker actor must implement `Handler<M>` for every message `M` of its contract"
)]
pub trait ServedBy<A: Actor>: Contract {
    /// The dispatch table for this contract.
    fn routes() -> Routes<A, Self::Serializer>;
}

/// Encodes a reply into the server's buffer.
pub(crate) type ReplyEncoder = Box<dyn FnOnce(&mut BytesMut) -> Result<(), CodecError>>;

/// What became of one request on the worker.
pub(crate) enum Outcome {
    /// The handler's reply, to be encoded where it is written.
    Reply(ReplyEncoder),
    /// The handler (or the typed middleware) failed.
    Failed(RemoteError),
    /// The request could not be served (unknown or undecodable).
    Unserved(ProtocolFailure),
    /// The actor is gone (it panicked); the worker must report and exit.
    ActorStopped,
}

type Route<A> = fn(&Inbox<A>, &[u8], &Middlewares) -> LocalBoxFuture<'static, Outcome>;

/// Makes the [`TypedInbox`] of one message type `M` (boxed as `Any`).
type TypedInboxMaker<A> = fn(&Inbox<A>) -> Box<dyn Any + Send>;

/// The dispatch table of a worker actor `A` whose payloads are encoded with
/// `S`. Built by [`ServedBy::routes`]; users do not build it by hand.
///
/// It serves both kinds of driver: by wire name for drivers that carry
/// bytes, and by message type (a typed handle per message) for drivers
/// that move values.
pub struct Routes<A: Actor, S> {
    /// Hashed as request ids are: a lookup per request, keyed by names of
    /// the contract and looked up by the names its trusted host sends.
    by_name: HashMap<&'static str, Route<A>, BuildHasherDefault<IdHasher>>,
    by_type: Vec<(TypeId, TypedInboxMaker<A>)>,
    _serializer: PhantomData<fn() -> S>,
}

impl<A: Actor, S> std::fmt::Debug for Routes<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl<A: Actor, S: Serializer> Default for Routes<A, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Actor, S: Serializer> Routes<A, S> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            by_name: HashMap::default(),
            by_type: Vec::new(),
            _serializer: PhantomData,
        }
    }

    /// Routes message `M` to the actor.
    ///
    /// # Panics
    /// When two messages of a contract share a wire name: a mistake in the
    /// contract, reported when the worker starts.
    pub fn add<M>(&mut self)
    where
        M: WorkerMessage,
        A: Handler<M> + Actor<Context = Context<A>>,
    {
        let previous = self.by_name.insert(M::NAME, route::<A, M, S>);
        assert!(
            previous.is_none(),
            "two messages of one contract share the wire name `{}`",
            M::NAME
        );
        self.by_type.push((TypeId::of::<M>(), |inbox| {
            let inbox = inbox.clone();
            let typed: TypedInbox<M> = std::sync::Arc::new(move |message| inbox.call(message));
            Box::new(typed)
        }));
    }

    /// A [`TypedInbox`] for every message `M` of the contract, keyed by
    /// `TypeId::of::<M>()`: how a driver that moves values reaches the
    /// actor behind `inbox`.
    pub(crate) fn typed_inboxes(&self, inbox: &Inbox<A>) -> TypedInboxes {
        TypedInboxes(
            self.by_type
                .iter()
                .map(|(type_id, make)| (*type_id, make(inbox)))
                .collect(),
        )
    }

    /// Starts handling a request for message `name`.
    pub(crate) fn dispatch(
        &self,
        actor: &Inbox<A>,
        name: &str,
        payload: &[u8],
        middleware: &Middlewares,
    ) -> LocalBoxFuture<'static, Outcome> {
        match self.by_name.get(name) {
            Some(route) => route(actor, payload, middleware),
            None => Box::pin(std::future::ready(Outcome::Unserved(
                ProtocolFailure::UnknownMessage { name: name.into() },
            ))),
        }
    }
}

/// How to hand each contract message to a worker actor, by type.
#[derive(Debug, Default)]
pub(crate) struct TypedInboxes(HashMap<TypeId, Box<dyn Any + Send>>);

impl TypedInboxes {
    /// How to deliver message `M`; `None` only if `M` is not in the
    /// contract the table was built for (the proxy's bounds rule that out).
    pub(crate) fn get<M>(&self) -> Option<&TypedInbox<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
    {
        self.0.get(&TypeId::of::<M>())?.downcast_ref()
    }
}

fn route<A, M, S>(
    actor: &Inbox<A>,
    payload: &[u8],
    middleware: &Middlewares,
) -> LocalBoxFuture<'static, Outcome>
where
    A: Handler<M> + Actor<Context = Context<A>>,
    M: WorkerMessage,
    S: Serializer,
{
    let mut message: M = match M::decode::<S>(payload) {
        Ok(message) => message,
        Err(e) => {
            return Box::pin(std::future::ready(Outcome::Unserved(
                ProtocolFailure::Undecodable {
                    message: M::NAME.into(),
                    detail: e.0,
                },
            )))
        }
    };
    // The worker's typed middleware is the request's last leg (see
    // `middleware::trip`); the server passed the untyped one.
    let typed = middleware.for_type::<M>();
    let mut trip = Trip::new();
    if let Err(refused) = trip.pass_in(Leg::WorkerTyped, &typed, &mut message) {
        let mut outcome = Err(Leg::WorkerTyped.refusal(refused.error));
        trip.pass_out(Leg::WorkerTyped, &typed, &mut outcome);
        return Box::pin(std::future::ready(Outcome::of::<M, S>(outcome)));
    }
    let handled = actor.call(message);
    Box::pin(async move {
        let Ok(mut outcome) = handled.await else {
            return Outcome::ActorStopped;
        };
        // It went through the typed middleware (a refusal returned above).
        // Said so here rather than carried in every request's future.
        let trip = Trip::through(Leg::WorkerTyped, None);
        trip.pass_out(Leg::WorkerTyped, &typed, &mut outcome);
        Outcome::of::<M, S>(outcome)
    })
}

impl Outcome {
    /// The outcome of a handled request of message `M`.
    fn of<M: WorkerMessage, S: Serializer>(outcome: Result<M::Reply, WorkerError>) -> Self {
        match outcome {
            Ok(reply) => Outcome::Reply(Box::new(move |out| M::encode_reply::<S>(&reply, out))),
            Err(error) => Outcome::Failed(error.into()),
        }
    }
}
