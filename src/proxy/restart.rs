//! Restarting crashed workers: lazily, when the next request needs one, or
//! at once under actix's [`Supervisor`]; the restart budget and its backoff;
//! and the [`LifecycleEvent`]s watchers are told.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::phase::Phase;
use super::{stream, Accepted, Link, Worker};
use crate::config::{WhileRestarting, WorkerOptions};
use crate::contract::Contract;
use crate::driver::Driver;
use crate::error::Crash;
use crate::error::{CrashReason, SpawnError, WorkerError};
use crate::lifecycle::LifecycleEvent;

/// What a proxy keeps of restarting its worker across crashes (and across
/// actix's restart of a supervised proxy). The restart under way itself is
/// a phase (`Phase::Restarting`).
#[derive(Default)]
pub(super) struct Restarts {
    /// When the worker was restarted, within the restart window.
    at: VecDeque<Instant>,
    /// Started with [`Worker::supervise`]: restarts at once after a crash.
    supervised: bool,
    /// Set by `Supervised::restarting`: launch a fresh worker, after this
    /// backoff, once actix has restarted the proxy.
    after: Option<Duration>,
    /// Requests to retry on the fresh worker of a supervised restart.
    carried: Vec<stream::Retry>,
}

impl Restarts {
    /// Restarts made within the restart window (as last counted).
    pub(super) fn count(&self) -> u32 {
        self.at.len() as u32
    }
}

/// Subscribes a recipient to a worker's [`LifecycleEvent`]s. Accepted by
/// every worker. The worker holds it weakly: watching does not keep the
/// watcher alive. To miss none, even those of the first moments, pass the
/// watcher in the options instead ([`WorkerOptions::watched_by`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Watch(pub Recipient<LifecycleEvent>);

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Watch {
    type Response = ();

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) {
        worker.watchers.push(self.0.downgrade());
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Starts a worker under actix's [`Supervisor`]: when the worker dies,
    /// the proxy stops, and actix restarts it ([`Supervised::restarting`]),
    /// bringing up a fresh worker at once with the same driver and options.
    /// The `Addr` stays valid throughout. Requests sent during the restart
    /// wait for the fresh worker or fail at once, as
    /// [`WorkerOptions::while_restarting`] says; requests in flight at the
    /// crash follow their [`CrashPolicy`](crate::CrashPolicy), except those
    /// the dead worker never read, which go to the fresh worker.
    ///
    /// Restarts follow the restart budget
    /// ([`WorkerOptions::restart_budget`]), each after its backoff
    /// ([`WorkerOptions::backoff_before`]). Once the budget is spent the
    /// proxy gives up: it stays, answering every request
    /// [`WorkerError::GaveUp`], and tells its watchers
    /// [`LifecycleEvent::GaveUp`].
    ///
    /// A worker started with [`spawn`](Self::spawn) restarts too, but only
    /// when the next request needs it.
    ///
    /// # Errors
    /// [`SpawnError`] when the first worker does not start: a worker that
    /// cannot start is not retried.
    ///
    /// # Examples
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # isolated_workers::contract! { Calc { Ping => () } }
    /// use std::time::Duration;
    /// use isolated_workers::{ChildProcess, Worker, WorkerOptions};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = WorkerOptions::default().restart_budget(3, Duration::from_secs(10));
    /// let worker =
    ///     Worker::<Calc, _>::supervise(ChildProcess::current_exe("calc"), options).await?;
    /// worker.send(Ping).await??;
    /// # Ok(()) }
    /// ```
    pub async fn supervise(driver: D, options: WorkerOptions) -> Result<Addr<Self>, SpawnError> {
        let span = tracing::info_span!("spawn", contract = C::NAME);
        let connection = driver.launch(&options).instrument(span.clone()).await?;
        tracing::debug!(parent: &span, "supervised worker ready");
        Ok(Supervisor::start(move |ctx| {
            let mut worker = Self::new(connection, options, Some(driver), ctx);
            worker.restart.supervised = true;
            worker
        }))
    }

    /// Whether the worker is dead and the next request should start a
    /// fresh one.
    pub(super) fn needs_respawn(&self) -> bool {
        self.driver.is_some() && matches!(self.phase, Phase::Crashed { .. })
    }

    /// The worker died: a supervised proxy stops so that actix restarts it,
    /// carrying the requests to `retry` over; any other restarts only if
    /// some request is to be retried (else with the next request).
    pub(super) fn after_crash(&mut self, ctx: &mut Context<Self>, retry: Vec<stream::Retry>) {
        if self.restart.supervised {
            self.restart.carried = retry;
            ctx.stop();
        } else if !retry.is_empty() {
            self.respawn(ctx, retry);
        }
    }

    /// Starts a fresh worker in place of a crashed one, then sends it the
    /// requests to `retry`. The proxy handles no other message meanwhile
    /// (senders wait in its mailbox), so requests keep their order. Gives
    /// up, failing everything, once the restart budget is spent.
    pub(super) fn respawn(&mut self, ctx: &mut Context<Self>, retry: Vec<stream::Retry>) {
        if self.driver.is_none() {
            // An attached worker: this host cannot start another.
            return self.fail_retries(retry);
        }
        match self.spend_restart() {
            Some(backoff) => self.launch_fresh(ctx, retry, backoff, WhileRestarting::Queue),
            None => self.fail_retries(retry),
        }
    }

    /// Counts a restart against the budget and answers how long to wait
    /// before it; `None` once the budget is spent, when the proxy has given
    /// up.
    fn spend_restart(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let window = self.options.restart_window;
        self.restart
            .at
            .retain(|at| now.duration_since(*at) < window);
        let restarts = self.restart.count();
        if restarts >= self.options.max_restarts {
            let last = match &self.phase {
                Phase::Crashed { crash, .. } => crash.clone(),
                // Not reached: a restart is spent only after a crash.
                _ => Crash::new(CrashReason::ConnectionLost, None),
            };
            tracing::error!(contract = C::NAME, restarts, %last, "worker keeps crashing; giving up");
            self.tell(LifecycleEvent::GaveUp {
                worker: self.id,
                restarts,
                last: last.clone(),
            });
            self.phase.give_up(restarts, last);
            return None;
        }
        self.restart.at.push_back(now);
        Some(self.options.backoff_before(restarts + 1))
    }

    /// Launches a fresh worker after `backoff`, installs it and resubmits
    /// `retry` to it. Under [`WhileRestarting::Queue`] the proxy's mailbox
    /// waits meanwhile.
    fn launch_fresh(
        &mut self,
        ctx: &mut Context<Self>,
        retry: Vec<stream::Retry>,
        backoff: Duration,
        meanwhile: WhileRestarting,
    ) {
        if self.driver.is_none() {
            return self.fail_retries(retry);
        }
        let restart = self.restart.count();
        tracing::info!(
            contract = C::NAME,
            restart,
            ?backoff,
            "starting a fresh worker"
        );
        let span = tracing::info_span!("respawn", contract = C::NAME, restart);
        // The backoff first, which `Close` may cut short; the launch only
        // after it, so that nothing starts that is not wanted.
        let (cancel, cancelled) = oneshot::channel::<()>();
        self.phase.restart(cancel);
        let waited = async move {
            tokio::select! {
                () = tokio::time::sleep(backoff) => true,
                _ = cancelled => false,
            }
        };
        let launched = waited.into_actor(self).then(move |go_on, worker, _| {
            worker.phase.launching();
            let launch = match &worker.driver {
                Some(driver) if go_on => Some(driver.launch(&worker.options)),
                _ => None,
            };
            async move {
                match launch {
                    Some(launch) => Some(launch.await),
                    None => None,
                }
            }
            .instrument(span)
            .into_actor(worker)
        });
        let installed = launched.map(move |launched, worker, ctx| {
            let Some(launched) = launched else {
                // Cancelled by `Close`.
                worker.phase.restart_cancelled();
                return worker.fail_retries(retry);
            };
            match launched {
                Ok(connection) => {
                    let (options, tally, events) = (&worker.options, &worker.tally, &worker.events);
                    let link = Link::start(connection, options, tally, events, ctx);
                    if let Err(unwanted) = worker.phase.restarted(link) {
                        // Closed while it started: not wanted. (`Close` and
                        // `Drain` wait for a launch in progress, so this is
                        // only a guard against bringing a closed worker back.)
                        unwanted.let_go();
                        return worker.fail_retries(retry);
                    }
                    worker.started = Instant::now();
                    worker.tally.borrow_mut().restarts += 1;
                    worker.tell(LifecycleEvent::Restarted {
                        worker: worker.id,
                        restarts: restart,
                    });
                    if let Some(Link::Stream(link)) = worker.phase.serving_mut() {
                        for request in retry {
                            link.resubmit(request);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(contract = C::NAME, %error, "a fresh worker failed to start");
                    worker.crashed(Crash {
                        reason: CrashReason::ConnectionLost,
                        message: Some(format!("restart failed: {error}")),
                    });
                    if worker.restart.supervised {
                        worker.after_crash(ctx, retry);
                    } else {
                        worker.fail_retries(retry);
                    }
                }
            }
        });
        match meanwhile {
            WhileRestarting::Queue => ctx.wait(installed),
            WhileRestarting::Reject => {
                ctx.spawn(installed);
            }
        }
    }

    /// Handles `message` (`Close` or `Drain`) again once the launch in
    /// progress has ended, so that it acts on the fresh worker (or on its
    /// failure) rather than race it.
    pub(super) fn after_launch<M>(&mut self, message: M) -> ResponseActFuture<Self, ()>
    where
        M: Accepted<C, D, Response = ResponseActFuture<Self, ()>> + 'static,
    {
        Box::pin(
            self.phase
                .restart_done()
                .into_actor(self)
                .then(move |(), worker, ctx| message.handle(worker, ctx)),
        )
    }

    /// Resolves requests that will not be retried with the reason.
    fn fail_retries(&self, retry: Vec<stream::Retry>) {
        let error = self.unavailable().unwrap_or(WorkerError::Closed);
        for request in retry {
            request.fail(error.clone());
        }
    }

    /// Tells every watcher still listening about `event`.
    pub(super) fn tell(&mut self, event: LifecycleEvent) {
        self.watchers.retain(|watcher| match watcher.upgrade() {
            Some(watcher) => {
                watcher.do_send(event.clone());
                true
            }
            None => false,
        });
    }
}

impl<C: Contract, D: Driver<C>> Supervised for Worker<C, D> {
    /// The proxy stopped after its worker crashed and actix is restarting
    /// it: spend a restart, or give up. (`started` then launches the fresh
    /// worker.)
    fn restarting(&mut self, _: &mut Context<Self>) {
        match self.spend_restart() {
            Some(backoff) => self.restart.after = Some(backoff),
            None => {
                let carried = std::mem::take(&mut self.restart.carried);
                self.fail_retries(carried);
            }
        }
    }
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Called from `started`: after a supervised restart, launches the
    /// fresh worker.
    pub(super) fn resume_after_restart(&mut self, ctx: &mut Context<Self>) {
        if let Some(backoff) = self.restart.after.take() {
            let carried = std::mem::take(&mut self.restart.carried);
            let meanwhile = self.options.while_restarting;
            self.launch_fresh(ctx, carried, backoff, meanwhile);
        }
    }

    /// Called from `stopped`: the requests carried over to a restart that
    /// will not happen (the proxy stopped for good).
    pub(super) fn drop_carried(&mut self, ctx: &Context<Self>) {
        let restarts = self.restart.supervised && ctx.connected();
        if !restarts {
            let carried = std::mem::take(&mut self.restart.carried);
            self.fail_retries(carried);
        }
    }
}
