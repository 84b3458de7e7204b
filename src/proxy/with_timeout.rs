//! Per-request timeouts: [`WithTimeout`], one contract message with a
//! deadline of its own in place of its message type's, for a worker (here)
//! and a pool (`pool/mod.rs`). The request otherwise takes a lone
//! request's path (`Worker::request`), so it times out, is cancelled on
//! the worker and is counted as any other.

use std::time::Duration;

use actix::prelude::*;

use super::{Accepted, Reply, Worker};
use crate::contract::{Contract, InContract, WorkerMessage};
use crate::driver::{Carries, Driver};

/// One request with its own timeout: sent to a [`Worker`] or a
/// [`WorkerPool`](crate::WorkerPool) in place of `message`, and answered
/// as `message` is, with `Result<M::Reply, WorkerError>`.
///
/// The timeout replaces the one the worker's options give the message's
/// type ([`WorkerOptions::request_timeout`](crate::WorkerOptions::request_timeout),
/// [`WorkerOptions::timeout_for`](crate::WorkerOptions::timeout_for)), shorter
/// or longer, for this request alone. When it passes, the request resolves
/// [`WorkerError::Timeout`](crate::WorkerError::Timeout) (with `after` set
/// to it) and the worker is told to cancel it, exactly as at a type's
/// timeout; a pool counts it from when it accepted the request, as it
/// does a type's. Unlike wrapping the `send` in `tokio::time::timeout`,
/// the caller gets a `WorkerError`, and the worker hears of it at once
/// rather than at the next sweep for abandoned requests.
///
/// # Examples
///
/// ```no_run
/// # use std::time::Duration;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Render { scene: String }
/// # isolated_workers::contract! { Renderer { Render => Vec<u8> } }
/// use isolated_workers::{ChildProcess, Worker, WorkerError, WithTimeout};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::<Renderer, _>::spawn(ChildProcess::current_exe("renderer")).await?;
/// let render = Render { scene: "teapot".into() };
/// match worker.send(WithTimeout::new(render, Duration::from_millis(250))).await? {
///     Ok(image) => println!("{} bytes", image.len()),
///     Err(WorkerError::Timeout { after, .. }) => println!("no image within {after:?}"),
///     Err(other) => return Err(other.into()),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithTimeout<M> {
    /// The request.
    message: M,
    /// Its own timeout.
    timeout: Duration,
}

impl<M> WithTimeout<M> {
    /// `message`, to time out after `timeout`.
    pub fn new(message: M, timeout: Duration) -> Self {
        Self { message, timeout }
    }

    /// The request's own timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The request, and its timeout.
    pub fn into_parts(self) -> (M, Duration) {
        (self.message, self.timeout)
    }
}

impl<M: WorkerMessage> Message for WithTimeout<M> {
    type Result = M::Result;
}

impl<C, D, M> Accepted<C, D> for WithTimeout<M>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability>,
    M: InContract<C>,
{
    type Response = Reply<M>;

    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> Reply<M> {
        worker.request(self.message, None, Some(self.timeout), ctx)
    }
}
