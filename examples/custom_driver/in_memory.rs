//! `InMemory`: a driver written outside the crate, against its public
//! `Driver` trait. The worker is served over an in-memory byte stream
//! (`tokio::io::duplex`) on an arbiter of its own, speaking the same wire
//! protocol a child process speaks, so everything but the process is
//! exercised: framing, encoding, ids, errors, panics, close.
//!
//! Shared by `examples/custom_driver` and the conformance tests.

use std::sync::Arc;

use actix::prelude::*;
use futures::future::LocalBoxFuture;
use isolated_workers::driver::Connection;
use isolated_workers::worker::ServedBy;
use isolated_workers::{serve_io, Driver, SpawnError, WorkerOptions};

/// Bytes the in-memory pipe buffers in each direction.
const PIPE_CAPACITY: usize = 256 * 1024;

/// Serves the actor its factory makes over an in-memory stream.
pub struct InMemory<A> {
    factory: Arc<dyn Fn() -> A + Send + Sync>,
}

impl<A> InMemory<A> {
    /// A driver for the actor `factory` makes (again after each crash).
    pub fn new(factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Self {
            factory: Arc::new(factory),
        }
    }
}

impl<C, A> Driver<C> for InMemory<A>
where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
{
    fn launch(
        &self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>> {
        let (host_end, worker_end) = tokio::io::duplex(PIPE_CAPACITY);
        let arbiter = Arbiter::new();
        let factory = self.factory.clone();
        let options = options.clone();
        arbiter.spawn_fn(move || serve_io::<C, A, _>(worker_end, factory(), &options));
        // The proxy checks the worker's Hello itself; nothing to
        // authenticate in memory. The arbiter stops when the worker goes.
        Box::pin(async move { Ok(Connection::stream(host_end).keep(StopOnDrop(arbiter))) })
    }
}

/// Stops the worker's arbiter when the proxy lets go of the worker.
struct StopOnDrop(Arbiter);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
