//! `WorkerPool`: routing to the least loaded member, the bounded queue and
//! `Overloaded`, growing under load and shrinking when idle, members that
//! crash (killed under load, with retry and with reject) or give up,
//! cancelled requests, and `Close`. Behaviour that does not depend on the
//! driver runs on both the thread and the child-process driver; kills need
//! a process.

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use isolated_workers::pool::PoolState;
use isolated_workers::{
    Batch, ChildProcess, Close, CrashPolicy, CrashReason, Driver, PoolOptions, PoolReport,
    PoolStatus, SpawnError, Thread, WithTimeout, WorkerError, WorkerOptions, WorkerPool,
};
use libtest_mimic::{Failed, Trial};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use support::*;

/// How long a condition on a pool's report may take to come true.
const WAIT: Duration = Duration::from_secs(20);

/// Longer than any test: a request that must stay in flight until the
/// test closes the pool.
const FOREVER: u64 = 300_000;

/// A job that takes `ms` milliseconds and answers which job it was and
/// which worker process did it. It first creates the file `started`, if
/// given: evidence that the job has started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u32,
    ms: u64,
    started: Option<std::path::PathBuf>,
}

/// Job `id`, of `ms` milliseconds, with no marker.
fn job(id: u32, ms: u64) -> Job {
    Job {
        id,
        ms,
        started: None,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Done {
    id: u32,
    pid: u32,
}

/// Crashes the worker that handles it while the file `crashes` counts
/// crashes left (taking one first); once none are left, answers the
/// worker's pid.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fragile {
    crashes: PathBuf,
}

isolated_workers::contract! {
    /// Jobs whose answers say who did them.
    Jobs {
        Job => Done,
        Fragile => u32,
    }
}

#[derive(Default)]
struct JobWorker;

impl Actor for JobWorker {
    type Context = Context<Self>;
}

impl Handler<Job> for JobWorker {
    type Result = ResponseFuture<Result<Done, WorkerError>>;
    fn handle(&mut self, job: Job, _: &mut Context<Self>) -> Self::Result {
        if let Some(started) = &job.started {
            std::fs::write(started, b"started").expect("marker written");
        }
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(job.ms)).await;
            Ok(Done {
                id: job.id,
                pid: std::process::id(),
            })
        })
    }
}

impl Handler<Fragile> for JobWorker {
    type Result = Result<u32, WorkerError>;
    fn handle(&mut self, fragile: Fragile, _: &mut Context<Self>) -> Self::Result {
        let left = crashes_left(&fragile.crashes).expect("the crash count is readable");
        if left > 0 {
            std::fs::write(&fragile.crashes, (left - 1).to_string()).expect("crash counted");
            panic_on_purpose(&format!("fragile: {left} crashes left"));
        }
        Ok(std::process::id())
    }
}

/// The crashes the file `crashes` still allows.
fn crashes_left(crashes: &Path) -> Result<u32, Failed> {
    let text = std::fs::read_to_string(crashes).map_err(fail)?;
    text.trim().parse().map_err(fail)
}

fn main() {
    enter_workers();
    isolated_workers::worker_entry::<Jobs, _>("jobs", JobWorker::default);
    let mut trials = suite("thread", || Thread::new(CalcWorker::default));
    trials.extend(suite("child_process", calc));
    trials.extend([
        actix_test(
            "child_process::a_member_killed_under_load_loses_no_job_with_retry",
            killed_under_load_with_retry,
        ),
        actix_test(
            "child_process::a_member_killed_under_load_reports_its_job_with_reject",
            killed_under_load_with_reject,
        ),
        actix_test(
            "child_process::under_retry_a_request_whose_member_gives_up_goes_to_another",
            retry_goes_to_another_member,
        ),
        actix_test(
            "child_process::a_request_sent_on_to_another_member_counts_its_tries_on",
            rerouted_tries_count_on,
        ),
        actix_test(
            "child_process::under_retry_a_request_fails_gave_up_once_every_member_gave_up",
            every_member_gives_up,
        ),
        actix_test(
            "child_process::under_reject_a_request_whose_member_gives_up_fails_crashed",
            reject_is_not_sent_on,
        ),
        actix_test(
            "child_process::a_pool_that_cannot_start_a_member_fails_its_requests_with_no_member",
            cannot_start_a_member,
        ),
        actix_test(
            "child_process::a_batch_is_spread_over_the_members_one_share_each",
            a_batch_is_spread_over_the_members,
        ),
        actix_test(
            "child_process::a_batch_survives_a_member_killed_mid_batch",
            a_batch_survives_a_member_killed_mid_batch,
        ),
        actix_test(
            "child_process::close_ends_every_member_process",
            close_ends_every_member_process,
        ),
        actix_test(
            "child_process::dropping_the_pool_ends_every_member_process",
            dropping_the_pool_ends_every_member_process,
        ),
    ]);
    run(trials);
}

/// The tests that hold for any driver, each named `<driver>::<behaviour>`.
fn suite<D: Driver<Calc> + Clone>(driver: &str, make: fn() -> D) -> Vec<Trial> {
    macro_rules! cases {
        ($($behaviour:ident),* $(,)?) => {
            vec![$(case(driver, stringify!($behaviour), make, $behaviour)),*]
        };
    }
    cases![
        routes_around_a_busy_member,
        routes_to_the_member_with_fewest_in_flight,
        a_full_queue_refuses_at_once_with_overloaded,
        queued_requests_run_in_order_as_members_free_up,
        a_request_waiting_in_the_queue_times_out_from_when_it_was_sent,
        grows_to_its_maximum_under_load_and_shrinks_to_its_minimum_when_idle,
        an_empty_pool_starts_a_member_for_its_first_request,
        a_member_that_gives_up_is_replaced,
        dropped_requests_are_withdrawn_or_never_sent,
        a_request_with_its_own_timeout_times_out_on_its_member_and_stops_there,
        a_request_with_its_own_timeout_keeps_it_in_the_queue_and_on_its_member,
        after_close_every_send_is_closed,
        a_batch_beyond_the_members_and_the_queue_overloads_the_rest,
        a_dropped_batch_is_withdrawn_or_never_sent,
    ]
}

fn case<D, Fut>(driver: &str, behaviour: &str, make: fn() -> D, test: fn(D) -> Fut) -> Trial
where
    D: Driver<Calc> + Clone,
    Fut: Future<Output = Result<(), Failed>> + 'static,
{
    actix_test(&format!("{driver}::{behaviour}"), move || test(make()))
}

/// Starts a pool of Calc workers.
async fn pool<D: Driver<Calc> + Clone>(
    driver: D,
    options: PoolOptions,
) -> Result<Addr<WorkerPool<Calc, D>>, Failed> {
    WorkerPool::spawn_with(driver, options).await.map_err(fail)
}

/// The pool's report.
async fn report_of<C, D>(pool: &Addr<WorkerPool<C, D>>) -> Result<PoolReport, Failed>
where
    C: isolated_workers::Contract,
    D: Driver<C> + Clone,
{
    pool.send(PoolStatus).await.map_err(fail)
}

/// The pool's report once `condition` holds of it, polled: a pool has no
/// event for "a member was started" or "a member was retired".
async fn report_when<C, D>(
    pool: &Addr<WorkerPool<C, D>>,
    what: &str,
    condition: impl Fn(&PoolReport) -> bool,
) -> Result<PoolReport, Failed>
where
    C: isolated_workers::Contract,
    D: Driver<C> + Clone,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let report = report_of(pool).await?;
        if condition(&report) {
            return Ok(report);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {WAIT:?}; the pool: {report:#?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks that each of `requests` resolved `Closed`.
async fn all_closed<A, M, R>(requests: Vec<actix::dev::Request<A, M>>) -> Result<(), Failed>
where
    A: Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: Message<Result = Result<R, WorkerError>> + Send + 'static,
    R: std::fmt::Debug + Send + 'static,
{
    for request in requests {
        let error = expect_error(outcome(request).await?)?;
        assert!(matches!(error, WorkerError::Closed), "{error:?}");
    }
    Ok(())
}

/// Each member's requests in flight, oldest member first.
fn in_flight(report: &PoolReport) -> Vec<usize> {
    report
        .members
        .iter()
        .map(|member| member.in_flight)
        .collect()
}

async fn routes_around_a_busy_member<D: Driver<Calc> + Clone>(driver: D) -> Result<(), Failed> {
    let pool = pool(driver, PoolOptions::default().members(2)).await?;
    // On a tie the oldest member is chosen: the first one takes the sleep.
    let busy = enqueue(&pool, Sleep { ms: FOREVER });
    let report = report_when(&pool, "the sleep in flight", |r| in_flight(r) == [1, 0]).await?;
    // Every request now goes to the second member, whose counter counts
    // them all (a request routed to the busy one would wait for ever).
    for expected in 1..=3 {
        assert_eq!(ask(&pool, Increment { by: 1 }).await?, expected);
    }
    if let Some(free) = report.members[1].status.pid {
        assert_eq!(
            ask(&pool, WhoAmI).await?,
            free,
            "answered by the free member"
        );
    }
    assert_eq!(in_flight(&report_of(&pool).await?), [1, 0]);
    pool.send(Close).await?;
    all_closed(vec![busy]).await
}

async fn routes_to_the_member_with_fewest_in_flight<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let options = PoolOptions::default()
        .members(2)
        .max_in_flight_per_member(4);
    let pool = pool(driver, options).await?;
    // Tells the members apart: on a tie the first takes it, so its
    // counter starts at 10 and the second's at 0.
    assert_eq!(ask(&pool, Increment { by: 10 }).await?, 10);
    // 0,0 → first; 1,0 → second; 1,1 → first.
    let sleeps: Vec<_> = (0..3)
        .map(|_| enqueue(&pool, Sleep { ms: FOREVER }))
        .collect();
    report_when(&pool, "three sleeps in flight", |r| in_flight(r) == [2, 1]).await?;
    // The second member, with one in flight, takes the next.
    assert_eq!(ask(&pool, Increment { by: 5 }).await?, 5);
    assert_eq!(report_of(&pool).await?.counters.dispatched, 5);
    pool.send(Close).await?;
    all_closed(sleeps).await
}

async fn a_full_queue_refuses_at_once_with_overloaded<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let options = PoolOptions::default().members(2).max_queued(3);
    let pool = pool(driver, options).await?;
    let busy: Vec<_> = (0..2)
        .map(|_| enqueue(&pool, Sleep { ms: FOREVER }))
        .collect();
    let queued: Vec<_> = (0..3)
        .map(|i| enqueue(&pool, ping(&i.to_string())))
        .collect();
    let report = report_of(&pool).await?;
    assert_eq!((in_flight(&report), report.queued), (vec![1, 1], 3));
    // Both members busy, the queue full: the next is refused, at once.
    let started = Instant::now();
    let error = refused(&pool, ping("one too many")).await?;
    assert!(
        matches!(error, WorkerError::Overloaded { limit: 3 }),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    let report = report_of(&pool).await?;
    assert_eq!((report.queued, report.counters.overloaded), (3, 1));
    assert_eq!(report.members.len(), 2, "a full pool does not grow");
    pool.send(Close).await?;
    all_closed(busy).await?;
    all_closed(queued).await
}

async fn queued_requests_run_in_order_as_members_free_up<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let pool = pool(driver, PoolOptions::default().members(1)).await?;
    let sleep = enqueue(&pool, Sleep { ms: 100 });
    let increments: Vec<_> = (0..5)
        .map(|_| enqueue(&pool, Increment { by: 1 }))
        .collect();
    outcome(sleep).await?.map_err(fail)?;
    let counts: Vec<u64> = join_all(increments)
        .await
        .into_iter()
        .map(|answer| answer.map_err(fail)?.map_err(fail))
        .collect::<Result<_, Failed>>()?;
    assert_eq!(counts, [1, 2, 3, 4, 5], "first in, first out");
    let report = report_of(&pool).await?;
    assert_eq!((report.queued, report.counters.dispatched), (0, 6));
    pool.send(Close).await?;
    Ok(())
}

async fn a_request_waiting_in_the_queue_times_out_from_when_it_was_sent<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let timeout = Duration::from_millis(200);
    let member = WorkerOptions::default()
        .request_timeout(timeout)
        .timeout_for::<Sleep>(Duration::from_secs(3600));
    let options = PoolOptions::default().members(1).member_options(member);
    let pool = pool(driver, options).await?;
    let busy = enqueue(&pool, Sleep { ms: FOREVER });
    // The only member stays busy: the ping waits, and times out waiting.
    let started = Instant::now();
    let error = refused(&pool, ping("waits")).await?;
    assert!(
        matches!(error, WorkerError::Timeout { after, message: "Ping", queued: true } if after == timeout),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "`Ping` timed out after 200ms waiting in the queue, before it reached a worker"
    );
    assert!(started.elapsed() >= timeout);
    let report = report_of(&pool).await?;
    assert_eq!(
        (
            report.queued,
            report.counters.expired,
            report.counters.dispatched
        ),
        (0, 1, 1)
    );
    pool.send(Close).await?;
    all_closed(vec![busy]).await
}

async fn grows_to_its_maximum_under_load_and_shrinks_to_its_minimum_when_idle<
    D: Driver<Calc> + Clone,
>(
    driver: D,
) -> Result<(), Failed> {
    let options = PoolOptions::default()
        .min_members(1)
        .max_members(3)
        .idle_timeout(Duration::from_millis(200));
    let pool = pool(driver, options).await?;
    assert_eq!(report_of(&pool).await?.members.len(), 1);
    // Six jobs, one at a time per member: two are needed beyond the first,
    // and no more than that are started, however many wait.
    let jobs: Vec<_> = (0..6).map(|_| enqueue(&pool, Sleep { ms: 300 })).collect();
    let report_now = report_of(&pool).await?;
    assert_eq!(report_now.members.len() + report_now.starting, 3);
    let grown = report_when(&pool, "three members", |r| r.members.len() == 3).await?;
    assert_eq!(grown.counters.started, 3);
    for job in join_all(jobs).await {
        job.map_err(fail)?.map_err(fail)?;
    }
    let shrunk = report_when(&pool, "back to one member", |r| r.members.len() == 1).await?;
    assert_eq!(shrunk.counters.retired, 2);
    assert_eq!(shrunk.counters.started, 3, "never more than the maximum");
    // The one left serves on.
    assert_eq!(ask(&pool, ping("still")).await?.text, "pong: still");
    pool.send(Close).await?;
    Ok(())
}

async fn an_empty_pool_starts_a_member_for_its_first_request<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let options = PoolOptions::default()
        .min_members(0)
        .max_members(2)
        .idle_timeout(Duration::from_millis(50));
    let pool = pool(driver, options).await?;
    assert_eq!(report_of(&pool).await?.members.len(), 0);
    assert_eq!(ask(&pool, ping("first")).await?.text, "pong: first");
    let emptied = report_when(&pool, "no member left", |r| r.members.is_empty()).await?;
    assert_eq!((emptied.counters.started, emptied.counters.retired), (1, 1));
    assert_eq!(ask(&pool, ping("again")).await?.text, "pong: again");
    pool.send(Close).await?;
    Ok(())
}

/// A pool whose members cannot start (the program does not exist) says
/// so to the requests that wait for one, with the reason; each new
/// request tries again.
async fn cannot_start_a_member() -> Result<(), Failed> {
    let missing = ChildProcess::program("/nonexistent/isolated-worker", "calc");
    let options = PoolOptions::default().min_members(0).max_members(1);
    let pool = pool(missing, options).await?;
    for tries in 1..=2 {
        let error = refused(&pool, ping("anyone")).await?;
        let WorkerError::NoMember { cause } = &error else {
            return Err(format!("expected NoMember, got {error:?}").into());
        };
        assert!(matches!(**cause, SpawnError::Launch { .. }), "{cause:?}");
        assert!(
            error
                .to_string()
                .contains("no pool member could be started"),
            "{error}"
        );
        let report = report_of(&pool).await?;
        assert_eq!(
            (report.counters.start_failures, report.members.len()),
            (tries, 0)
        );
    }
    pool.send(Close).await?;
    Ok(())
}

async fn a_member_that_gives_up_is_replaced<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    // No restart allowed: the first crash makes the member give up.
    let member = WorkerOptions::default().restart_budget(0, Duration::from_secs(60));
    let options = PoolOptions::default().members(1).member_options(member);
    let pool = pool(driver, options).await?;
    let first = report_of(&pool).await?.members[0].clone();
    let error = refused(
        &pool,
        Explode {
            message: "boom".into(),
        },
    )
    .await?;
    assert!(matches!(error, WorkerError::Crashed { .. }), "{error:?}");
    // The member tells the pool it gave up, and the pool replaces it before
    // any request is sent to it.
    report_when(&pool, "the member was replaced", |r| {
        r.counters.replaced == 1 && r.members.len() == 1
    })
    .await?;
    assert_eq!(ask(&pool, ping("found")).await?.text, "pong: found");
    let report = report_of(&pool).await?;
    assert_eq!(report.members.len(), 1);
    let fresh = &report.members[0];
    assert_ne!(fresh.id, first.id, "a new member");
    if let (Some(old), Some(new)) = (first.status.pid, fresh.status.pid) {
        assert_ne!(old, new, "a new worker process");
        assert!(eventually(WAIT, || !running(old)).await, "{old} closed");
    }
    assert_eq!((report.counters.replaced, report.counters.started), (1, 2));
    pool.send(Close).await?;
    Ok(())
}

async fn dropped_requests_are_withdrawn_or_never_sent<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let pool = pool(driver, PoolOptions::default().members(1)).await?;
    let sleep = enqueue(&pool, Sleep { ms: FOREVER });
    let dropped = enqueue(&pool, Increment { by: 100 });
    let kept = enqueue(&pool, Increment { by: 1 });
    assert_eq!(report_of(&pool).await?.queued, 2);
    drop(dropped);
    // Dropping the one in flight frees its member, which then skips the
    // dropped request and takes the kept one.
    drop(sleep);
    assert_eq!(
        outcome(kept).await?.map_err(fail)?,
        1,
        "the dropped one never ran"
    );
    let report = report_of(&pool).await?;
    assert_eq!(
        (report.counters.abandoned, report.counters.dispatched),
        (2, 2)
    );
    pool.send(Close).await?;
    Ok(())
}

async fn a_request_with_its_own_timeout_times_out_on_its_member_and_stops_there<
    D: Driver<Calc> + Clone,
>(
    driver: D,
) -> Result<(), Failed> {
    // One member, default timeouts (30 s): only the request's own ends it.
    let pool = pool(driver, PoolOptions::default().members(1)).await?;
    let own = Duration::from_millis(100);
    let error = refused(&pool, WithTimeout::new(Spin, own)).await?;
    assert!(
        matches!(error, WorkerError::Timeout { after, message: "Spin", queued: false } if after == own),
        "{error:?}"
    );
    // The member was told to cancel: its `Spin` counter stands still.
    let spins = || ask(&pool, Spins);
    let mut before = spins().await?;
    assert!(before > 0, "the work had started");
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = spins().await?;
        if after == before {
            break;
        }
        // Cancelled, but seen moving once more before it was: look again.
        // (The hang guard ends a test whose handler never stops.)
        before = after;
    }
    pool.send(Close).await?;
    Ok(())
}

async fn a_request_with_its_own_timeout_keeps_it_in_the_queue_and_on_its_member<
    D: Driver<Calc> + Clone,
>(
    driver: D,
) -> Result<(), Failed> {
    // The members' timeout for `Sleep` is 50 ms; each request here has
    // its own, longer or shorter.
    let member = WorkerOptions::default().timeout_for::<Sleep>(Duration::from_millis(50));
    let options = PoolOptions::default().members(1).member_options(member);
    let pool = pool(driver, options).await?;
    let long = Duration::from_secs(30);
    // The second waits behind the first, longer than 50 ms, and then runs
    // longer than 50 ms on the member: neither times out.
    let first = enqueue(&pool, WithTimeout::new(Sleep { ms: 200 }, long));
    let second = enqueue(&pool, WithTimeout::new(Sleep { ms: 200 }, long));
    outcome(first).await?.map_err(fail)?;
    outcome(second).await?.map_err(fail)?;
    // One too long to add to a clock means none, not a panic.
    ask(&pool, WithTimeout::new(Sleep { ms: 100 }, Duration::MAX)).await?;
    // A short one of its own expires in the queue behind a busy member.
    let busy = enqueue(&pool, WithTimeout::new(Sleep { ms: FOREVER }, long));
    let own = Duration::from_millis(100);
    let error = refused(&pool, WithTimeout::new(ping("waits"), own)).await?;
    assert!(
        matches!(error, WorkerError::Timeout { after, message: "Ping", queued: true } if after == own),
        "{error:?}"
    );
    assert_eq!(report_of(&pool).await?.counters.expired, 1);
    pool.send(Close).await?;
    all_closed(vec![busy]).await?;
    Ok(())
}

async fn after_close_every_send_is_closed<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let pool = pool(driver, PoolOptions::default().members(2)).await?;
    assert_eq!(ask(&pool, ping("before")).await?.text, "pong: before");
    pool.send(Close).await?;
    let error = refused(&pool, ping("after")).await?;
    assert!(matches!(error, WorkerError::Closed), "{error:?}");
    let report = report_of(&pool).await?;
    assert_eq!(report.state, PoolState::Closed);
    assert!(report.members.is_empty(), "{report:#?}");
    pool.send(Close).await?; // closing twice is harmless
    Ok(())
}

/// A pool of two `Jobs` workers with `options` for each; one long job
/// on the first member and twenty short ones queued behind the second;
/// the first member's worker killed with SIGKILL while its job runs and
/// others wait. Answers the long job's outcome, the short ones', and the
/// pids the pool started with.
async fn kill_under_load(member: WorkerOptions) -> Result<Killed, Failed> {
    let options = PoolOptions::default().members(2).member_options(member);
    let pool = WorkerPool::<Jobs, _>::spawn_with(ChildProcess::current_exe("jobs"), options)
        .await
        .map_err(fail)?;
    let pids = report_of(&pool).await?.pids();
    let dir = tempfile::tempdir().map_err(fail)?;
    let started = dir.path().join("started");
    let long = enqueue(
        &pool,
        Job {
            id: 0,
            ms: 2_000,
            started: Some(started.clone()),
        },
    );
    let short: Vec<_> = (1..=20).map(|id| enqueue(&pool, job(id, 30))).collect();
    let loaded = report_when(&pool, "the long job running, others waiting", |r| {
        in_flight(r) == [1, 1] && r.members[0].status.in_flight == 1 && r.queued > 0
    })
    .await?;
    let victim = loaded.members[0].status.pid.ok_or("a member has a pid")?;
    // Started for sure: a job its worker never read would go to the fresh
    // worker whatever its crash policy.
    if !eventually(WAIT, || started.exists()).await {
        return Err("the long job did not start".into());
    }
    kill(victim, Signal::KILL).map_err(fail)?;
    let long = outcome(long).await?;
    let mut answers = Vec::new();
    for request in short {
        answers.push(outcome(request).await?);
    }
    // A member whose worker crashed serves on with a fresh worker.
    let after = ask(&pool, job(99, 0)).await?;
    assert_eq!(after.id, 99);
    let report = report_of(&pool).await?;
    assert_eq!(report.members.len(), 2, "{report:#?}");
    assert_eq!(report.counters.replaced, 0, "a crash is not giving up");
    assert_eq!(report.members[0].status.restarts, 1, "{report:#?}");
    pool.send(Close).await?;
    Ok(Killed {
        long,
        short: answers,
        pids,
        victim,
    })
}

struct Killed {
    long: Result<Done, WorkerError>,
    short: Vec<Result<Done, WorkerError>>,
    pids: Vec<u32>,
    victim: u32,
}

impl Killed {
    /// Every short job answered, each by its own id.
    fn short_jobs_all_answered(&self) -> Result<(), Failed> {
        for (i, answer) in self.short.iter().enumerate() {
            let done = answer
                .as_ref()
                .map_err(|e| format!("short job {}: {e}", i + 1))?;
            assert_eq!(done.id as usize, i + 1);
        }
        Ok(())
    }
}

async fn killed_under_load_with_retry() -> Result<(), Failed> {
    let member = WorkerOptions::default().on_crash::<Job>(CrashPolicy::Retry { attempts: 2 });
    let killed = kill_under_load(member).await?;
    killed.short_jobs_all_answered()?;
    let long = killed.long.map_err(fail)?;
    assert_eq!(long.id, 0);
    assert!(
        !killed.pids.contains(&long.pid),
        "the long job was retried on a fresh worker: {} not in {:?}",
        long.pid,
        killed.pids
    );
    assert!(!running(killed.victim));
    Ok(())
}

async fn killed_under_load_with_reject() -> Result<(), Failed> {
    let killed = kill_under_load(WorkerOptions::default()).await?;
    killed.short_jobs_all_answered()?;
    match killed.long {
        Err(WorkerError::Crashed {
            reason: CrashReason::Signal(9),
            attempt: 1,
            ..
        }) => {}
        other => return Err(format!("expected the long job killed, got {other:?}").into()),
    }
    Ok(())
}

/// A pool of `members` `Jobs` workers, each giving up at its first crash,
/// with `Fragile` under `policy`; and where `Fragile`'s crashes are counted.
struct FragilePool {
    pool: Addr<WorkerPool<Jobs, ChildProcess>>,
    /// Holds the count.
    _dir: tempfile::TempDir,
    crashes: PathBuf,
}

impl FragilePool {
    async fn start(members: usize, policy: CrashPolicy) -> Result<Self, Failed> {
        let member = WorkerOptions::default()
            .restart_budget(0, Duration::from_secs(60))
            .on_crash::<Fragile>(policy);
        let options = PoolOptions::default()
            .members(members)
            .member_options(member);
        let pool = WorkerPool::<Jobs, _>::spawn_with(ChildProcess::current_exe("jobs"), options)
            .await
            .map_err(fail)?;
        let dir = tempfile::tempdir().map_err(fail)?;
        let crashes = dir.path().join("crashes");
        Ok(Self {
            pool,
            _dir: dir,
            crashes,
        })
    }

    /// Sends a `Fragile` that crashes the first `crashes` workers to handle it.
    async fn send(&self, crashes: u32) -> Result<Result<u32, WorkerError>, Failed> {
        std::fs::write(&self.crashes, crashes.to_string()).map_err(fail)?;
        let fragile = Fragile {
            crashes: self.crashes.clone(),
        };
        outcome(self.pool.send(fragile)).await
    }

    /// How many crashes are left of those the last `send` allowed.
    fn crashes_left(&self) -> Result<u32, Failed> {
        crashes_left(&self.crashes)
    }
}

async fn retry_goes_to_another_member() -> Result<(), Failed> {
    let fragile = FragilePool::start(2, CrashPolicy::Retry { attempts: 2 }).await?;
    for round in 1..=3 {
        // Its member crashes and gives up; another answers: the one left
        // of those before, or the fresh one that replaces a member gone.
        let pid = fragile.send(1).await?.map_err(fail)?;
        assert_eq!(fragile.crashes_left()?, 0, "round {round}: crashed once");
        let report = report_of(&fragile.pool).await?;
        assert_eq!(report.counters.rerouted, round, "{report:#?}");
        assert_eq!(report.counters.replaced, round, "{report:#?}");
        assert!(
            report.pids().contains(&pid),
            "{pid} is a member: {report:#?}"
        );
    }
    fragile.pool.send(Close).await?;
    Ok(())
}

async fn rerouted_tries_count_on() -> Result<(), Failed> {
    // One retry: the first member's crash is the first try, the second's
    // the last, though that member never had it before.
    let fragile = FragilePool::start(3, CrashPolicy::Retry { attempts: 1 }).await?;
    let error = expect_error(fragile.send(2).await?)?;
    assert!(
        matches!(error, WorkerError::Crashed { attempt: 2, .. }),
        "{error:?}"
    );
    assert_eq!(fragile.crashes_left()?, 0, "tried twice");
    let report = report_of(&fragile.pool).await?;
    assert_eq!(report.counters.rerouted, 1, "{report:#?}");
    fragile.pool.send(Close).await?;
    Ok(())
}

async fn every_member_gives_up() -> Result<(), Failed> {
    let fragile = FragilePool::start(2, CrashPolicy::Retry { attempts: 5 }).await?;
    let error = expect_error(fragile.send(10).await?)?;
    assert!(matches!(error, WorkerError::GaveUp { .. }), "{error:?}");
    assert_eq!(fragile.crashes_left()?, 8, "tried once on each member");
    let report = report_of(&fragile.pool).await?;
    assert_eq!(report.counters.rerouted, 1, "{report:#?}");
    assert_eq!(report.counters.replaced, 2, "{report:#?}");
    fragile.pool.send(Close).await?;
    Ok(())
}

async fn reject_is_not_sent_on() -> Result<(), Failed> {
    let fragile = FragilePool::start(2, CrashPolicy::Reject).await?;
    let error = expect_error(fragile.send(1).await?)?;
    assert!(
        matches!(error, WorkerError::Crashed { attempt: 1, .. }),
        "{error:?}"
    );
    let report = report_of(&fragile.pool).await?;
    assert_eq!(report.counters.rerouted, 0, "{report:#?}");
    fragile.pool.send(Close).await?;
    Ok(())
}

async fn close_ends_every_member_process() -> Result<(), Failed> {
    let options = PoolOptions::default().min_members(1).max_members(3);
    let pool = pool(calc(), options).await?;
    // Grow to three, each busy.
    let busy: Vec<_> = (0..3)
        .map(|_| enqueue(&pool, Sleep { ms: FOREVER }))
        .collect();
    let grown = report_when(&pool, "three busy members", |r| in_flight(r) == [1, 1, 1]).await?;
    let pids = grown.pids();
    assert_eq!(pids.len(), 3);
    pool.send(Close).await?;
    for pid in &pids {
        assert!(!running(*pid), "member {pid} still runs after Close");
    }
    all_closed(busy).await
}

async fn dropping_the_pool_ends_every_member_process() -> Result<(), Failed> {
    let pool = pool(calc(), PoolOptions::default().members(2)).await?;
    let pids = report_of(&pool).await?.pids();
    assert_eq!(pids.len(), 2);
    drop(pool);
    for pid in pids {
        assert!(
            eventually(WAIT, || !running(pid)).await,
            "member {pid} still runs after its pool was dropped"
        );
    }
    Ok(())
}

async fn a_batch_beyond_the_members_and_the_queue_overloads_the_rest<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let options = PoolOptions::default().members(2).max_queued(3);
    let pool = pool(driver, options).await?;
    let naps = pool.send(Batch::new(vec![Sleep { ms: 20 }; 7])).await?;
    let (fit, rest) = naps.split_at(5);
    for nap in fit {
        assert!(
            nap.is_ok(),
            "two went to the members, three waited: {nap:?}"
        );
    }
    for nap in rest {
        let overloaded = matches!(nap, Err(WorkerError::Overloaded { limit: 3 }));
        assert!(overloaded, "the rest found the queue full: {nap:?}");
    }
    let report = report_of(&pool).await?;
    assert_eq!(
        (report.counters.dispatched, report.counters.overloaded),
        (5, 2),
        "{report:#?}"
    );
    pool.send(Close).await?;
    let closed = pool.send(Batch::new(vec![ping("late")])).await?;
    assert!(
        matches!(closed[..], [Err(WorkerError::Closed)]),
        "{closed:?}"
    );
    Ok(())
}

async fn a_dropped_batch_is_withdrawn_or_never_sent<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let pool = pool(driver, PoolOptions::default().members(1)).await?;
    // One item goes to the member, the other waits in the queue.
    let naps = enqueue(&pool, Batch::new(vec![Sleep { ms: FOREVER }; 2]));
    let kept = enqueue(&pool, Increment { by: 1 });
    assert_eq!(report_of(&pool).await?.queued, 2);
    // The member is freed of the item in flight, skips the waiting one,
    // and takes the kept request.
    drop(naps);
    assert_eq!(outcome(kept).await?.map_err(fail)?, 1);
    let report = report_of(&pool).await?;
    assert_eq!(
        (report.counters.abandoned, report.counters.dispatched),
        (2, 2),
        "{report:#?}"
    );
    pool.send(Close).await?;
    Ok(())
}

async fn a_batch_is_spread_over_the_members() -> Result<(), Failed> {
    let options = PoolOptions::default()
        .members(3)
        .max_in_flight_per_member(2);
    let pool = WorkerPool::<Jobs, _>::spawn_with(ChildProcess::current_exe("jobs"), options)
        .await
        .map_err(fail)?;
    let pids = report_of(&pool).await?.pids();
    let jobs = pool.send(Batch::from_iter((0..6).map(|id| job(id, 50))));
    let done: Vec<Done> = jobs
        .await?
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let ids: Vec<u32> = done.iter().map(|done| done.id).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5], "answered in order");
    // Placed as lone requests would be: the least loaded member first, so
    // items i and i + 3 share a member, and each member gets one share.
    let by: Vec<u32> = done.iter().map(|done| done.pid).collect();
    assert_eq!(by[..3], pids[..], "one of the first three each: {by:?}");
    assert_eq!(by[..3], by[3..], "then one more each: {by:?}");
    let report = report_of(&pool).await?;
    assert_eq!(report.counters.dispatched, 6, "{report:#?}");
    pool.send(Close).await?;
    Ok(())
}

async fn a_batch_survives_a_member_killed_mid_batch() -> Result<(), Failed> {
    let member = WorkerOptions::default().on_crash::<Job>(CrashPolicy::Retry { attempts: 2 });
    let options = PoolOptions::default()
        .members(2)
        .max_in_flight_per_member(2)
        .member_options(member);
    let pool = WorkerPool::<Jobs, _>::spawn_with(ChildProcess::current_exe("jobs"), options)
        .await
        .map_err(fail)?;
    let pids = report_of(&pool).await?.pids();
    let dir = tempfile::tempdir().map_err(fail)?;
    let markers: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("{i}"))).collect();
    let jobs = markers.iter().enumerate().map(|(id, marker)| Job {
        id: id as u32,
        ms: 2_000,
        started: Some(marker.clone()),
    });
    let batch = enqueue(&pool, Batch::from_iter(jobs));
    // Every job started: those of the killed member run again by their
    // crash policy, not because their worker never read them.
    if !eventually(WAIT, || markers.iter().all(|marker| marker.exists())).await {
        return Err("the jobs did not start".into());
    }
    let victim = pids[0];
    kill(victim, Signal::KILL).map_err(fail)?;
    let done: Vec<Done> = batch
        .await?
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let ids: Vec<u32> = done.iter().map(|done| done.id).collect();
    assert_eq!(ids, [0, 1, 2, 3], "answered in order");
    // Items 0 and 2 were the first member's, 1 and 3 the second's.
    for done in &done {
        match done.id % 2 {
            0 => assert!(
                ![victim, pids[1]].contains(&done.pid),
                "{done:?} by a fresh worker"
            ),
            _ => assert_eq!(done.pid, pids[1], "{done:?} by the member left alone"),
        }
    }
    assert!(!running(victim));
    pool.send(Close).await?;
    Ok(())
}
