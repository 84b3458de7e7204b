//! [`Cancellable`]: a handler response that stops when nobody waits for its
//! outcome any more.

use std::future::Future;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use futures::future::LocalBoxFuture;

/// The response of a long-running handler that should stop when the host
/// gives up on the request (its timeout passed, its caller dropped the
/// future, or the worker is closing): the future is dropped at that moment,
/// so the work stops at its next `.await`.
///
/// actix runs a plain `ResponseFuture` to completion even when nobody waits
/// for it; `Cancellable` watches the reply channel and drops the future as
/// soon as the other end is gone. With either driver, a request the host
/// abandons closes that channel on the worker.
///
/// ```
/// use std::time::Duration;
/// use actix::prelude::*;
/// use isolated_workers::worker::Cancellable;
/// use isolated_workers::WorkerError;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Crunch { rounds: u32 }
/// # isolated_workers::contract! { Cruncher { Crunch => u64 } }
///
/// struct CrunchWorker;
/// impl Actor for CrunchWorker { type Context = Context<Self>; }
///
/// impl Handler<Crunch> for CrunchWorker {
///     type Result = Cancellable<Result<u64, WorkerError>>;
///     fn handle(&mut self, crunch: Crunch, _: &mut Context<Self>) -> Self::Result {
///         Cancellable::new(async move {
///             let mut total = 0;
///             for round in 0..crunch.rounds {
///                 total += u64::from(round);
///                 tokio::task::yield_now().await; // a point where it can stop
///             }
///             Ok(total)
///         })
///     }
/// }
/// ```
pub struct Cancellable<T>(LocalBoxFuture<'static, T>);

impl<T> Cancellable<T> {
    /// Wraps the handler's work.
    pub fn new(work: impl Future<Output = T> + 'static) -> Self {
        Self(Box::pin(work))
    }
}

impl<T> std::fmt::Debug for Cancellable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancellable").finish_non_exhaustive()
    }
}

impl<A, M, T> MessageResponse<A, M> for Cancellable<T>
where
    A: Actor,
    M: Message<Result = T>,
    T: 'static,
{
    fn handle(self, _: &mut A::Context, reply: Option<OneshotSender<T>>) {
        // What the work logs belongs to the request it does.
        let work = tracing::Instrument::instrument(self.0, tracing::Span::current());
        actix_rt::spawn(async move {
            match reply {
                Some(mut reply) => {
                    tokio::select! {
                        outcome = work => {
                            let _ = reply.send(outcome);
                        }
                        () = reply.closed() => {}
                    }
                }
                // Sent with `do_send`: nobody waits, so nobody can give up.
                None => {
                    work.await;
                }
            }
        });
    }
}
