//! Workers under actix's `Supervisor` (`Worker::supervise`): a crashed
//! worker is replaced at once behind the same `Addr`, requests sent
//! meanwhile wait or fail as the options say, a crash loop stops at the
//! restart budget, and watchers hear of each crash, restart and giving up.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use isolated_workers::{
    ChildProcess, CrashPolicy, CrashReason, LifecycleEvent, Status, Thread, Watch, WhileRestarting,
    Worker, WorkerError, WorkerOptions, WorkerState,
};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::{
    actix_test, ask, calc, close, enqueue, fail, kill, outcome, pid_of, ping, run, running, Calc,
    CalcWorker, Explode, Increment, Sleep, WhoAmI,
};
use tokio::sync::mpsc;

/// Names a file; while it exists, a `calc-blockable` worker refuses to
/// start.
const START_BLOCKER_ENV: &str = "SUPERVISION_START_BLOCKER";

fn blockable_calc() -> CalcWorker {
    if let Some(blocker) = std::env::var_os(START_BLOCKER_ENV) {
        if std::fs::metadata(blocker).is_ok() {
            support::panic_on_purpose("refusing to start: the blocker file exists");
        }
    }
    CalcWorker::default()
}

fn main() {
    support::enter_workers();
    isolated_workers::worker_entry::<Calc, _>("calc-blockable", blockable_calc);
    run(vec![
        actix_test(
            "a_child_worker_is_replaced_at_once_after_sigkill",
            child_replaced_after_sigkill,
        ),
        actix_test(
            "a_thread_worker_is_replaced_at_once_after_a_panic",
            thread_replaced_after_panic,
        ),
        actix_test(
            "requests_sent_during_a_restart_go_to_the_fresh_worker",
            requests_wait_for_restart,
        ),
        actix_test(
            "requests_sent_during_a_restart_fail_at_once_when_rejecting",
            requests_rejected_during_restart,
        ),
        actix_test(
            "close_during_a_restart_backoff_calls_the_restart_off",
            close_during_restart,
        ),
        actix_test(
            "a_request_to_retry_completes_on_the_fresh_worker",
            retried_request_completes,
        ),
        actix_test(
            "a_request_sent_right_after_sigkill_goes_to_the_fresh_worker_100_of_100",
            request_after_sigkill_goes_to_fresh_worker,
        ),
        actix_test(
            "a_crash_loop_stops_at_the_restart_budget_and_says_so",
            crash_loop_gives_up,
        ),
        actix_test(
            "an_unsupervised_worker_tells_its_watchers_too",
            unsupervised_worker_tells,
        ),
        actix_test(
            "dropping_the_last_address_ends_a_supervised_worker",
            dropped_supervised_worker_ends,
        ),
    ]);
}

/// Collects the lifecycle events a worker tells it, in order.
struct Recorder(mpsc::UnboundedSender<LifecycleEvent>);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<LifecycleEvent> for Recorder {
    type Result = ();
    fn handle(&mut self, event: LifecycleEvent, _: &mut Context<Self>) {
        let _ = self.0.send(event);
    }
}

/// The events a [`Recorder`] received; holding it keeps the recorder
/// alive (a worker holds its watchers weakly).
struct Heard {
    events: mpsc::UnboundedReceiver<LifecycleEvent>,
    _recorder: Addr<Recorder>,
}

/// A watcher and the events it receives.
fn recorder() -> (Recipient<LifecycleEvent>, Heard) {
    let (tx, events) = mpsc::unbounded_channel();
    let recorder = Recorder(tx).start();
    let heard = Heard {
        events,
        _recorder: recorder.clone(),
    };
    (recorder.recipient(), heard)
}

/// The next event, or a failure if none comes.
async fn next_event(heard: &mut Heard) -> Result<LifecycleEvent, Failed> {
    match tokio::time::timeout(Duration::from_secs(20), heard.events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err("the watcher stopped".into()),
        Err(_) => Err("no lifecycle event within 20 s".into()),
    }
}

fn sigkill(pid: u32) -> Result<(), Failed> {
    kill(pid, Signal::KILL).map_err(fail)
}

async fn supervised_calc(options: WorkerOptions) -> Result<Addr<Worker<Calc>>, Failed> {
    Worker::<Calc>::supervise(calc(), options)
        .await
        .map_err(fail)
}

async fn child_replaced_after_sigkill() -> Result<(), Failed> {
    let (watcher, mut events) = recorder();
    let worker = supervised_calc(WorkerOptions::default().watched_by(watcher)).await?;
    let id = worker.send(Status).await?.id;
    let first = pid_of(&worker).await?;
    sigkill(first)?;
    // No request is needed for the restart.
    match next_event(&mut events).await? {
        LifecycleEvent::Crashed {
            worker: w,
            reason: CrashReason::Signal(9),
            ..
        } if w == id => {}
        other => return Err(format!("expected a SIGKILL crash of {id}, got {other:?}").into()),
    }
    match next_event(&mut events).await? {
        LifecycleEvent::Restarted {
            worker: w,
            restarts: 1,
        } if w == id => {}
        other => return Err(format!("expected the first restart, got {other:?}").into()),
    }
    let status = worker.send(Status).await?;
    assert_eq!(status.state, WorkerState::Running, "{status:?}");
    assert_eq!((status.id, status.restarts), (id, 1), "{status:?}");
    let second = ask(&worker, WhoAmI).await?;
    assert_ne!(first, second, "the same worker answered after SIGKILL");
    assert!(!running(first), "the killed worker {first} still runs");
    assert_eq!(ask(&worker, ping("back")).await?.text, "pong: back");
    close(&worker).await
}

async fn thread_replaced_after_panic() -> Result<(), Failed> {
    let worker =
        Worker::<Calc, _>::supervise(Thread::new(CalcWorker::default), WorkerOptions::default())
            .await
            .map_err(fail)?;
    // Subscribed after the spawn, with the message.
    let (watcher, mut events) = recorder();
    worker.send(Watch(watcher)).await?;
    assert_eq!(ask(&worker, Increment { by: 5 }).await?, 5);
    let crashed = worker
        .send(Explode {
            message: "boom".into(),
        })
        .await?;
    assert!(
        matches!(crashed, Err(WorkerError::Crashed { .. })),
        "{crashed:?}"
    );
    assert!(
        matches!(
            next_event(&mut events).await?,
            LifecycleEvent::Crashed {
                reason: CrashReason::Panic,
                ..
            }
        ),
        "expected a panic"
    );
    assert!(matches!(
        next_event(&mut events).await?,
        LifecycleEvent::Restarted { restarts: 1, .. }
    ));
    // A fresh actor: its count starts again.
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 1);
    worker.send(isolated_workers::Close).await.map_err(fail)
}

/// Kills the worker and waits until the proxy has noticed: from then on it
/// handles no message until the restart (actix does not process the
/// mailbox of a stopping actor).
async fn kill_and_wait_for_crash(
    worker: &Addr<Worker<Calc>>,
    events: &mut Heard,
) -> Result<u32, Failed> {
    let pid = pid_of(worker).await?;
    sigkill(pid)?;
    match next_event(events).await? {
        LifecycleEvent::Crashed { .. } => Ok(pid),
        other => Err(format!("expected a crash, got {other:?}").into()),
    }
}

async fn requests_wait_for_restart() -> Result<(), Failed> {
    let (watcher, mut events) = recorder();
    let worker = supervised_calc(WorkerOptions::default().watched_by(watcher)).await?;
    let killed = kill_and_wait_for_crash(&worker, &mut events).await?;
    let during = [enqueue(&worker, WhoAmI), enqueue(&worker, WhoAmI)];
    for request in during {
        let pid = outcome(request).await?.map_err(fail)?;
        assert_ne!(pid, killed, "answered by the killed worker");
    }
    close(&worker).await
}

/// The backoff of [`in_a_long_restart`]'s second restart: longer than any
/// test sits out.
const LONG_BACKOFF: Duration = Duration::from_secs(30);

/// A supervised worker that refuses requests while it restarts, killed
/// twice: the first restart is immediate, the second waits
/// [`LONG_BACKOFF`], and the worker is in that wait when this returns.
async fn in_a_long_restart() -> Result<(Addr<Worker<Calc>>, Heard), Failed> {
    let (watcher, mut events) = recorder();
    let options = WorkerOptions::default()
        .watched_by(watcher)
        .while_restarting(WhileRestarting::Reject)
        .restart_backoff(LONG_BACKOFF, LONG_BACKOFF);
    let worker = supervised_calc(options).await?;
    kill_and_wait_for_crash(&worker, &mut events).await?;
    assert!(matches!(
        next_event(&mut events).await?,
        LifecycleEvent::Restarted { restarts: 1, .. }
    ));
    kill_and_wait_for_crash(&worker, &mut events).await?;
    Ok((worker, events))
}

async fn requests_rejected_during_restart() -> Result<(), Failed> {
    let (worker, _events) = in_a_long_restart().await?;
    let asked = Instant::now();
    let refused = worker.send(WhoAmI).await?;
    assert!(
        matches!(
            refused,
            Err(WorkerError::Crashed {
                reason: CrashReason::Signal(9),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the refusal waited for the restart"
    );
    let status = worker.send(Status).await?;
    assert!(
        matches!(status.state, WorkerState::Crashed { .. }),
        "{status:?}"
    );
    close(&worker).await
}

async fn close_during_restart() -> Result<(), Failed> {
    // Requests are refused during a restart, so `Close` is handled during
    // one.
    let (worker, mut events) = in_a_long_restart().await?;
    let asked = Instant::now();
    worker.send(isolated_workers::Close).await?;
    assert!(
        asked.elapsed() < LONG_BACKOFF / 2,
        "Close sat out the backoff instead of cancelling the restart"
    );
    // `Close` resolved after the restart was called off: nothing starts.
    let status = worker.send(Status).await?;
    assert_eq!(status.state, WorkerState::Closed, "{status:?}");
    assert_eq!(status.pid, None, "{status:?}");
    assert!(
        events.events.try_recv().is_err(),
        "a restart was announced after Close"
    );
    Ok(())
}

async fn retried_request_completes() -> Result<(), Failed> {
    let (watcher, mut events) = recorder();
    let options = WorkerOptions::default()
        .watched_by(watcher)
        .on_crash::<Sleep>(CrashPolicy::Retry { attempts: 1 });
    let worker = supervised_calc(options).await?;
    let pid = pid_of(&worker).await?;
    let nap = enqueue(&worker, Sleep { ms: 200 });
    // Status is handled after the Sleep was written to the worker.
    assert_eq!(worker.send(Status).await?.in_flight, 1);
    sigkill(pid)?;
    outcome(nap).await?.map_err(fail)?;
    assert!(matches!(
        next_event(&mut events).await?,
        LifecycleEvent::Crashed { .. }
    ));
    assert!(matches!(
        next_event(&mut events).await?,
        LifecycleEvent::Restarted { .. }
    ));
    assert_eq!(worker.send(Status).await?.counters.crashes, 1);
    close(&worker).await
}

/// Kill+send cycles of [`request_after_sigkill_goes_to_fresh_worker`].
const KILL_AND_SEND_CYCLES: u32 = 100;

async fn request_after_sigkill_goes_to_fresh_worker() -> Result<(), Failed> {
    // Room for a restart per cycle, without waiting between them.
    let options = WorkerOptions::default()
        .restart_budget(KILL_AND_SEND_CYCLES + 1, Duration::from_secs(3600))
        .restart_backoff(Duration::from_millis(1), Duration::from_millis(1));
    let worker = supervised_calc(options).await?;
    for cycle in 0..KILL_AND_SEND_CYCLES {
        let killed = pid_of(&worker).await?;
        sigkill(killed)?;
        // Before the proxy can have seen the death: under the default
        // `Reject` it must still not fail, since the dead worker never
        // read it.
        let answered = outcome(enqueue(&worker, WhoAmI)).await?;
        match answered {
            Ok(pid) if pid != killed => {}
            other => {
                return Err(format!(
                    "cycle {cycle}: expected the fresh worker's pid, got {other:?}"
                )
                .into())
            }
        }
    }
    assert_eq!(
        worker.send(Status).await?.restarts,
        KILL_AND_SEND_CYCLES,
        "one restart per kill"
    );
    close(&worker).await
}

async fn crash_loop_gives_up() -> Result<(), Failed> {
    let dir = tempfile::tempdir().map_err(fail)?;
    let blocker: PathBuf = dir.path().join("blocker");
    let (watcher, mut events) = recorder();
    let backoff = Duration::from_millis(200);
    let options = WorkerOptions::default()
        .watched_by(watcher)
        .restart_budget(2, Duration::from_secs(60))
        .restart_backoff(backoff, backoff);
    let driver = ChildProcess::current_exe("calc-blockable").env(START_BLOCKER_ENV, &blocker);
    let worker = Worker::<Calc, _>::supervise(driver, options)
        .await
        .map_err(fail)?;
    // From now on no fresh worker can start.
    std::fs::write(&blocker, b"no more").map_err(fail)?;
    kill_and_wait_for_crash(&worker, &mut events).await?;
    // Two restarts fail, the second after the backoff; then it gives up.
    let mut failed_at = Vec::new();
    for _ in 0..2 {
        match next_event(&mut events).await? {
            LifecycleEvent::Crashed {
                message: Some(message),
                ..
            } if message.contains("restart failed") => failed_at.push(Instant::now()),
            other => return Err(format!("expected a failed restart, got {other:?}").into()),
        }
    }
    assert!(
        failed_at[1] - failed_at[0] >= backoff,
        "the second restart did not wait for its backoff"
    );
    match next_event(&mut events).await? {
        LifecycleEvent::GaveUp {
            restarts: 2, last, ..
        } => assert!(last.to_string().contains("restart failed"), "{last}"),
        other => return Err(format!("expected GaveUp after 2 restarts, got {other:?}").into()),
    }
    let refused = worker.send(ping("anyone?")).await?;
    assert!(
        matches!(refused, Err(WorkerError::GaveUp { restarts: 2, .. })),
        "{refused:?}"
    );
    let status = worker.send(Status).await?;
    assert!(
        matches!(status.state, WorkerState::GaveUp { restarts: 2, .. }),
        "{status:?}"
    );
    close(&worker).await
}

async fn unsupervised_worker_tells() -> Result<(), Failed> {
    let (watcher, mut events) = recorder();
    let worker = support::spawn_calc_with(WorkerOptions::default().watched_by(watcher)).await?;
    let killed = kill_and_wait_for_crash(&worker, &mut events).await?;
    let status = worker.send(Status).await?;
    assert!(
        matches!(status.state, WorkerState::Crashed { .. }),
        "restarted before a request needed it: {status:?}"
    );
    // The next request brings up a fresh worker.
    assert_ne!(ask(&worker, WhoAmI).await?, killed);
    assert!(matches!(
        next_event(&mut events).await?,
        LifecycleEvent::Restarted { restarts: 1, .. }
    ));
    close(&worker).await
}

async fn dropped_supervised_worker_ends() -> Result<(), Failed> {
    let (watcher, mut events) = recorder();
    let worker = supervised_calc(WorkerOptions::default().watched_by(watcher)).await?;
    let pid = pid_of(&worker).await?;
    drop(worker);
    if !support::eventually(Duration::from_secs(10), || !running(pid)).await {
        return Err(format!("worker {pid} outlived its last address").into());
    }
    // Ended, not crashed: nothing to restart, nothing to tell.
    tokio::task::yield_now().await;
    assert!(
        events.events.try_recv().is_err(),
        "a watcher heard of a crash"
    );
    Ok(())
}
