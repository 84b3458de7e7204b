//! Pools: [`WorkerPool`], an actor that spreads the messages of a contract
//! over several workers of that contract — the least loaded first, the
//! rest waiting in a bounded queue — growing under load, shrinking when
//! idle, and replacing members that give up.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;

use crate::contract::{Contract, InContract};
use crate::driver::{Carries, ChildProcess, Driver};
use crate::error::{SpawnError, WorkerError};
use crate::proxy::{Attempt, Close, LifecycleEvent, Status, Worker, WorkerState, WorkerStatus};
use crate::unreferenced::StopWhenUnreferenced;
use crate::waiters::Waiters;

mod member;
mod options;
mod request;
mod status;

use member::Member;
use request::{Caller, Deadline, Queued, Request, Reroute};

pub use options::PoolOptions;
pub use request::PoolReply;
pub use status::{MemberReport, PoolCounters, PoolReport, PoolState, PoolStatus};

/// A pool of workers of contract `C`, each started by a clone of driver
/// `D`. An actix actor that accepts the same contract messages as a
/// [`Worker`] (each answered with `Result<Reply, WorkerError>`), so code
/// written for one worker — or for a `Recipient<M>` — talks to a pool
/// unchanged. It also accepts [`Close`] and [`PoolStatus`].
///
/// - **Routing**: each request goes to the member with the fewest requests
///   in flight (the oldest on a tie), among those with fewer than
///   [`PoolOptions::max_in_flight_per_member`] (default 1).
/// - **Queue**: when every member is at that limit, requests wait in the
///   pool, first in first out, up to [`PoolOptions::max_queued`]; beyond
///   it, a send fails at once with [`WorkerError::Overloaded`]. Nothing
///   grows without bound. As with a lone worker, a request's deadline
///   (its message type's timeout in the members' options) runs from when
///   the pool accepts it: one still waiting when it passes fails with
///   [`WorkerError::Timeout`], and one sent late gets only what is left.
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
    options: PoolOptions,
    /// Oldest first.
    members: Vec<Member<C, D>>,
    /// Requests waiting for a member, oldest first.
    queue: VecDeque<Box<dyn Queued<C, D>>>,
    /// Members being started.
    starting: usize,
    /// The id the next member gets.
    next_id: u64,
    state: PoolState,
    counters: PoolCounters,
    /// Told when no member is being started any more (`Close` waits).
    settled: Waiters,
    /// Told when the pool is closed (a second `Close` waits).
    closed: Waiters,
    /// When the queue is next swept for requests past their deadline.
    sweep: Option<(Instant, SpawnHandle)>,
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
            let member = options.member.clone().watched_by(watcher.clone());
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
        };
        for worker in workers {
            pool.add(worker);
        }
        Ok(context.run(pool))
    }

    /// Takes a freshly started member in.
    fn add(&mut self, worker: Addr<Worker<C, D>>) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.counters.started += 1;
        self.members.push(Member::new(id, worker));
        tracing::debug!(contract = C::NAME, member = id, "pool member started");
        self.members.len() - 1
    }

    /// Where member `id` is in the list, if it is still a member.
    fn position(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|member| member.id == id)
    }

    /// The member to send the next request to: the fewest in flight (the
    /// oldest on a tie), among those below the per-member limit.
    fn least_loaded(&self) -> Option<usize> {
        let limit = self.options.per_member();
        self.members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.in_flight < limit)
            .min_by_key(|(_, member)| member.in_flight)
            .map(|(index, _)| index)
    }

    /// Sends `request` to member `index`; its caller is resolved, and the
    /// member's count lowered, when the member answers or the caller gives
    /// up.
    ///
    /// A request that `waited` in the queue keeps the deadline it got when
    /// the pool accepted it: it fails with `Timeout` at once if that has
    /// passed, and is withdrawn from the member when it passes.
    fn dispatch<M>(
        &mut self,
        index: usize,
        request: Request<M>,
        waited: bool,
        ctx: &mut Context<Self>,
    ) where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        let Request {
            message,
            caller,
            deadline,
            reroute,
        } = request;
        let left = waited.then(|| deadline.at.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            self.counters.expired += 1;
            caller.resolve(Err(Request::<M>::timed_out(&deadline)));
            return;
        }
        let member = &mut self.members[index];
        member.took();
        let id = member.id;
        self.counters.dispatched += 1;
        let tries = reroute.as_ref().map(|reroute| reroute.tries.clone());
        let sent = member.worker.send(Attempt { message, tries });
        let gone = caller.gone();
        let answered = async move {
            // Only a request that waited needs a timer of its own: the
            // member's timeout is the right one for the rest.
            let expired = async move {
                match left {
                    Some(left) => tokio::time::sleep(left).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A member whose proxy is gone is as good as closed.
                outcome = sent => Some(outcome.unwrap_or(Err(WorkerError::Closed))),
                // Dropping `sent` withdraws the request from the member.
                () = gone => None,
                () = expired => Some(Err(Request::<M>::timed_out(&deadline))),
            }
        };
        ctx.spawn(answered.into_actor(self).map(move |outcome, pool, ctx| {
            let error = outcome.as_ref().and_then(|outcome| outcome.as_ref().err());
            pool.answered(id, error, ctx);
            let gave_up = matches!(error, Some(WorkerError::GaveUp { .. }));
            match (outcome, reroute) {
                (Some(Err(error)), Some(reroute)) if gave_up => {
                    pool.reroute(caller, deadline, reroute, error, ctx);
                }
                (Some(outcome), _) => {
                    match &outcome {
                        Ok(_) => pool.counters.answered += 1,
                        Err(_) => pool.counters.failed += 1,
                    }
                    caller.resolve(outcome);
                }
                (None, _) => pool.counters.abandoned += 1,
            }
            pool.pump(ctx);
        }));
    }

    /// A member gave up on a request its crash policy retries: sends it
    /// on, counting its tries on, to another member — at once if one has
    /// room, else first in the queue. Fails it with `error` once as many
    /// members as the pool may have gave up on it.
    fn reroute<M>(
        &mut self,
        caller: Caller<M>,
        deadline: Deadline,
        mut reroute: Reroute,
        error: WorkerError,
        ctx: &mut Context<Self>,
    ) where
        M: InContract<C>,
        D: Carries<M::Portability>,
    {
        reroute.gave_up += 1;
        let goes_on = self.state == PoolState::Open && reroute.gave_up < self.options.ceiling();
        let message = goes_on
            .then(|| M::decode::<C::Serializer>(&reroute.payload).ok())
            .flatten();
        let Some(message) = message else {
            self.counters.failed += 1;
            return caller.resolve(Err(error));
        };
        self.counters.rerouted += 1;
        tracing::debug!(
            contract = C::NAME,
            message = M::NAME,
            "a member gave up on a request; sending it to another"
        );
        let request = Request {
            message,
            caller,
            deadline,
            reroute: Some(reroute),
        };
        match self.least_loaded() {
            Some(index) => self.dispatch(index, request, true, ctx),
            // First: it waited longest. It was counted against the queue's
            // bound when it was accepted, so it may go over it now.
            None => {
                self.queue.push_front(Box::new(request));
                self.sweep_by(deadline.at, ctx);
                self.grow(ctx);
            }
        }
    }

    /// Member `id` is done with a request, which ended with `error` if
    /// it failed.
    fn answered(&mut self, id: u64, error: Option<&WorkerError>, ctx: &mut Context<Self>) {
        let Some(index) = self.position(id) else {
            return; // it left the pool meanwhile
        };
        let gave_up = matches!(
            error,
            Some(WorkerError::GaveUp { .. } | WorkerError::Closed)
        );
        if gave_up && self.state == PoolState::Open {
            self.replace(index, ctx);
        } else if self.members[index].finished() {
            self.watch_idle(index, ctx);
        }
    }

    /// Sends waiting requests to members with room for them.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        while !self.queue.is_empty() {
            let Some(index) = self.least_loaded() else {
                break;
            };
            let Some(request) = self.queue.pop_front() else {
                break;
            };
            if request.abandoned() {
                self.counters.abandoned += 1;
                continue;
            }
            request.dispatch(self, index, ctx);
        }
    }

    /// Makes sure the queue is swept for requests past their deadline by
    /// `at`: one timer for the whole queue, due at its earliest deadline.
    fn sweep_by(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some((due, timer)) = self.sweep {
            if due <= at {
                return;
            }
            ctx.cancel_future(timer);
        }
        let timer = ctx.run_later(at.saturating_duration_since(Instant::now()), |pool, ctx| {
            pool.sweep = None;
            pool.sweep_queue(ctx);
        });
        self.sweep = Some((at, timer));
    }

    /// Fails the waiting requests whose deadline has passed, and drops
    /// those whose caller gave up.
    fn sweep_queue(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for request in self.queue.drain(..) {
            if request.abandoned() {
                self.counters.abandoned += 1;
            } else if request.deadline() <= now {
                self.counters.expired += 1;
                request.expire();
            } else {
                kept.push_back(request);
            }
        }
        self.queue = kept;
        if let Some(next) = self.queue.iter().map(|request| request.deadline()).min() {
            self.sweep_by(next, ctx);
        }
    }

    /// Starts members until the pool has its minimum (counting those
    /// being started).
    fn ensure_min(&mut self, ctx: &mut Context<Self>) {
        while self.members.len() + self.starting < self.options.min_members {
            self.start_member(ctx);
        }
    }

    /// Starts members for the waiting requests, up to the maximum, and no
    /// more at once than those requests need.
    fn grow(&mut self, ctx: &mut Context<Self>) {
        let wanted = self.queue.len().div_ceil(self.options.per_member());
        while self.starting < wanted && self.members.len() + self.starting < self.options.ceiling()
        {
            self.start_member(ctx);
        }
    }

    /// Starts one member; it joins the pool (and takes waiting requests)
    /// once ready.
    fn start_member(&mut self, ctx: &mut Context<Self>) {
        self.starting += 1;
        let member = (self.options.member.clone()).watched_by(ctx.address().recipient());
        let spawned = Worker::<C, D>::supervise(self.driver.clone(), member);
        ctx.spawn(spawned.into_actor(self).map(|spawned, pool, ctx| {
            pool.starting -= 1;
            match spawned {
                // While closing it joins too: `Close` closes it with the rest.
                Ok(worker) => {
                    let index = pool.add(worker);
                    if pool.state == PoolState::Open {
                        pool.watch_idle(index, ctx);
                        pool.pump(ctx);
                    }
                }
                Err(error) => pool.start_failed(error),
            }
            if pool.starting == 0 {
                pool.settled.tell_all();
            }
        }));
    }

    /// A member could not be started. If the pool has no member left to
    /// serve them, the waiting requests fail with
    /// [`WorkerError::NoMember`]; otherwise they wait for the members there
    /// are. The next request tries again.
    fn start_failed(&mut self, error: SpawnError) {
        self.counters.start_failures += 1;
        tracing::warn!(contract = C::NAME, %error, "a pool member failed to start");
        if self.members.is_empty() && self.starting == 0 {
            let error = WorkerError::NoMember {
                cause: Arc::new(error),
            };
            for request in self.queue.drain(..) {
                request.fail(error.clone());
            }
        }
    }

    /// Removes member `index`, which gave up, and starts another if the
    /// pool needs one.
    fn replace(&mut self, index: usize, ctx: &mut Context<Self>) {
        let member = self.members.remove(index);
        self.counters.replaced += 1;
        tracing::warn!(
            contract = C::NAME,
            member = member.id,
            "a pool member gave up; removing it"
        );
        self.close_member(member, ctx);
        self.ensure_min(ctx);
        self.grow(ctx);
    }

    /// Closes a member that left the pool, in the background.
    fn close_member(&mut self, member: Member<C, D>, ctx: &mut Context<Self>) {
        let worker = member.worker;
        ctx.spawn(
            async move {
                let _ = worker.send(Close).await;
            }
            .into_actor(self),
        );
    }

    /// Looks at member `index` once it has idled for the idle timeout
    /// (unless a look is already due).
    fn watch_idle(&mut self, index: usize, ctx: &mut Context<Self>) {
        let member = &mut self.members[index];
        if member.idle_check {
            return;
        }
        member.idle_check = true;
        let id = member.id;
        ctx.run_later(self.options.idle_timeout, move |pool, ctx| {
            pool.idle_check(id, ctx);
        });
    }

    /// Closes member `id` if it has idled for the idle timeout and the pool
    /// has more than its minimum; looks again later if it was busy
    /// meanwhile and is idle again.
    fn idle_check(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(index) = self.position(id) else {
            return;
        };
        let member = &mut self.members[index];
        member.idle_check = false;
        let Some(since) = member.idle_since else {
            return; // busy: watched again when it goes idle
        };
        let idle = since.elapsed();
        let timeout = self.options.idle_timeout;
        if idle < timeout {
            member.idle_check = true;
            ctx.run_later(timeout - idle, move |pool, ctx| pool.idle_check(id, ctx));
            return;
        }
        if self.state == PoolState::Open && self.members.len() > self.options.min_members {
            let member = self.members.remove(index);
            self.counters.retired += 1;
            tracing::debug!(
                contract = C::NAME,
                member = member.id,
                ?idle,
                "closing an idle pool member"
            );
            self.close_member(member, ctx);
        }
    }

    /// Resolves once no member is being started.
    fn starts_settled(&mut self) -> impl Future<Output = ()> + 'static {
        let waiting = (self.starting > 0).then(|| self.settled.wait());
        async move {
            if let Some(waiting) = waiting {
                waiting.await;
            }
        }
    }

    /// Each member's id and `Status` (`None` if its proxy is gone).
    fn member_statuses(&self) -> impl Future<Output = Vec<(u64, Option<WorkerStatus>)>> + 'static {
        let asks: Vec<_> = self
            .members
            .iter()
            .map(|member| {
                let id = member.id;
                let asked = member.worker.send(Status);
                async move { (id, asked.await.ok()) }
            })
            .collect();
        join_all(asks)
    }

    /// The report answered to `PoolStatus`, from the members' `statuses`;
    /// removes members found given up or closed.
    fn report(
        &mut self,
        statuses: Vec<(u64, Option<WorkerStatus>)>,
        ctx: &mut Context<Self>,
    ) -> PoolReport {
        let mut members = Vec::new();
        for (id, status) in statuses {
            let Some(index) = self.position(id) else {
                continue; // it left the pool meanwhile
            };
            let gone = status.as_ref().is_none_or(|status| {
                matches!(
                    status.state,
                    WorkerState::GaveUp { .. } | WorkerState::Closed
                )
            });
            match status {
                _ if gone && self.state == PoolState::Open => self.replace(index, ctx),
                Some(status) => {
                    let member = &self.members[index];
                    members.push(MemberReport {
                        id,
                        in_flight: member.in_flight,
                        idle_for: member.idle_since.map(|since| since.elapsed()),
                        status,
                    });
                }
                None => {}
            }
        }
        // Members that joined while the statuses were gathered are not
        // listed; they count as still starting.
        let joined = self.members.iter().filter(|member| {
            !members
                .iter()
                .any(|listed: &MemberReport| listed.id == member.id)
        });
        let starting = self.starting + joined.count();
        PoolReport {
            state: self.state,
            members,
            starting,
            queued: self.queue.len(),
            counters: self.counters.clone(),
        }
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

impl<C, D, M> Queued<C, D> for Request<M>
where
    C: Contract,
    D: Driver<C> + Carries<M::Portability> + Clone,
    M: InContract<C>,
{
    fn dispatch(
        self: Box<Self>,
        pool: &mut WorkerPool<C, D>,
        member: usize,
        ctx: &mut Context<WorkerPool<C, D>>,
    ) {
        pool.dispatch(member, *self, true, ctx);
    }

    fn fail(self: Box<Self>, error: WorkerError) {
        self.caller.resolve(Err(error));
    }

    fn deadline(&self) -> Instant {
        self.deadline.at
    }

    fn expire(self: Box<Self>) {
        let error = Request::<M>::timed_out(&self.deadline);
        self.caller.resolve(Err(error));
    }

    fn abandoned(&self) -> bool {
        self.caller.abandoned()
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
        if self.state != PoolState::Open {
            return PoolReply::now(Err(WorkerError::Closed));
        }
        self.ensure_min(ctx);
        let free = self.least_loaded();
        let limit = self.options.max_queued;
        if free.is_none() && self.queue.len() >= limit {
            let before = self.queue.len();
            self.queue.retain(|request| !request.abandoned());
            self.counters.abandoned += (before - self.queue.len()) as u64;
            if self.queue.len() >= limit {
                self.counters.overloaded += 1;
                return PoolReply::now(Err(WorkerError::Overloaded { limit }));
            }
        }
        let (caller, reply) = Caller::new();
        let deadline = Deadline::after(self.options.member.timeout_of(M::NAME));
        let reroute = Reroute::of::<C, M>(&message, &self.options.member);
        let request = Request {
            message,
            caller,
            deadline,
            reroute,
        };
        match free {
            Some(index) => self.dispatch(index, request, false, ctx),
            None => {
                self.queue.push_back(Box::new(request));
                self.sweep_by(deadline.at, ctx);
                self.grow(ctx);
            }
        }
        reply
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

/// A member's worker gave up after crashing too often: the pool looks at
/// its members at once and replaces those that gave up, so that no request
/// is sent to them.
impl<C: Contract, D: Driver<C> + Clone> Handler<LifecycleEvent> for WorkerPool<C, D> {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, ctx: &mut Context<Self>) {
        if matches!(event, LifecycleEvent::GaveUp { .. }) && self.state == PoolState::Open {
            let looked = self.member_statuses().into_actor(self);
            ctx.spawn(looked.map(|statuses, pool, ctx| {
                pool.report(statuses, ctx);
            }));
        }
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
