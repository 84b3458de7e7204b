//! One request on its way through the pool: the message, and where its
//! outcome goes ([`PoolCaller`]); and what the pool answers actix with
//! ([`PoolReply`]). How a request waits in the queue, whatever its type, is
//! in `queue.rs` (`Queued`).

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use bytes::{Bytes, BytesMut};

use super::WorkerPool;
use crate::config::{CrashPolicy, WorkerOptions};
use crate::contract::{Contract, WorkerMessage};
use crate::driver::Driver;
use crate::error::WorkerError;
use crate::proxy::Tries;

/// The reply channel of one request: actix hands it over just after the
/// pool accepted the request (see [`PoolReply`]); it stays empty for a
/// `do_send`, whose outcome nobody waits for.
pub(super) struct PoolCaller<M: WorkerMessage>(Rc<RefCell<Option<OneshotSender<M::Result>>>>);

impl<M: WorkerMessage> PoolCaller<M> {
    /// A caller, and the answer that connects it to actix's reply channel.
    pub(super) fn new() -> (Self, PoolReply<M>) {
        let slot = Rc::new(RefCell::new(None));
        (Self(slot.clone()), PoolReply(Kind::Accepted(slot)))
    }

    /// Whether the caller dropped its future, so nobody waits any more.
    pub(super) fn abandoned(&self) -> bool {
        self.0
            .borrow()
            .as_ref()
            .is_some_and(OneshotSender::is_closed)
    }

    /// Resolves when the caller drops its future (never for a `do_send`).
    pub(super) fn hung_up(&self) -> impl Future<Output = ()> + 'static {
        let slot = self.0.clone();
        std::future::poll_fn(move |cx| match slot.borrow_mut().as_mut() {
            Some(reply) => reply.poll_closed(cx),
            None => Poll::Pending,
        })
    }

    /// Hands the caller its outcome.
    pub(super) fn resolve(self, outcome: M::Result) {
        if let Some(reply) = self.0.borrow_mut().take() {
            let _ = reply.send(outcome);
        }
    }
}

/// A contract message the pool accepted, not yet answered.
pub(super) struct PoolRequest<M: WorkerMessage> {
    /// The message, as the caller sent it.
    pub(super) message: M,
    /// Where its outcome goes.
    pub(super) caller: PoolCaller<M>,
    /// When it times out.
    pub(super) deadline: Deadline,
    /// Set when its crash policy retries it: it then goes to another
    /// member when its own gives up.
    pub(super) reroute: Option<Reroute>,
}

/// What a request needs to go to another member when the one that has it
/// gives up.
pub(super) struct Reroute {
    /// The message, encoded: the member's copy goes down with it.
    pub(super) payload: Bytes,
    /// Its tries so far, counted on by each member it goes to.
    pub(super) tries: Tries,
    /// Members that gave up while they had it.
    pub(super) gave_up: usize,
}

impl Reroute {
    /// For `message` if its crash policy in `options` retries it (and it
    /// can be encoded, which a `#[local]` message cannot: that one is
    /// moved into its member and goes down with it).
    pub(super) fn of<C: Contract, M: WorkerMessage>(
        message: &M,
        options: &WorkerOptions,
    ) -> Option<Self> {
        let CrashPolicy::Retry { attempts } = options.crash_policy_of(M::NAME) else {
            return None;
        };
        if attempts == 0 {
            return None;
        }
        let mut payload = BytesMut::new();
        message.encode::<C::Serializer>(&mut payload).ok()?;
        Some(Self {
            payload: payload.freeze(),
            tries: Arc::new(AtomicU32::new(1)),
            gave_up: 0,
        })
    }
}

impl<M: WorkerMessage> PoolRequest<M> {
    /// The error of a request whose deadline passed, while it was still
    /// `queued` in the pool or once a member had it.
    pub(super) fn timed_out(deadline: &Deadline, queued: bool) -> WorkerError {
        WorkerError::Timeout {
            after: deadline.after,
            message: M::NAME,
            queued,
        }
    }
}

/// When a request times out: its message type's timeout after the pool
/// accepted it, as a lone worker counts it from when its proxy does.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    /// When it passes.
    pub(super) at: Instant,
    /// The timeout it was made from.
    pub(super) after: Duration,
}

impl Deadline {
    /// The deadline `timeout` from now.
    pub(super) fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        // A timeout too long to add means none.
        let at = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        Self { at, after: timeout }
    }
}

/// What the pool answers a contract message with: an outcome known at
/// once (the pool is closed, or its queue is full), or a request accepted,
/// whose caller is attached to it when actix hands over the reply channel
/// and resolved by the pool when a member answers. No task per request.
pub struct PoolReply<M: WorkerMessage>(Kind<M>);

/// What a [`PoolReply`] holds.
enum Kind<M: WorkerMessage> {
    /// The outcome, known at once.
    Now(M::Result),
    /// The slot through which the request's caller gets actix's reply
    /// channel.
    Accepted(Rc<RefCell<Option<OneshotSender<M::Result>>>>),
}

impl<M: WorkerMessage> PoolReply<M> {
    /// An outcome known at once.
    pub(super) fn now(outcome: Result<M::Reply, WorkerError>) -> Self {
        Self(Kind::Now(outcome))
    }
}

impl<M: WorkerMessage> std::fmt::Debug for PoolReply<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolReply")
            .field("message", &M::NAME)
            .finish_non_exhaustive()
    }
}

/// The answer to a contract message `M`, alone or as a
/// [`WithTimeout<M>`](crate::WithTimeout) (any `N` answered as `M` is).
impl<C, D, M, N> MessageResponse<WorkerPool<C, D>, N> for PoolReply<M>
where
    C: Contract,
    D: Driver<C> + Clone,
    M: WorkerMessage,
    N: Message<Result = M::Result>,
{
    fn handle(self, _: &mut Context<WorkerPool<C, D>>, reply: Option<OneshotSender<M::Result>>) {
        match self.0 {
            Kind::Now(outcome) => {
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Kind::Accepted(slot) => *slot.borrow_mut() = reply,
        }
    }
}
