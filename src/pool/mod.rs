//! Pools: [`WorkerPool`], an actor that spreads the messages of a contract
//! over several workers of that contract — the least loaded first, the
//! rest waiting in a bounded queue — growing under load, shrinking when
//! idle, and replacing members that give up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;

use crate::contract::{Contract, InContract};
use crate::driver::{Carries, ChildProcess, Driver};
use crate::error::{SpawnError, WorkerError};
use crate::proxy::{Close, LifecycleEvent, Status, WithTimeout, Worker, WorkerId, WorkerStatus};
use crate::unreferenced::StopWhenUnreferenced;
use crate::waiters::Waiters;

mod batch;
mod member;
mod options;
mod queue;
mod request;
mod routing;
mod sizing;
mod status;

use member::Member;
use queue::Queued;
use request::{Deadline, PoolCaller, PoolRequest, Reroute};

pub use options::PoolOptions;
pub use request::PoolReply;
pub use status::{MemberReport, PoolCounters, PoolReport, PoolState, PoolStatus};

/// A pool of workers of contract `C`, each started by a clone of driver
/// `D`. An actix actor that accepts the same contract messages as a
/// [`Worker`] (each answered with `Result<Reply, WorkerError>`), so code
/// written for one worker — or for a `Recipient<M>` — talks to a pool
/// unchanged; a [`Batch`](crate::Batch) of them is spread over the members
/// (see there). It also accepts [`Close`], [`PoolStatus`] (a
/// [`PoolReport`]: each member, the queue, the pool's counters) and
/// [`Status`], which it answers as a lone worker does (see *Status*
/// below).
///
/// - **Routing**: each request goes to the member with the fewest requests
///   in flight (the oldest on a tie), among those with fewer than
///   [`PoolOptions::max_in_flight_per_member`] (default 1).
/// - **Queue**: when every member is at that limit, requests wait in the
///   pool, first in first out, up to [`PoolOptions::max_queued`]; beyond
///   it, a send fails at once with [`WorkerError::Overloaded`]. Nothing
///   grows without bound. As with a lone worker, a request's deadline
///   (its message type's timeout in the members' options, or its own if
///   sent as [`WithTimeout`]) runs from when the pool accepts it: one
///   still waiting when it passes fails with [`WorkerError::Timeout`]
///   (`queued: true`), and one sent late gets only what is left.
/// - **Size**: the pool starts with [`PoolOptions::min_members`]. While
///   requests wait it starts more, up to [`PoolOptions::max_members`]
///   (no more at once than the waiting requests need); a member idle for
///   [`PoolOptions::idle_timeout`] is closed while more than the minimum
///   remain.
/// - **Failures**: each member is a [supervised](Worker::supervise)
///   worker: when its worker crashes, a fresh one is started at once
///   (within [`WorkerOptions::restart_budget`](crate::WorkerOptions::restart_budget)),
///   and its requests in flight are failed or retried by the crash policy
///   of their message type ([`WorkerOptions::on_crash`](crate::WorkerOptions::on_crash)),
///   as for a lone worker. A member that gives up tells the pool, which
///   removes it and starts a fresh one if the pool is below its minimum or
///   requests are waiting. A request it had gets [`WorkerError::GaveUp`],
///   unless its crash policy retries it ([`CrashPolicy::Retry`](crate::CrashPolicy::Retry)):
///   then it goes to another member, its tries counted on, and gets
///   `GaveUp` only once as many members as the pool may have
///   ([`PoolOptions::max_members`]) gave up on it. When the pool has no
///   member and cannot start one, the waiting requests fail with
///   [`WorkerError::NoMember`], which says why; the next request tries
///   again.
/// - **Close**: [`Close`] fails the waiting requests with
///   [`WorkerError::Closed`], closes every member (their requests in flight
///   resolve `Closed`) and resolves when all are closed; afterwards every
///   send gives `Closed`. Dropping the pool's last `Addr` stops every
///   member as dropping a worker's does.
///
/// # Status
///
/// A pool answers [`Status`] with a [`WorkerStatus`] for the pool as a
/// whole, so that code written for one worker's `Recipient<Status>` (a
/// health check, a status endpoint) works with a pool:
///
/// - `id`: the pool's own [`WorkerId`]; `pid`: `None`; `detached`: false;
///   `uptime`: since the pool started;
/// - `state`: `Running` while the pool takes requests, then `Closing`,
///   `Closed`;
/// - `in_flight`: on all members; `queued`: in the pool's queue and the
///   members' own;
/// - `restarts` and `counters.crashes`/`counters.restarts`: totals over
///   every member the pool has had; the other counters (`by_message`,
///   bytes): summed over its members now.
///
/// # Cancel safety
///
/// Dropping the future of `send` withdraws the request: one still waiting
/// in the pool is never sent; one in flight is withdrawn from its member
/// as from a lone [`Worker`] (see there), and no longer counts against
/// that member's limit.
///
/// # Examples
///
/// ```no_run
/// # use actix::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct CountPrimes { below: u64 }
/// # isolated_workers::contract! { Primes { CountPrimes => u64 } }
/// use isolated_workers::{ChildProcess, Close, PoolOptions, WorkerPool};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let options = PoolOptions::default().min_members(1).max_members(4);
/// let pool = WorkerPool::<Primes, _>::spawn_with(ChildProcess::current_exe("primes"), options).await?;
/// let jobs = (1..=8).map(|i| pool.send(CountPrimes { below: i * 100_000 }));
/// for answer in futures::future::join_all(jobs).await {
///     println!("{}", answer??);
/// }
/// pool.send(Close).await?;
/// # Ok(()) }
/// ```
pub struct WorkerPool<C: Contract, D: Driver<C> + Clone = ChildProcess> {
    /// Each member is started from a clone of it.
    driver: D,
    /// Its size, its bounds and its members' options.
    options: PoolOptions,
    /// Oldest first.
    members: Vec<Member<C, D>>,
    /// Requests waiting for a member, oldest first.
    queue: VecDeque<Box<dyn Queued<C, D>>>,
    /// Members being started.
    starting: usize,
    /// The id the next member gets.
    next_id: u64,
    /// Whether it takes requests.
    state: PoolState,
    /// What it has counted, for [`PoolStatus`].
    counters: PoolCounters,
    /// Told when no member is being started any more (`Close` waits).
    settled: Waiters,
    /// Told when the pool is closed (a second `Close` waits).
    closed: Waiters,
    /// When the queue is next swept for requests past their deadline.
    sweep: Option<(Instant, SpawnHandle)>,
    /// Names the pool in what it answers to [`Status`].
    id: WorkerId,
    /// When it started, for [`Status`]'s `uptime`.
    started: Instant,
}

impl<C: Contract, D: Driver<C> + Clone> std::fmt::Debug for WorkerPool<C, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("contract", &C::NAME)
            .field("driver", &std::any::type_name::<D>())
            .field("state", &self.state)
            .field("members", &self.members.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Starts a pool with default [`PoolOptions`] (one member at first, up
    /// to one per available core) and returns its address once its first
    /// member is ready.
    ///
    /// Must be called inside an actix System; the pool and its members'
    /// proxies run on the current arbiter.
    ///
    /// # Errors
    /// The [`SpawnError`] of the first member that could not be started.
    pub async fn spawn(driver: D) -> Result<Addr<Self>, SpawnError> {
        Self::spawn_with(driver, PoolOptions::default()).await
    }

    /// [`spawn`](Self::spawn) with explicit options: starts
    /// [`PoolOptions::min_members`] members at once and returns when all
    /// are ready.
    ///
    /// # Errors
    /// The [`SpawnError`] of a member that could not be started; those that
    /// did start are closed again.
    pub async fn spawn_with(driver: D, options: PoolOptions) -> Result<Addr<Self>, SpawnError> {
        // The pool's context comes first, so that its members can tell it
        // of their lives from the start.
        let context = Context::<Self>::new();
        let watcher = context.address().recipient();
        let starts = (0..options.min_members).map(|_| {
            let member = options.member_options.clone().watched_by(watcher.clone());
            Worker::<C, D>::supervise(driver.clone(), member)
        });
        let mut workers = Vec::new();
        let mut failure = None;
        for started in join_all(starts).await {
            match started {
                Ok(worker) => workers.push(worker),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        if let Some(error) = failure {
            join_all(workers.iter().map(|worker| worker.send(Close))).await;
            return Err(error);
        }
        let mut pool = WorkerPool {
            driver,
            options,
            members: Vec::new(),
            queue: VecDeque::new(),
            starting: 0,
            next_id: 1,
            state: PoolState::Open,
            counters: PoolCounters::default(),
            settled: Waiters::default(),
            closed: Waiters::default(),
            sweep: None,
            id: WorkerId::next(),
            started: Instant::now(),
        };
        for worker in workers {
            pool.add(worker);
        }
        Ok(context.run(pool))
    }

    /// Where member `id` is in the list, if it is still a member.
    fn position(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|member| member.id == id)
    }
}

impl<C: Contract, D: Driver<C> + Clone> Actor for WorkerPool<C, D> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Its timers and requests in flight would otherwise keep it (and
        // its members) running until the System stops.
        ctx.spawn(StopWhenUnreferenced);
        for index in 0..self.members.len() {
            self.watch_idle(index, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // The members' proxies stop as their last `Addr` goes with the pool.
        self.state = PoolState::Closed;
        for request in self.queue.drain(..) {
            request.fail(WorkerError::Closed);
        }
    }
}

/// Every message of the contract: sent to the least loaded member, or
/// queued, or refused with `Overloaded` when the queue is full.
impl<C, D, M> Handler<M> for WorkerPool<C, D>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability> + Clone,
    M: InContract<C>,
{
    type Result = PoolReply<M>;

    fn handle(&mut self, message: M, ctx: &mut Context<Self>) -> PoolReply<M> {
        self.accept(message, None, ctx)
    }
}

/// A contract message with its own timeout, handled as the message alone
/// (see [`WithTimeout`]).
impl<C, D, M> Handler<WithTimeout<M>> for WorkerPool<C, D>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability> + Clone,
    M: InContract<C>,
{
    type Result = PoolReply<M>;

    fn handle(&mut self, request: WithTimeout<M>, ctx: &mut Context<Self>) -> PoolReply<M> {
        let (message, timeout) = request.into_parts();
        self.accept(message, Some(timeout), ctx)
    }
}

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Takes `message` (with `timeout`, if it has one of its own): sends
    /// it to the least loaded member, or queues it, or refuses it.
    fn accept<M>(
        &mut self,
        message: M,
        timeout: Option<Duration>,
        ctx: &mut Context<Self>,
    ) -> PoolReply<M>
    where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        if self.state != PoolState::Open {
            return PoolReply::now(Err(WorkerError::Closed));
        }
        self.ensure_min(ctx);
        let free = match self.place() {
            Ok(free) => free,
            Err(overloaded) => return PoolReply::now(Err(overloaded)),
        };
        let (caller, reply) = PoolCaller::new();
        let request = self.request(message, timeout, caller);
        match free {
            Some(index) => self.dispatch(index, request, false, ctx),
            None => {
                self.wait(request, ctx);
                self.grow(ctx);
            }
        }
        reply
    }
}

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Where the next request goes: the least loaded member with room
    /// (`Some`), or the queue (`None`); `Overloaded` when the queue is
    /// full (after dropping the requests whose caller gave up).
    fn place(&mut self) -> Result<Option<usize>, WorkerError> {
        let free = self.least_loaded();
        let limit = self.options.max_queued;
        if free.is_none() && self.queue.len() >= limit {
            let before = self.queue.len();
            self.queue.retain(|request| !request.abandoned());
            self.counters.abandoned += (before - self.queue.len()) as u64;
            if self.queue.len() >= limit {
                self.counters.overloaded += 1;
                return Err(WorkerError::Overloaded { limit });
            }
        }
        Ok(free)
    }

    /// `message`, accepted now (its deadline, `timeout` or its message
    /// type's, runs from here), answered to `caller`.
    fn request<M>(
        &self,
        message: M,
        timeout: Option<Duration>,
        caller: PoolCaller<M>,
    ) -> PoolRequest<M>
    where
        M: InContract<C>,
    {
        let timeout = timeout.unwrap_or_else(|| self.options.member_options.timeout_of(M::NAME));
        let deadline = Deadline::after(timeout);
        let reroute = Reroute::of::<C, M>(&message, &self.options.member_options);
        PoolRequest {
            message,
            caller,
            deadline,
            reroute,
        }
    }

    /// Puts `request` at the back of the queue, swept by its deadline.
    fn wait<M>(&mut self, request: PoolRequest<M>, ctx: &mut Context<Self>)
    where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        let deadline = request.deadline.at;
        self.queue.push_back(Box::new(request));
        self.sweep_by(deadline, ctx);
    }
}

/// Closes every member; see [`WorkerPool`].
impl<C: Contract, D: Driver<C> + Clone> Handler<Close> for WorkerPool<C, D> {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Close, _: &mut Context<Self>) -> Self::Result {
        match self.state {
            PoolState::Closed => return Box::pin(fut::ready(())),
            PoolState::Closing => return Box::pin(self.closed.wait().into_actor(self)),
            PoolState::Open => {}
        }
        tracing::debug!(contract = C::NAME, "closing pool");
        self.state = PoolState::Closing;
        for request in self.queue.drain(..) {
            request.fail(WorkerError::Closed);
        }
        Box::pin(
            self.starts_settled()
                .into_actor(self)
                .then(|(), pool, _| {
                    // Each close holds its member's `Addr` until it is done:
                    // a proxy whose last `Addr` goes stops at once instead.
                    let closes = pool.members.drain(..).map(|member| async move {
                        let _ = member.worker.send(Close).await;
                    });
                    join_all(closes).into_actor(pool)
                })
                .map(|_, pool, _| {
                    pool.state = PoolState::Closed;
                    pool.closed.tell_all();
                }),
        )
    }
}

/// What happens to the members' workers: crashes and restarts are counted
/// (the pool's totals outlive the members); a member's worker that gave up
/// after crashing too often makes the pool look at its members at once and
/// replace those that gave up, so that no request is sent to them.
impl<C: Contract, D: Driver<C> + Clone> Handler<LifecycleEvent> for WorkerPool<C, D> {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, ctx: &mut Context<Self>) {
        match event {
            LifecycleEvent::Crashed { .. } => self.counters.crashes += 1,
            LifecycleEvent::Restarted { .. } => self.counters.restarts += 1,
            _ => {}
        }
        if matches!(event, LifecycleEvent::GaveUp { .. }) && self.state == PoolState::Open {
            let looked = self.member_statuses().into_actor(self);
            ctx.spawn(looked.map(|statuses, pool, ctx| {
                pool.report(statuses, ctx);
            }));
        }
    }
}

/// Reports the pool as one worker; see [`WorkerPool`].
impl<C: Contract, D: Driver<C> + Clone> Handler<Status> for WorkerPool<C, D> {
    type Result = ResponseActFuture<Self, WorkerStatus>;

    fn handle(&mut self, _: Status, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.member_statuses()
                .into_actor(self)
                .map(|statuses, pool, ctx| {
                    let report = pool.report(statuses, ctx);
                    report.as_worker(pool.id, pool.started.elapsed())
                }),
        )
    }
}

/// Reports the pool's members, queue and counters.
impl<C: Contract, D: Driver<C> + Clone> Handler<PoolStatus> for WorkerPool<C, D> {
    type Result = ResponseActFuture<Self, PoolReport>;

    fn handle(&mut self, _: PoolStatus, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            self.member_statuses()
                .into_actor(self)
                .map(|statuses, pool, ctx| pool.report(statuses, ctx)),
        )
    }
}
