//! Batches: many requests of one message type sent as one actix message,
//! [`Batch`], answered with one vector of outcomes in the items' order.
//! The proxy hands each item to the same path a lone request takes
//! (`Worker::request`: middleware, the request table, the link), so each
//! keeps its own id, deadline, cancellation, crash policy and span; what a
//! batch saves is the mailbox crossing per request and, over a byte
//! stream, the write per request (the items' frames are queued in one
//! handler call, so actix's framed writer sends them in one write).
//!
//! [`BatchReply`] gathers the items' outcomes; a pool answers a batch
//! with it too (`pool/batch.rs`).

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;

use super::request::Attempt;
use super::{Accepted, Reply, Worker};
use crate::contract::{Contract, InContract, WorkerMessage};
use crate::driver::{Carries, Driver};
use crate::error::WorkerError;

/// Many requests of message type `M`, sent in one go to a
/// [`Worker`] or a [`WorkerPool`](crate::WorkerPool), and answered with
/// one `Vec` holding each item's own `Result`, in the items' order.
///
/// A batch crosses the actix mailbox once, and over a byte stream (a
/// child process) its requests go out in one write; the worker answers
/// each as it completes, and its replies are written together as far as
/// they complete together. Each item is otherwise a request like any
/// other:
///
/// - it passes the host's and the worker's middleware and gets its own
///   request id and `request` span;
/// - it has its message type's timeout, and fails alone with
///   [`WorkerError::Timeout`];
/// - it fails alone with the handler's error, or with
///   [`WorkerError::Overloaded`] when the worker's in-flight bound and
///   queue are full: the items that fit go, in order, and the rest fail
///   (a pool does the same with its members and its queue);
/// - when the worker crashes, it fails [`WorkerError::Crashed`], or is
///   retried, by its message type's crash policy; in a pool it is
///   rerouted to another member as a lone request would be;
/// - dropping the future of `send` cancels every item still pending, and
///   the worker is told, as for a lone request. With `do_send`, every item
///   runs and nothing is cancelled.
///
/// A pool spreads a batch over its members as it would route the items
/// one by one, and sends each member its share as one sub-batch.
///
/// # Why a message
///
/// A batch is an actix message rather than a method, so that it works
/// wherever a message does: with `send`, `do_send` and `try_send`, with
/// `Recipient<Batch<M>>` (a worker and a pool alike), inside other actors'
/// futures. It answers one vector rather than a stream: every item's
/// outcome is there when the future resolves, in the items' order, with
/// no task of the caller's to drive; send several smaller batches to see
/// results sooner.
///
/// # Examples
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Square(u64);
/// # isolated_workers::contract! { Calc { Square => u64 } }
/// use isolated_workers::{Batch, ChildProcess, Worker};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::<Calc, _>::spawn(ChildProcess::current_exe("calc")).await?;
/// let squares = worker.send(Batch::from_iter((1..=64).map(Square))).await?;
/// for (i, square) in squares.into_iter().enumerate() {
///     let n = i as u64 + 1;
///     assert_eq!(square?, n * n);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<M> {
    items: Vec<M>,
}

impl<M> Batch<M> {
    /// A batch of `items`, answered in their order.
    pub fn new(items: Vec<M>) -> Self {
        Self { items }
    }

    /// How many requests the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no request (it is answered at once, with
    /// an empty vector).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The requests, in order.
    pub fn into_inner(self) -> Vec<M> {
        self.items
    }
}

impl<M> From<Vec<M>> for Batch<M> {
    fn from(items: Vec<M>) -> Self {
        Self::new(items)
    }
}

impl<M> FromIterator<M> for Batch<M> {
    fn from_iter<I: IntoIterator<Item = M>>(items: I) -> Self {
        Self::new(items.into_iter().collect())
    }
}

impl<M> IntoIterator for Batch<M> {
    type Item = M;
    type IntoIter = std::vec::IntoIter<M>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<M: WorkerMessage> Message for Batch<M> {
    type Result = Vec<Result<M::Reply, WorkerError>>;
}

/// A pool's share of a batch for one member: each item with the count of
/// its tries (see `Attempt`).
pub(crate) struct Attempts<M>(pub(crate) Vec<Attempt<M>>);

impl<M: WorkerMessage> Message for Attempts<M> {
    type Result = Vec<Result<M::Reply, WorkerError>>;
}

impl<C, D, M> Accepted<C, D> for Batch<M>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = BatchReply<M>;

    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> BatchReply<M> {
        let attempts = (self.items.into_iter())
            .map(|message| Attempt {
                message,
                tries: None,
                timeout: None,
            })
            .collect();
        worker.batch(attempts, ctx)
    }
}

impl<C, D, M> Accepted<C, D> for Attempts<M>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = BatchReply<M>;

    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> BatchReply<M> {
        worker.batch(self.0, ctx)
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Sends every item as [`request`](Self::request) sends one, and
    /// gathers their outcomes.
    fn batch<M>(&mut self, attempts: Vec<Attempt<M>>, ctx: &mut Context<Self>) -> BatchReply<M>
    where
        D: Carries<M::Portability>,
        M: InContract<C>,
    {
        if attempts.is_empty() {
            return BatchReply::gathering(Vec::new());
        }
        if self.needs_respawn() {
            // As for one request, but once for the whole batch: the fresh
            // worker's restart makes the proxy `Restarting`, which would
            // refuse every item after the first.
            self.respawn(ctx, Vec::new());
            let count = attempts.len();
            let again = ctx.address().send(Attempts(attempts));
            return BatchReply::later(Box::pin(async move {
                again
                    .await
                    .unwrap_or_else(|_| (0..count).map(|_| Err(WorkerError::Closed)).collect())
            }));
        }
        let outcomes = attempts.into_iter().map(|attempt| {
            let Attempt {
                message,
                tries,
                timeout,
            } = attempt;
            let reply = self.request(message, tries, timeout, ctx);
            let (sender, outcome) = oneshot::channel();
            // Handed its reply channel as actix would hand a lone
            // request's (see `Reply`).
            <Reply<M> as MessageResponse<Self, M>>::handle(reply, ctx, Some(sender));
            outcome
        });
        BatchReply::gathering(outcomes.collect())
    }
}

/// What a worker or a pool answers a [`Batch`] with: the outcomes of its
/// items, gathered into one vector in the items' order once the last one
/// is known. One task per batch waits for them; dropping the caller's
/// future drops the items' reply channels, which withdraws every item
/// still pending, as dropping a lone request's future does.
pub struct BatchReply<M: WorkerMessage>(BatchKind<M>);

/// What a [`BatchReply`] holds.
enum BatchKind<M: WorkerMessage> {
    /// Each item's outcome, to come on its own channel.
    Gathering(Vec<oneshot::Receiver<M::Result>>),
    /// The whole batch, sent again behind a restart.
    Later(LocalBoxFuture<'static, Vec<M::Result>>),
}

impl<M: WorkerMessage> BatchReply<M> {
    /// The outcomes that will come on `outcomes`, one per item, in order.
    pub(crate) fn gathering(outcomes: Vec<oneshot::Receiver<M::Result>>) -> Self {
        Self(BatchKind::Gathering(outcomes))
    }

    /// The outcomes `outcomes` resolves with.
    fn later(outcomes: LocalBoxFuture<'static, Vec<M::Result>>) -> Self {
        Self(BatchKind::Later(outcomes))
    }
}

impl<M: WorkerMessage> std::fmt::Debug for BatchReply<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchReply")
            .field("message", &M::NAME)
            .finish_non_exhaustive()
    }
}

/// The answer to a `Batch<M>` (or a pool's `Attempts<M>`), from any actor.
impl<A, M, N> MessageResponse<A, N> for BatchReply<M>
where
    A: Actor,
    M: WorkerMessage,
    N: Message<Result = Vec<M::Result>>,
{
    fn handle(self, _: &mut A::Context, reply: Option<OneshotSender<N::Result>>) {
        let outcomes: LocalBoxFuture<'static, Vec<M::Result>> = match self.0 {
            BatchKind::Gathering(outcomes) if outcomes.is_empty() => {
                if let Some(reply) = reply {
                    let _ = reply.send(Vec::new());
                }
                return;
            }
            BatchKind::Gathering(outcomes) => Box::pin(InOrder::new(outcomes)),
            BatchKind::Later(outcomes) => outcomes,
        };
        // `None` for `do_send`: the items run to their end all the same,
        // never abandoned (their channels are kept until answered).
        let Some(mut reply) = reply else {
            actix_rt::spawn(outcomes);
            return;
        };
        actix_rt::spawn(async move {
            tokio::select! {
                outcomes = outcomes => {
                    let _ = reply.send(outcomes);
                }
                // The caller dropped its future: dropping the items'
                // channels withdraws those still pending.
                () = reply.closed() => {}
            }
        });
    }
}

/// The outcomes of a batch's items, gathered in order: resolves once every
/// item's channel has answered.
///
/// By hand rather than `join_all`, which for more than 30 futures puts each
/// in a task node of its own (an allocation, and a waker, per item): here
/// only the first item not yet answered is waited on, since nothing can be
/// handed on before it is, and the items after it are looked at once it
/// is (most are in by then: a worker answers in order unless a handler
/// takes longer).
struct InOrder<R> {
    /// Each item's channel, until its outcome is in.
    waiting: Vec<oneshot::Receiver<Result<R, WorkerError>>>,
    /// The outcomes in so far, of the first `outcomes.len()` items.
    outcomes: Vec<Result<R, WorkerError>>,
}

impl<R> InOrder<R> {
    fn new(waiting: Vec<oneshot::Receiver<Result<R, WorkerError>>>) -> Self {
        let outcomes = Vec::with_capacity(waiting.len());
        Self { waiting, outcomes }
    }
}

// Never pinned through: the outcomes are moved, the channels are `Unpin`.
impl<R> Unpin for InOrder<R> {}

impl<R> Future for InOrder<R> {
    type Output = Vec<Result<R, WorkerError>>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        while let Some(next) = this.waiting.get_mut(this.outcomes.len()) {
            let outcome = std::task::ready!(Pin::new(next).poll(task));
            // A channel dropped unanswered: the proxy itself is gone.
            this.outcomes
                .push(outcome.unwrap_or(Err(WorkerError::Closed)));
        }
        this.waiting.clear();
        Poll::Ready(std::mem::take(&mut this.outcomes))
    }
}
