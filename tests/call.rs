//! `Call`: `call` answers a reply or one `WorkerError`, for a child
//! worker, a pool and a `Recipient` of either: the handler's error, a
//! crash (`kill -9` with the request in flight), and a worker or pool
//! that was closed, whether its proxy still answers (`Closed` from the
//! proxy) or has stopped (actix's `MailboxError`, folded into `Closed`).

mod support;

use std::time::Duration;

use actix::prelude::*;
use isolated_workers::{Call, Close, CrashReason, PoolOptions, WorkerError, WorkerPool};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::*;

/// How long a condition may take to come true.
const WAIT: Duration = Duration::from_secs(20);

fn main() {
    enter_workers();
    run(vec![
        actix_test(
            "a_child_worker_answers_its_reply_or_one_error",
            child_worker,
        ),
        actix_test("a_pool_answers_its_reply_or_one_error", pool),
        actix_test("a_recipient_answers_as_its_worker_does", recipient),
        actix_test("a_stopped_proxy_is_closed", stopped_proxy),
    ]);
}

/// A reply, the handler's error, a crash, and `Closed` after `Close`.
async fn child_worker() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pong = worker.call(ping("hi")).await.map_err(fail)?;
    assert_eq!(pong.text, "pong: hi");
    match worker.call(Divide { a: 1.0, b: 0.0 }).await {
        Err(WorkerError::Remote(remote)) => assert_eq!(remote.name, "DivideByZero"),
        other => return Err(format!("expected Remote, got {other:?}").into()),
    }

    // Killed with a request the worker has read: requests are read in
    // order, so once the ping sent after it is answered.
    let pid = pid_of(&worker).await?;
    let sleeping = worker.call(Sleep { ms: 300_000 });
    let killed = async {
        worker.call(ping("after the sleep")).await.map_err(fail)?;
        kill(pid, Signal::KILL).map_err(fail)
    };
    let (slept, killed) = futures::join!(sleeping, killed);
    killed?;
    match slept {
        Err(WorkerError::Crashed {
            reason: CrashReason::Signal(9),
            ..
        }) => {}
        other => return Err(format!("expected Crashed by SIGKILL, got {other:?}").into()),
    }

    worker.send(Close).await.map_err(fail)?;
    closed(worker.call(ping("after close")).await)
}

/// A reply, the handler's error, and `Closed` after `Close`.
async fn pool() -> Result<(), Failed> {
    let pool = WorkerPool::<Calc, _>::spawn_with(calc(), PoolOptions::default().members(2))
        .await
        .map_err(fail)?;
    let quotient = pool.call(Divide { a: 9.0, b: 3.0 }).await.map_err(fail)?;
    assert_eq!(quotient, 3.0);
    match pool.call(Divide { a: 1.0, b: 0.0 }).await {
        Err(WorkerError::Remote(remote)) => assert_eq!(remote.name, "DivideByZero"),
        other => return Err(format!("expected Remote, got {other:?}").into()),
    }
    pool.send(Close).await.map_err(fail)?;
    closed(pool.call(ping("after close")).await)
}

/// A worker's and a pool's recipients answer replies and `Closed`.
async fn recipient() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pool = WorkerPool::<Calc, _>::spawn(calc()).await.map_err(fail)?;
    let recipients = [worker.clone().recipient::<Ping>(), pool.clone().recipient()];
    for (recipient, who) in recipients.iter().zip(["worker", "pool"]) {
        let pong = recipient.call(ping(who)).await.map_err(fail)?;
        assert_eq!(pong.text, format!("pong: {who}"));
    }
    worker.send(Close).await.map_err(fail)?;
    pool.send(Close).await.map_err(fail)?;
    for recipient in &recipients {
        closed(recipient.call(ping("after close")).await)?;
    }
    Ok(())
}

/// A proxy actor that has stopped (here with the arbiter it ran on) while
/// addresses to it are held: `send` fails with actix's `MailboxError`, and
/// `call` answers `Closed`, through an `Addr` and a `Recipient` alike.
async fn stopped_proxy() -> Result<(), Failed> {
    let arbiter = Arbiter::new();
    let (spawned_tx, spawned_rx) = futures::channel::oneshot::channel();
    arbiter.spawn_fn(move || {
        actix::spawn(async move {
            let _ = spawned_tx.send(spawn_calc().await);
        });
    });
    let worker = spawned_rx.await.map_err(fail)??;
    let pid = pid_of(&worker).await?;
    let recipient = worker.clone().recipient::<Ping>();
    arbiter.stop();
    if !eventually(WAIT, || !worker.connected()).await {
        return Err("the proxy outlived its arbiter".into());
    }
    match worker.send(ping("to a stopped proxy")).await {
        Err(MailboxError::Closed) => {}
        other => return Err(format!("expected a MailboxError, got {other:?}").into()),
    }
    closed(worker.call(ping("to a stopped proxy")).await)?;
    closed(recipient.call(ping("to a stopped proxy")).await)?;
    if !eventually(WAIT, || !running(pid)).await {
        return Err(format!("worker {pid} outlived its stopped proxy").into());
    }
    Ok(())
}

/// Checks that `outcome` is `Closed`.
fn closed<R: std::fmt::Debug>(outcome: Result<R, WorkerError>) -> Result<(), Failed> {
    match outcome {
        Err(WorkerError::Closed) => Ok(()),
        other => Err(format!("expected Closed, got {other:?}").into()),
    }
}
