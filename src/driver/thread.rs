//! The thread driver: the worker actor runs on its own actix [`Arbiter`]
//! (its own OS thread) in the host process. Messages are moved, not
//! serialized; `#[local]` messages (holding `Arc`s, channels, handles) are
//! accepted too.
//!
//! No process isolation: a thread worker protects the host from a panic in
//! its handler (the requests in flight resolve `Crashed` with the panic
//! message), but not from an abort, a segfault or a runaway allocation.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::ThreadId;

use actix::prelude::*;
use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;

use super::{Connection, ConnectionKind, Driver};
use crate::config::WorkerOptions;
use crate::error::SpawnError;
use crate::middleware::Middlewares;
use crate::panic;
use crate::worker::events::{Events, Scope};
use crate::worker::inbox::Inbox;
use crate::worker::routes::{ServedBy, TypedInboxes};

/// Runs the worker actor made by a factory on a new arbiter thread.
///
/// The same actor type and the same contract serve both drivers, so moving
/// a worker between a child process and a thread changes only the driver
/// the host passes to [`Worker::spawn`](crate::Worker::spawn).
///
/// ```no_run
/// # use actix::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # use isolated_workers::WorkerError;
/// # #[derive(Serialize, Deserialize)] struct Ping;
/// # isolated_workers::contract! { Calc { Ping => () } }
/// # #[derive(Default)] struct CalcWorker;
/// # impl Actor for CalcWorker { type Context = Context<Self>; }
/// # impl Handler<Ping> for CalcWorker { type Result = Result<(), WorkerError>;
/// #     fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result { Ok(()) } }
/// use isolated_workers::{Thread, Worker};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::<Calc, _>::spawn(Thread::new(CalcWorker::default)).await?;
/// worker.send(Ping).await??;
/// # Ok(()) }
/// ```
pub struct Thread<A> {
    factory: Arc<dyn Fn() -> A + Send + Sync>,
    middleware: Middlewares,
}

/// Clones share the factory and the middleware: a [`WorkerPool`](crate::WorkerPool)
/// starts each of its members from a clone.
impl<A> Clone for Thread<A> {
    fn clone(&self) -> Self {
        Self {
            factory: self.factory.clone(),
            middleware: self.middleware.clone(),
        }
    }
}

impl<A> std::fmt::Debug for Thread<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thread")
            .field("actor", &std::any::type_name::<A>())
            .finish_non_exhaustive()
    }
}

impl<A: Actor<Context = Context<A>>> Thread<A> {
    /// A driver that starts the actor `factory` makes, on a new arbiter
    /// (again after each crash).
    pub fn new(factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Self {
            factory: Arc::new(factory),
            middleware: Middlewares::new(),
        }
    }

    /// The worker side's middleware (the host's is
    /// [`WorkerOptions::middleware`]). A thread worker's messages are moved
    /// to its actor, so this runs as they are handed over and handed back,
    /// and sees each message as a value.
    pub fn middleware(mut self, middleware: Middlewares) -> Self {
        self.middleware = middleware;
        self
    }
}

/// A running thread worker, as the proxy holds it.
pub(crate) struct LocalConnection {
    pub(crate) typed_inboxes: TypedInboxes,
    pub(crate) arbiter: Arbiter,
    /// The arbiter's thread, whose panic message reports a crash.
    pub(crate) thread: ThreadId,
    /// Resolves when the actor's context ends: it stopped, or panicked.
    pub(crate) ended: tokio::task::JoinHandle<()>,
    /// The worker side's middleware.
    pub(crate) middleware: Middlewares,
    /// The worker's events, moved to the proxy: a boxed
    /// `tokio::sync::mpsc::Receiver<C::Event>`.
    pub(crate) events: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for LocalConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConnection")
            .field("thread", &self.thread)
            .finish_non_exhaustive()
    }
}

impl<C, A> Driver<C> for Thread<A>
where
    C: ServedBy<A>,
    A: Actor<Context = Context<A>>,
{
    fn launch(
        &self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>> {
        let startup = options.startup_timeout;
        let factory = self.factory.clone();
        let middleware = self.middleware.clone();
        Box::pin(async move {
            panic::install_hook();
            let arbiter = Arbiter::new();
            let (started_tx, started) = oneshot::channel();
            let (events, events_to_host) = Events::<C>::moved();
            arbiter.spawn_fn(move || {
                let thread = std::thread::current().id();
                // The events handle is current while the actor is made and
                // whenever its context runs.
                let scope = Scope::new(events);
                let actor =
                    std::panic::catch_unwind(AssertUnwindSafe(|| scope.enter(|| factory())));
                let _ = started_tx.send(match actor {
                    Ok(actor) => {
                        // Run the actor's context as a task of our own, to
                        // learn when it ends (a panic, even while idle).
                        let mut context = Context::new();
                        let inbox = Inbox::open(&mut context);
                        let ended = actix_rt::spawn(scope.around(context.into_future(actor)));
                        Ok((inbox, ended, thread))
                    }
                    Err(_) => Err(panic::take_message(thread)),
                });
            });
            let started = tokio::time::timeout(startup, started).await;
            let (inbox, ended, thread) = match started {
                Ok(Ok(Ok(started))) => started,
                Ok(Ok(Err(message))) => {
                    arbiter.stop();
                    return Err(SpawnError::Panicked {
                        message: message.unwrap_or_else(|| "the worker's factory panicked".into()),
                    });
                }
                Ok(Err(_)) | Err(_) => {
                    arbiter.stop();
                    return Err(SpawnError::Timeout {
                        after: startup,
                        stderr: String::new(),
                    });
                }
            };
            let typed_inboxes = C::routes().typed_inboxes(&inbox);
            Ok(Connection {
                kind: ConnectionKind::Local(LocalConnection {
                    typed_inboxes,
                    arbiter,
                    thread,
                    ended,
                    middleware,
                    events: events_to_host,
                }),
            })
        })
    }
}
