//! What happens to requests when their worker crashes: rejected (the
//! default) or retried on a fresh worker, and when the proxy stops
//! restarting a worker that keeps crashing.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use isolated_workers::{
    Batch, ChildProcess, CrashPolicy, CrashReason, Status, Thread, Worker, WorkerError,
    WorkerOptions, WorkerState,
};
use libtest_mimic::Failed;
use serde::{Deserialize, Serialize};
use support::{actix_test, enqueue, fail, run};

/// Panics unless the file `marker` exists, creating it first: the first
/// worker to handle it dies, a fresh one answers (with its pid).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CrashOnce {
    marker: PathBuf,
}

/// Always panics.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CrashAlways;

/// Answers after `ms` milliseconds, with the worker's pid.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Nap {
    ms: u64,
}

/// Creates the file `marker`, then naps like [`Nap`]: once the marker is
/// there, the request has surely started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MarkThenNap {
    marker: PathBuf,
    ms: u64,
}

isolated_workers::contract! {
    Flaky {
        CrashOnce => u32,
        CrashAlways => (),
        Nap => u32,
        MarkThenNap => u32,
    }
}

/// Refuses to start while this file exists: a worker that dies on start-up.
const START_BLOCKER_ENV: &str = "CRASH_POLICIES_START_BLOCKER";

#[derive(Default)]
struct FlakyWorker;

impl Actor for FlakyWorker {
    type Context = Context<Self>;
}

impl Handler<CrashOnce> for FlakyWorker {
    type Result = Result<u32, WorkerError>;
    fn handle(&mut self, crash: CrashOnce, _: &mut Context<Self>) -> Self::Result {
        if std::fs::metadata(&crash.marker).is_err() {
            std::fs::write(&crash.marker, b"crashed once").expect("marker written");
            support::panic_on_purpose("first try");
        }
        Ok(std::process::id())
    }
}

impl Handler<CrashAlways> for FlakyWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, _: CrashAlways, _: &mut Context<Self>) -> Self::Result {
        support::panic_on_purpose("always");
    }
}

impl Handler<Nap> for FlakyWorker {
    type Result = ResponseFuture<Result<u32, WorkerError>>;
    fn handle(&mut self, nap: Nap, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(nap.ms)).await;
            Ok(std::process::id())
        })
    }
}

impl Handler<MarkThenNap> for FlakyWorker {
    type Result = ResponseFuture<Result<u32, WorkerError>>;
    fn handle(&mut self, nap: MarkThenNap, ctx: &mut Context<Self>) -> Self::Result {
        std::fs::write(&nap.marker, b"started").expect("marker written");
        self.handle(Nap { ms: nap.ms }, ctx)
    }
}

fn flaky_worker() -> FlakyWorker {
    if let Some(blocker) = std::env::var_os(START_BLOCKER_ENV) {
        if std::fs::metadata(blocker).is_ok() {
            support::panic_on_purpose("refusing to start: the blocker file exists");
        }
    }
    FlakyWorker
}

fn main() {
    support::quiet_panics_on_purpose();
    isolated_workers::worker_entry::<Flaky, _>("flaky", flaky_worker);
    run(vec![
        actix_test(
            "a_crash_rejects_a_request_after_one_try_by_default",
            rejects_by_default,
        ),
        actix_test(
            "retry_tries_again_on_a_fresh_worker_which_answers",
            retry_succeeds,
        ),
        actix_test(
            "retry_gives_up_after_its_attempts_naming_the_last",
            retry_exhausted,
        ),
        actix_test(
            "under_retry_every_item_of_a_batch_whose_worker_crashes_is_answered",
            batch_retried_after_a_crash,
        ),
        actix_test(
            "a_crash_loop_stops_after_the_restart_budget",
            crash_loop_gives_up,
        ),
        actix_test(
            "kill_9_with_1000_retried_requests_in_flight_answers_each_once",
            kill_storm_with_retry,
        ),
        actix_test(
            "a_request_sent_right_after_sigkill_goes_to_a_fresh_worker_unsupervised_too",
            unread_request_goes_to_fresh_worker,
        ),
        actix_test(
            "a_request_being_handled_at_sigkill_still_fails_crashed_under_reject",
            started_request_is_rejected,
        ),
        actix_test(
            "a_thread_worker_cannot_retry_a_moved_message",
            thread_cannot_retry,
        ),
    ]);
}

fn flaky() -> ChildProcess {
    ChildProcess::current_exe("flaky")
}

async fn spawn(options: WorkerOptions) -> Result<Addr<Worker<Flaky>>, Failed> {
    Worker::spawn_with(flaky(), options).await.map_err(fail)
}

fn temp_dir() -> Result<tempfile::TempDir, Failed> {
    tempfile::tempdir().map_err(fail)
}

fn crash_attempt(outcome: &Result<impl std::fmt::Debug, WorkerError>) -> Option<u32> {
    match outcome {
        Err(WorkerError::Crashed {
            attempt,
            reason: CrashReason::Exit(101) | CrashReason::Panic,
            ..
        }) => Some(*attempt),
        _ => None,
    }
}

async fn rejects_by_default() -> Result<(), Failed> {
    let worker = spawn(WorkerOptions::default()).await?;
    let dir = temp_dir()?;
    let outcome = worker
        .send(CrashOnce {
            marker: dir.path().join("m"),
        })
        .await?;
    assert_eq!(crash_attempt(&outcome), Some(1), "{outcome:?}");
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

async fn retry_succeeds() -> Result<(), Failed> {
    let options =
        WorkerOptions::default().on_crash::<CrashOnce>(CrashPolicy::Retry { attempts: 1 });
    let worker = spawn(options).await?;
    let first_pid = worker.send(Status).await?.pid;
    let dir = temp_dir()?;
    let pid = worker
        .send(CrashOnce {
            marker: dir.path().join("m"),
        })
        .await?
        .map_err(fail)?;
    assert_ne!(Some(pid), first_pid, "answered by a fresh worker");
    assert_eq!(worker.send(Status).await?.restarts, 1);
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

async fn retry_exhausted() -> Result<(), Failed> {
    let options =
        WorkerOptions::default().on_crash::<CrashAlways>(CrashPolicy::Retry { attempts: 3 });
    let worker = spawn(options).await?;
    let outcome = worker.send(CrashAlways).await?;
    assert_eq!(
        crash_attempt(&outcome),
        Some(4),
        "the first try and 3 retries: {outcome:?}"
    );
    assert_eq!(worker.send(Status).await?.restarts, 3);
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

async fn crash_loop_gives_up() -> Result<(), Failed> {
    let dir = temp_dir()?;
    let blocker = dir.path().join("blocker");
    let driver = flaky().env(START_BLOCKER_ENV, &blocker);
    let options = WorkerOptions::default().restart_budget(2, Duration::from_secs(60));
    let worker = Worker::<Flaky, _>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    // From now on no fresh worker can start.
    std::fs::write(&blocker, b"no more").map_err(fail)?;
    let crashed = worker.send(CrashAlways).await?;
    assert_eq!(crash_attempt(&crashed), Some(1), "{crashed:?}");
    let next = worker.send(Nap { ms: 1 }).await?;
    match next {
        Err(WorkerError::GaveUp {
            restarts: 2,
            ref last,
            ..
        }) => {
            assert!(last.to_string().contains("restart failed"), "{last}");
        }
        other => return Err(format!("expected GaveUp after 2 restarts, got {other:?}").into()),
    }
    let status = worker.send(Status).await?;
    assert!(
        matches!(status.state, WorkerState::GaveUp { restarts: 2, .. }),
        "{status:?}"
    );
    // It stays given up: no endless respawning.
    assert!(matches!(
        worker.send(Nap { ms: 1 }).await?,
        Err(WorkerError::GaveUp { .. })
    ));
    worker.send(isolated_workers::Close).await?;
    remove_if_present(&blocker);
    Ok(())
}

fn remove_if_present(path: &Path) {
    let _ = std::fs::remove_file(path);
}

async fn kill_storm_with_retry() -> Result<(), Failed> {
    let options = WorkerOptions::default().on_crash::<Nap>(CrashPolicy::Retry { attempts: 1 });
    let worker = spawn(options).await?;
    let pid = worker.send(Status).await?.pid.ok_or("a child has a pid")?;
    let naps: Vec<_> = (0..1000)
        .map(|_| enqueue(&worker, Nap { ms: 300 }))
        .collect();
    // Every nap is in flight once Status (queued behind them) answers.
    assert_eq!(worker.send(Status).await?.in_flight, 1000);
    sigkill(pid)?;
    let outcomes = tokio::time::timeout(Duration::from_secs(20), join_all(naps))
        .await
        .map_err(|_| "the retried naps did not all finish")?;
    assert_eq!(outcomes.len(), 1000);
    for outcome in outcomes {
        let answered_by = outcome?.map_err(fail)?;
        assert_ne!(answered_by, pid, "answered by the fresh worker");
    }
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

fn sigkill(pid: u32) -> Result<(), Failed> {
    support::kill(pid, rustix::process::Signal::KILL).map_err(fail)
}

/// Room for `restarts` restarts, without waiting between them.
fn restarts_at_once(restarts: u32) -> WorkerOptions {
    WorkerOptions::default()
        .restart_budget(restarts, Duration::from_secs(3600))
        .restart_backoff(Duration::from_millis(1), Duration::from_millis(1))
}

async fn unread_request_goes_to_fresh_worker() -> Result<(), Failed> {
    const CYCLES: u32 = 20;
    let worker = spawn(restarts_at_once(CYCLES)).await?;
    for cycle in 0..CYCLES {
        let killed = worker.send(Status).await?.pid.ok_or("a child has a pid")?;
        sigkill(killed)?;
        // Under the default `Reject`, yet never read by the dead worker.
        match enqueue(&worker, Nap { ms: 1 }).await? {
            Ok(pid) if pid != killed => {}
            other => {
                return Err(
                    format!("cycle {cycle}: expected a fresh worker's pid, got {other:?}").into(),
                )
            }
        }
    }
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

async fn started_request_is_rejected() -> Result<(), Failed> {
    let worker = Worker::<Flaky, _>::supervise(flaky(), restarts_at_once(1))
        .await
        .map_err(fail)?;
    let killed = worker.send(Status).await?.pid.ok_or("a child has a pid")?;
    let dir = temp_dir()?;
    let marker = dir.path().join("started");
    let nap = enqueue(
        &worker,
        MarkThenNap {
            marker: marker.clone(),
            ms: 600_000,
        },
    );
    if !support::eventually(Duration::from_secs(20), || marker.exists()).await {
        return Err("the handler did not start".into());
    }
    sigkill(killed)?;
    match nap.await? {
        Err(WorkerError::Crashed {
            reason: CrashReason::Signal(9),
            attempt: 1,
            ..
        }) => {}
        other => return Err(format!("expected Crashed by SIGKILL, got {other:?}").into()),
    }
    // The fresh worker serves on.
    let pid = worker.send(Nap { ms: 1 }).await?.map_err(fail)?;
    assert_ne!(pid, killed);
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

async fn thread_cannot_retry() -> Result<(), Failed> {
    let options =
        WorkerOptions::default().on_crash::<CrashAlways>(CrashPolicy::Retry { attempts: 3 });
    let worker = Worker::<Flaky, _>::spawn_with(Thread::new(flaky_worker), options)
        .await
        .map_err(fail)?;
    let outcome = worker.send(CrashAlways).await?;
    assert_eq!(crash_attempt(&outcome), Some(1), "{outcome:?}");
    worker.send(isolated_workers::Close).await?;
    Ok(())
}

async fn batch_retried_after_a_crash() -> Result<(), Failed> {
    let options =
        WorkerOptions::default().on_crash::<CrashOnce>(CrashPolicy::Retry { attempts: 1 });
    let worker = spawn(options).await?;
    let crashed = worker.send(Status).await?.pid.ok_or("a child has a pid")?;
    let dir = temp_dir()?;
    let marker = dir.path().join("crashed");
    // The first item crashes the worker; every item, read by it or not,
    // goes to the fresh one, which answers each.
    let batch = Batch::new(vec![CrashOnce { marker }; 8]);
    let pids = worker.send(batch).await?;
    assert_eq!(pids.len(), 8);
    for pid in pids {
        let pid = pid.map_err(fail)?;
        assert_ne!(pid, crashed, "answered by the fresh worker");
    }
    let status = worker.send(Status).await?;
    assert_eq!(status.counters.crashes, 1, "{status:?}");
    worker.send(isolated_workers::Close).await?;
    Ok(())
}
