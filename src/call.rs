//! [`Call`]: one `await` from a request to its reply or a [`WorkerError`],
//! for a worker, a pool or a [`Recipient`]. It owns the one place where
//! actix's [`MailboxError`] (the proxy or pool actor is gone) becomes a
//! `WorkerError`, so that callers unwrap one `Result`, not two.

use std::future::Future;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use futures::future::Map;
use futures::FutureExt;

use crate::WorkerError;

/// What [`Call::call`] returns: the request's future (`Request` for an
/// `Addr`, `RecipientRequest` for a `Recipient`), its two results folded
/// into one. It is `Send` whenever the request is.
pub type Called<F, R> =
    Map<F, fn(Result<Result<R, WorkerError>, MailboxError>) -> Result<R, WorkerError>>;

/// Sends a message and answers its reply or a [`WorkerError`], in one
/// `Result`: `addr.call(message).await?` where `addr.send(message).await??`
/// would need two `?` and two error types.
///
/// Implemented for `Addr<A>` of any actor answering `M` with
/// `Result<R, WorkerError>` (a [`Worker`](crate::Worker), a
/// [`WorkerPool`](crate::WorkerPool)) and for `Recipient<M>`. A
/// [`MailboxError`] means the proxy or pool actor has stopped: it becomes
/// [`WorkerError::Closed`], as a request to a closed worker would.
///
/// ```no_run
/// use isolated_workers::prelude::*;
/// # use actix::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Ping;
/// # isolated_workers::contract! { Pinging { Ping => String } }
///
/// async fn ask(pool: &Addr<WorkerPool<Pinging, ChildProcess>>) -> Result<String, WorkerError> {
///     pool.call(Ping).await
/// }
/// ```
pub trait Call<M: Message> {
    /// The reply `M` answers when it succeeds.
    type Reply;
    /// The future `send` answers.
    type Sent: Future<Output = Result<Result<Self::Reply, WorkerError>, MailboxError>>;

    /// Sends `message` (waiting for room in the mailbox, as `send` does)
    /// and resolves with its reply or the error that ended it.
    fn call(&self, message: M) -> Called<Self::Sent, Self::Reply>;
}

impl<A, M, R> Call<M> for Addr<A>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, WorkerError>> + Send + 'static,
    R: Send + 'static,
{
    type Reply = R;
    type Sent = actix::dev::Request<A, M>;

    fn call(&self, message: M) -> Called<Self::Sent, R> {
        self.send(message).map(fold)
    }
}

impl<M, R> Call<M> for Recipient<M>
where
    M: Message<Result = Result<R, WorkerError>> + Send + 'static,
    R: Send + 'static,
{
    type Reply = R;
    type Sent = actix::dev::RecipientRequest<M>;

    fn call(&self, message: M) -> Called<Self::Sent, R> {
        self.send(message).map(fold)
    }
}

/// One `Result` of the two a `send` answers.
fn fold<R>(sent: Result<Result<R, WorkerError>, MailboxError>) -> Result<R, WorkerError> {
    match sent {
        Ok(answered) => answered,
        // `Closed`: the actor stopped, so it takes no more requests.
        // `Timeout` only ends a request given a deadline of actix's own
        // (`Request::timeout`), which `call` never sets.
        Err(MailboxError::Closed | MailboxError::Timeout) => Err(WorkerError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `Ok(n * 2)`, or the error it is told to.
    struct Doubler;

    impl Actor for Doubler {
        type Context = Context<Self>;
    }

    /// A number to double, or an error to answer.
    struct Double(Result<u32, WorkerError>);

    impl Message for Double {
        type Result = Result<u32, WorkerError>;
    }

    impl Handler<Double> for Doubler {
        type Result = Result<u32, WorkerError>;
        fn handle(&mut self, message: Double, _: &mut Context<Self>) -> Self::Result {
            message.0.map(|n| n * 2)
        }
    }

    #[actix::test]
    async fn an_addr_answers_the_reply_and_the_handlers_error() {
        let addr = Doubler.start();
        assert_eq!(addr.call(Double(Ok(21))).await.unwrap(), 42);
        let overloaded = addr
            .call(Double(Err(WorkerError::Overloaded { limit: 3 })))
            .await;
        assert!(matches!(
            overloaded,
            Err(WorkerError::Overloaded { limit: 3 })
        ));
    }

    #[actix::test]
    async fn a_recipient_answers_as_its_addr() {
        let recipient = Doubler.start().recipient::<Double>();
        assert_eq!(recipient.call(Double(Ok(4))).await.unwrap(), 8);
    }

    #[actix::test]
    async fn a_stopped_actor_is_closed() {
        let addr = Doubler.start();
        let recipient = addr.clone().recipient::<Double>();
        // Stopped from inside, with addresses still held.
        addr.send(Stop).await.unwrap();
        assert!(matches!(
            addr.call(Double(Ok(1))).await,
            Err(WorkerError::Closed)
        ));
        assert!(matches!(
            recipient.call(Double(Ok(1))).await,
            Err(WorkerError::Closed)
        ));
    }

    /// Stops the actor that handles it.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    impl Handler<Stop> for Doubler {
        type Result = ();
        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    /// The future is `Send` when the request is: usable from
    /// `tokio::spawn` and multi-threaded executors.
    #[test]
    fn the_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let system = System::new();
        system.block_on(async {
            let addr = Doubler.start();
            let called = addr.call(Double(Ok(1)));
            is_send(&called);
            assert_eq!(called.await.unwrap(), 2);
        });
    }
}
