//! The host side: [`Worker`], the actor whose mailbox forwards contract
//! messages to a worker and resolves each with its reply, a timeout, or the
//! worker's failure.
//!
//! Every message a worker accepts goes through one blanket `Handler`,
//! bounded by [`Accepted`]: contract messages (whose driver can carry them),
//! [`Close`] and [`Status`] always, and the lifecycle messages the driver's
//! capabilities allow. A message outside that set does not compile, and the
//! compiler says which worker does not accept which message, and why.

use std::marker::PhantomData;
use std::time::Instant;

use actix::dev::MessageResponse;
use actix::prelude::*;
use tracing::Instrument;

use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::{ChildProcess, Connection, Driver};
use crate::error::{Crash, CrashReason, SpawnError, WorkerError};
use link::Link;
use phase::Phase;

mod alarm;
mod batch;
mod close;
mod connection;
mod counters;
mod events;
mod inbound;
mod link;
mod local;
mod phase;
mod reply;
mod request;
mod requests;
mod restart;
mod status;
mod stream;
mod timekeeper;
mod with_timeout;

pub use crate::lifecycle::{LifecycleEvent, WorkerId};
pub(crate) use batch::Attempts;
pub use batch::{Batch, BatchReply};
pub use close::{Close, Drain};
pub use connection::{Detach, Disconnect, Reconnect, DEFAULT_IDLE_TIMEOUT};
pub use counters::{Counters, MessageCounts};
pub use events::{EventStream, Subscribe, SubscribeStream, WorkerEvent, SUBSCRIBER_CAPACITY};
pub use reply::Reply;
pub(crate) use request::{Attempt, Tries};
pub use restart::Watch;
pub(crate) use status::seconds;
pub use status::{Status, WorkerState, WorkerStatus};
pub use with_timeout::WithTimeout;

/// The host's proxy for one worker of contract `C`, reached through driver
/// `D`. An actix actor: `Addr<Worker<C, D>>` accepts exactly the messages of
/// `C` (each answered with `Result<Reply, WorkerError>`), alone or many in a
/// [`Batch`], [`Close`] and
/// [`Status`], and the lifecycle messages `D`'s capabilities unlock.
///
/// Dropping the last `Addr` (or stopping the actix System) stops the worker:
/// a child process is killed and reaped and its socket directory removed; a
/// thread worker's arbiter is stopped.
///
/// # Timeouts and cancellation
///
/// Each request has a deadline: [`WorkerOptions::request_timeout`], the
/// one set for its message type with [`WorkerOptions::timeout_for`], or its
/// own when sent as [`WithTimeout`]. When it passes, the request resolves
/// [`WorkerError::Timeout`] and the worker is told to cancel it.
///
/// # Cancel safety
///
/// Dropping the future of `send` (for example inside
/// `tokio::time::timeout`) withdraws the request: a thread worker's
/// request is withdrawn at once; a child process is told to cancel it
/// within 100 ms. On the worker, cancelling drops the handler's pending
/// future if the handler answered with
/// [`Cancellable`](crate::worker::Cancellable); a handler that already
/// returned, or that answers synchronously, or with a plain actix
/// `ResponseFuture`, runs to the end (actix gives no way to stop those),
/// and its reply is discarded. A request sent with `do_send` is never
/// cancelled. Either way the request is not retried: dropping a `send` is
/// never the reason a request runs twice.
pub struct Worker<C: Contract, D: Driver<C> = ChildProcess> {
    options: WorkerOptions,
    /// Where the worker is in its life, with the link to it (see `phase`).
    phase: Phase,
    /// Starts a fresh worker after a crash; `None` for a worker this host
    /// attached to, which it cannot start again.
    driver: Option<D>,
    /// What the proxy counts, for `Status`.
    tally: counters::SharedTally,
    /// When the current worker started.
    started: Instant,
    /// Names this proxy in events and status.
    id: WorkerId,
    /// Who is told of crashes, restarts and giving up.
    watchers: Vec<actix::WeakRecipient<LifecycleEvent>>,
    /// Restarting the worker after crashes.
    restart: restart::Restarts,
    /// Who subscribed to the worker's events (they outlive the worker).
    events: events::Hub<C::Event>,
    _contract: PhantomData<fn() -> (C, D)>,
}

impl<C: Contract, D: Driver<C>> std::fmt::Debug for Worker<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("contract", &C::NAME)
            .field("driver", &std::any::type_name::<D>())
            .field("state", &self.phase.state())
            .finish_non_exhaustive()
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Starts a worker with default [`WorkerOptions`] and returns the address
    /// of its proxy once the worker is ready.
    ///
    /// Must be called inside an actix System; the proxy runs on the current
    /// arbiter.
    ///
    /// # Errors
    /// [`SpawnError`] when the worker cannot be started, exits, or does not
    /// become ready within the startup timeout.
    ///
    /// # Examples
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # isolated_workers::contract! { Calc { Ping => () } }
    /// use isolated_workers::{ChildProcess, Worker};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::<Calc, _>::spawn(ChildProcess::current_exe("calc")).await?;
    /// worker.send(Ping).await??;
    /// # Ok(()) }
    /// ```
    pub async fn spawn(driver: D) -> Result<Addr<Self>, SpawnError> {
        Self::spawn_with(driver, WorkerOptions::default()).await
    }

    /// [`spawn`](Self::spawn) with explicit options.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_with(driver: D, options: WorkerOptions) -> Result<Addr<Self>, SpawnError> {
        let span = tracing::info_span!("spawn", contract = C::NAME);
        let connection = driver.launch(&options).instrument(span.clone()).await?;
        tracing::debug!(parent: &span, "worker ready");
        Ok(Self::start(connection, options, Some(driver)))
    }

    /// Starts the proxy of a worker reached through `connection`.
    fn start(connection: Connection, options: WorkerOptions, driver: Option<D>) -> Addr<Self> {
        Worker::create(move |ctx| Self::new(connection, options, driver, ctx))
    }

    /// The proxy of a worker reached through `connection`, in `ctx`.
    fn new(
        connection: Connection,
        options: WorkerOptions,
        driver: Option<D>,
        ctx: &mut Context<Self>,
    ) -> Self {
        let tally = counters::SharedTally::default();
        let events = events::Hub::default();
        let link = Link::start(connection, &options, &tally, &events, ctx);
        Worker {
            events,
            watchers: options.watchers.clone(),
            options,
            phase: Phase::Serving(link),
            driver,
            tally,
            started: Instant::now(),
            id: WorkerId::next(),
            restart: restart::Restarts::default(),
            _contract: PhantomData,
        }
    }

    /// A thread worker's actor ended (the worker on `thread`): unless the
    /// proxy stopped it, that is a crash, noticed even with no request in
    /// flight.
    fn actor_ended(
        &mut self,
        thread: std::thread::ThreadId,
        ended: Result<(), tokio::task::JoinError>,
        ctx: &mut Context<Self>,
    ) {
        // Only the current worker's end, and only while serving: the
        // proxy itself stops it in every other phase.
        let Some(Link::Local(local)) = self.phase.serving_mut() else {
            return;
        };
        if local.thread() != thread {
            return;
        }
        let (reason, message) = match ended {
            Err(e) if e.is_panic() => (CrashReason::Panic, local.crash_message()),
            _ => (CrashReason::Stopped, None),
        };
        tracing::warn!(contract = C::NAME, %reason, ?message, "thread worker died");
        local.crashed();
        self.crashed(Crash { reason, message });
        self.after_crash(ctx, Vec::new());
    }

    /// The worker died without being asked to: the phase becomes
    /// `Crashed`, and watchers are told.
    fn crashed(&mut self, crash: Crash) {
        self.tell(LifecycleEvent::Crashed {
            worker: self.id,
            reason: crash.reason.clone(),
            message: crash.message.clone(),
        });
        self.phase.crash(crash);
        self.tally.borrow_mut().crashes += 1;
    }

    /// The error a request gets when the worker cannot take it now.
    fn unavailable(&self) -> Option<WorkerError> {
        self.phase.refusal(self.options.restart_window)
    }
}

impl<C: Contract, D: Driver<C>> Actor for Worker<C, D> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.spawn(timekeeper::Timekeeper::new());
        ctx.spawn(crate::unreferenced::StopWhenUnreferenced);
        self.resume_after_restart(ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.drop_carried(ctx);
        self.let_go();
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Lets go of the worker at once (the proxy stopped): see
    /// [`Link::let_go`].
    fn let_go(&mut self) {
        if let Some(link) = self.phase.stopped() {
            link.let_go();
        }
    }
}

/// The messages a `Worker<C, D>` accepts, and how it handles each.
///
/// Implemented for the contract's messages (when `D` can carry them),
/// [`Batch`]es of them and [`WithTimeout`]s of them, for [`Close`], [`Drain`], [`Status`], [`Watch`], [`Subscribe`] and
/// [`SubscribeStream`], and for each lifecycle message under the
/// capability it needs. Not meant to be implemented outside this crate.
#[diagnostic::on_unimplemented(
    message = "a `Worker<{C}, {D}>` does not accept `{Self}`",
    label = "not accepted by this worker",
    note = "a worker accepts the messages of its contract (alone, in a `Batch` or `WithTimeout`), `Close`, `Drain`, `Status`, `Watch`, `Subscribe` and `SubscribeStream`, and the lifecycle messages its driver's capabilities allow"
)]
pub trait Accepted<C: Contract, D: Driver<C>>: Message + Sized {
    #[doc(hidden)]
    type Response: MessageResponse<Worker<C, D>, Self>;

    #[doc(hidden)]
    fn handle(self, worker: &mut Worker<C, D>, ctx: &mut Context<Worker<C, D>>) -> Self::Response;
}

impl<C, D, M> Handler<M> for Worker<C, D>
where
    C: Contract,
    D: Driver<C>,
    M: Accepted<C, D>,
{
    type Result = M::Response;

    fn handle(&mut self, message: M, ctx: &mut Context<Self>) -> M::Response {
        message.handle(self, ctx)
    }
}
