//! Middleware: code that sees every request and reply on its way, on the
//! host and on the worker, to log, time, check, change or refuse it.
//!
//! A [`Middleware`] sees every message, by wire name and request id, with
//! its [`Direction`] and the [`Side`] it runs on. A [`MessageMiddleware<M>`]
//! sees one message type, as a typed value, and its typed reply. Both are
//! collected, in order, in a [`Middlewares`] chain:
//! [`WorkerOptions::middleware`](crate::WorkerOptions::middleware) on the
//! host, [`worker_entry_with`](crate::worker::worker_entry_with) on the
//! worker ([`Thread::middleware`](crate::Thread::middleware) for thread
//! workers, [`serve_io_with`](crate::worker::serve_io_with) for the worker
//! end of a custom stream driver).
//!
//! # Order
//!
//! As with tower layers, the first middleware added is the outermost: a
//! request passes the chain first to last, its reply last to first. Typed
//! middleware sits outside the untyped: on the host a request meets the
//! typed middleware (on the value), is encoded, then meets the untyped
//! middleware (on the bytes); its reply comes back the other way round.
//! On the worker, a request meets the untyped middleware (bytes), is
//! decoded, meets the typed middleware (value) and the handler; its reply
//! goes back the other way round. So a host chain `[a, b]` and a worker
//! chain `[c, d]`, all untyped, see one round trip as
//! `a b | c d | handler | d c | b a`. (One place keeps this order for
//! every driver: the crate-internal `trip` module.)
//!
//! # What a middleware sees
//!
//! Over a byte stream (child processes, custom stream drivers) the untyped
//! middleware sees the encoded payload ([`Body::Bytes`]) and may replace it
//! (to compress, or sign). A thread worker's messages are moved, never
//! encoded: there it sees the value itself ([`Body::Value`]), which it can
//! downcast to the message (or reply) type. A failed request's reply is
//! [`Body::Failed`] with the error.
//!
//! Response hooks run for every request that passed the request hooks,
//! however it ends (reply, error, timeout, crash, close), `do_send` ones
//! included.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::contract::WorkerMessage;
use crate::error::{RemoteError, WorkerError};

pub(crate) mod trip;

/// Which way a message is going, seen from where the middleware runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Leaving: a request on the host, a reply on the worker.
    Outgoing,
    /// Arriving: a reply on the host, a request on the worker.
    Incoming,
}

/// Where a middleware runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// In the host's proxy.
    Host,
    /// In the worker.
    Worker,
}

/// What a message carries, as far as an untyped middleware can see.
#[derive(Debug)]
pub enum Body<'a> {
    /// The encoded payload (byte-stream drivers). Replace it to change what
    /// is sent on or handed in.
    Bytes(&'a mut Bytes),
    /// The message or reply itself (the thread driver moves values):
    /// downcast it to the message type, or its reply type.
    Value(&'a mut (dyn Any + Send)),
    /// The request failed; this is its error.
    Failed(&'a WorkerError),
}

/// One request, or its reply, passing through a middleware chain.
#[derive(Debug)]
pub struct Passage<'a> {
    side: Side,
    direction: Direction,
    name: &'a str,
    id: u64,
    elapsed: Option<Duration>,
    body: Body<'a>,
}

impl<'a> Passage<'a> {
    pub(crate) fn new(
        side: Side,
        direction: Direction,
        name: &'a str,
        id: u64,
        body: Body<'a>,
    ) -> Self {
        Self {
            side,
            direction,
            name,
            id,
            elapsed: None,
            body,
        }
    }

    /// Where this middleware runs.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Which way the message is going.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether this is a request (as opposed to its reply).
    pub fn is_request(&self) -> bool {
        (self.side == Side::Host) == (self.direction == Direction::Outgoing)
    }

    /// The message's wire name (for a reply, its request's).
    pub fn name(&self) -> &str {
        self.name
    }

    /// The request's id, the same for the request and its reply on one
    /// side. Over a byte stream the worker sees the host's id, except for a
    /// request retried after a crash, which the fresh worker numbers anew
    /// (the host keeps the first id).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// For a reply (or a refusal on its way back): how long since its
    /// request reached this side's untyped chain.
    pub fn elapsed(&self) -> Option<Duration> {
        self.elapsed
    }

    /// What the message carries.
    pub fn body(&mut self) -> &mut Body<'a> {
        &mut self.body
    }
}

/// Sees every request and reply on one side. Both hooks default to doing
/// nothing; implement the ones you need.
///
/// ```
/// use isolated_workers::middleware::{Middleware, Passage};
/// use isolated_workers::RemoteError;
///
/// /// Refuses `DropTables` and logs the rest.
/// struct Guard;
///
/// impl Middleware for Guard {
///     fn on_request(&self, request: &mut Passage<'_>) -> Result<(), RemoteError> {
///         if request.name() == "DropTables" {
///             return Err(RemoteError::new("Forbidden", "not from this host"));
///         }
///         println!("{:?} {} #{}", request.direction(), request.name(), request.id());
///         Ok(())
///     }
///
///     fn on_response(&self, reply: &mut Passage<'_>) {
///         println!("{} #{} took {:?}", reply.name(), reply.id(), reply.elapsed());
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// A request on its way (out of the host, or into the worker). An
    /// `Err` refuses it: it goes no further, and its caller gets the error
    /// ([`WorkerError::Rejected`] on the host, [`WorkerError::Remote`] when
    /// the worker refuses). The refusal travels back like a reply: the
    /// middleware outside this one sees it in its response hook; this one
    /// and those inside it do not.
    ///
    /// # Errors
    /// The refusal, as the caller will see it.
    fn on_request(&self, request: &mut Passage<'_>) -> Result<(), RemoteError> {
        let _ = request;
        Ok(())
    }

    /// A request's reply (or failure) on its way back.
    fn on_response(&self, response: &mut Passage<'_>) {
        let _ = response;
    }
}

/// Sees one message type `M` as a value, and its typed reply.
pub trait MessageMiddleware<M: WorkerMessage>: Send + Sync + 'static {
    /// The request, before it is encoded (host) or after it is decoded
    /// (worker). An `Err` refuses it, as for [`Middleware::on_request`].
    ///
    /// # Errors
    /// The refusal, as the caller will see it.
    fn on_request(&self, message: &mut M) -> Result<(), RemoteError> {
        let _ = message;
        Ok(())
    }

    /// The outcome, after it is decoded (host) or before it is encoded
    /// (worker).
    fn on_reply(&self, reply: &mut Result<M::Reply, WorkerError>) {
        let _ = reply;
    }
}

/// A chain of middleware for one side, outermost first. Cheap to clone.
#[derive(Clone, Default)]
pub struct Middlewares {
    untyped: Arc<Vec<Arc<dyn Middleware>>>,
    /// For each message type, its typed chain (a `TypedChain<M>`).
    typed: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Middlewares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Middlewares")
            .field("untyped", &self.untyped.len())
            .field("typed", &self.typed.len())
            .finish()
    }
}

/// The typed middleware of one message type, outermost first.
type TypedChain<M> = Vec<Arc<dyn MessageMiddleware<M>>>;

impl Middlewares {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `middleware` inside those already added.
    #[must_use]
    pub fn layer(mut self, middleware: impl Middleware) -> Self {
        Arc::make_mut(&mut self.untyped).push(Arc::new(middleware));
        self
    }

    /// Adds `middleware` for message `M`, inside the typed middleware of
    /// `M` already added.
    #[must_use]
    pub fn for_message<M: WorkerMessage>(mut self, middleware: impl MessageMiddleware<M>) -> Self {
        let typed = Arc::make_mut(&mut self.typed);
        let chain = typed
            .entry(TypeId::of::<M>())
            .or_insert_with(|| Arc::new(TypedChain::<M>::new()));
        let mut extended = chain
            .downcast_ref::<TypedChain<M>>()
            .cloned()
            .unwrap_or_default();
        extended.push(Arc::new(middleware));
        *chain = Arc::new(extended);
        self
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.untyped.is_empty() && self.typed.is_empty()
    }

    /// Whether there is untyped middleware (the hot path skips it if not).
    pub(crate) fn has_untyped(&self) -> bool {
        !self.untyped.is_empty()
    }

    /// Runs the untyped request hooks, first to last, until one refuses.
    pub(crate) fn request(&self, passage: &mut Passage<'_>) -> Result<(), Refused> {
        for (at, middleware) in self.untyped.iter().enumerate() {
            middleware
                .on_request(passage)
                .map_err(|error| Refused { at, error })?;
        }
        Ok(())
    }

    /// Runs the response hooks of the middleware outside the one at `at`
    /// (which refused the request), last to first.
    pub(crate) fn response_before(&self, at: usize, passage: &mut Passage<'_>) {
        for middleware in self.untyped[..at].iter().rev() {
            middleware.on_response(passage);
        }
    }

    /// The typed middleware of message `M`, if any.
    pub(crate) fn for_type<M: WorkerMessage>(&self) -> Option<Typed<M>> {
        if self.typed.is_empty() {
            return None;
        }
        let chain = self.typed.get(&TypeId::of::<M>())?.clone();
        chain.downcast::<TypedChain<M>>().ok().map(Typed)
    }
}

/// A request refused by the middleware at position `at` of its chain.
pub(crate) struct Refused {
    pub(crate) at: usize,
    pub(crate) error: RemoteError,
}

/// The typed middleware of one message type.
pub(crate) struct Typed<M: WorkerMessage>(Arc<TypedChain<M>>);

impl<M: WorkerMessage> Typed<M> {
    /// Another handle on the same chain.
    pub(crate) fn share(&self) -> Self {
        Self(self.0.clone())
    }

    /// Runs the request hooks, first to last, until one refuses.
    pub(crate) fn request(&self, message: &mut M) -> Result<(), Refused> {
        for (at, middleware) in self.0.iter().enumerate() {
            middleware
                .on_request(message)
                .map_err(|error| Refused { at, error })?;
        }
        Ok(())
    }

    /// Runs the reply hooks of the middleware outside the one at `at`
    /// (which refused the request), last to first.
    pub(crate) fn reply_before(&self, at: usize, reply: &mut Result<M::Reply, WorkerError>) {
        for middleware in self.0[..at].iter().rev() {
            middleware.on_reply(reply);
        }
    }
}
