//! How a worker hands requests to its actor (over either driver): straight
//! into the actor's context, each handler called inside the request's
//! `tracing` span, so that what a handler logs joins the host's request
//! span.
//!
//! actix's mailbox offers no hook around a handler, and a crate cannot add
//! a `Handler<Traced<M>>` to the user's actor (orphan rules), so the worker
//! runs its own small inbox: an [`ActorFuture`] spawned into the actor's
//! context, which owns `&mut A` and its `Context` while it calls
//! `Handler::handle`. Requests keep their order; a handler that makes its
//! context wait (`ctx.wait`) pauses them as it pauses the mailbox.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::dev::MessageResponse;
use actix::prelude::*;
use tokio::sync::{mpsc, oneshot};

/// A request for the actor: calls its handler with the actor and context.
type Call<A> = Box<dyn FnOnce(&mut A, &mut <A as Actor>::Context) + Send>;

/// The sending end of an actor's inbox. Dropping every `Inbox` (and every
/// `Addr`) of the actor lets it stop, as dropping its last `Addr` would.
pub(crate) struct Inbox<A: Actor> {
    calls: mpsc::UnboundedSender<(tracing::Span, Call<A>)>,
    /// Keeps the actor's mailbox connected (its `Addr` is how it was
    /// reached before; the actor may hand out its own).
    _address: Addr<A>,
}

impl<A> Inbox<A>
where
    A: Actor<Context = Context<A>>,
{
    /// Opens an inbox into the context `actor` will run in.
    pub(crate) fn open(context: &mut Context<A>) -> Self {
        Self::opened(context, Wakes::Actor)
    }

    /// Opens an inbox into the context `actor` will run in, which whoever
    /// calls it polls after each call (a process worker's server runs its
    /// actor's context in its own task): a call then wakes nobody. (A
    /// wake-up would only make that task poll itself once more, for
    /// nothing: ~400 instructions a request.)
    pub(crate) fn open_polled_by_caller(context: &mut Context<A>) -> Self {
        Self::opened(context, Wakes::Nobody)
    }

    fn opened(context: &mut Context<A>, wakes: Wakes) -> Self {
        let (calls, waiting) = mpsc::unbounded_channel();
        context.spawn(InboxRunner { waiting, wakes });
        Inbox {
            calls,
            _address: context.address(),
        }
    }

    /// Hands `message` to the actor's handler, in the current span;
    /// resolves with the handler's result, or `Err` if the actor stopped
    /// first.
    pub(crate) fn call<M>(&self, message: M) -> oneshot::Receiver<M::Result>
    where
        A: Handler<M>,
        M: Message + Send + 'static,
        M::Result: Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let call: Call<A> = Box::new(move |actor, ctx| {
            let response = <A as Handler<M>>::handle(actor, message, ctx);
            response.handle(ctx, Some(reply));
        });
        // If the actor is gone, `result` resolves `Err` at once.
        let _ = self.calls.send((tracing::Span::current(), call));
        result
    }
}

impl<A: Actor> Clone for Inbox<A> {
    fn clone(&self) -> Self {
        Inbox {
            calls: self.calls.clone(),
            _address: self._address.clone(),
        }
    }
}

/// Hands a message of type `M` to an actor through its inbox: what a
/// driver that moves values holds, one per contract message, without
/// naming the actor's type.
pub(crate) type TypedInbox<M> =
    std::sync::Arc<dyn Fn(M) -> oneshot::Receiver<<M as Message>::Result> + Send + Sync>;

/// Whom a call wakes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wakes {
    /// The actor's task, which polls its context when woken.
    Actor,
    /// Nobody: the caller polls the actor's context after each call.
    Nobody,
}

/// The receiving end, running in the actor's context.
struct InboxRunner<A: Actor> {
    waiting: mpsc::UnboundedReceiver<(tracing::Span, Call<A>)>,
    wakes: Wakes,
}

impl<A> ActorFuture<A> for InboxRunner<A>
where
    A: Actor<Context = Context<A>>,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        actor: &mut A,
        ctx: &mut Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        loop {
            // A handler may make the context wait, or stop it: the rest
            // then waits, as the mailbox does. (The context polls this
            // again once it is done waiting.)
            if ctx.waiting() {
                return Poll::Pending;
            }
            let next = match this.wakes {
                Wakes::Actor => this.waiting.poll_recv(task),
                Wakes::Nobody => match this.waiting.try_recv() {
                    Ok(call) => Poll::Ready(Some(call)),
                    Err(mpsc::error::TryRecvError::Empty) => Poll::Pending,
                    Err(mpsc::error::TryRecvError::Disconnected) => Poll::Ready(None),
                },
            };
            match next {
                Poll::Ready(Some((span, call))) => {
                    let _in_request = span.enter();
                    call(actor, ctx);
                }
                // Every inbox is gone: nothing more will come.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
