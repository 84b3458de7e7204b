//! Status you can serve: `WorkerStatus` and `PoolReport` serialized as a
//! status endpoint would (JSON), a pool's crash and restart totals over
//! members killed with SIGKILL, replaced or not, and a pool answering
//! `Status` as one worker does (through the same `Recipient<Status>`).

mod support;

use std::time::{Duration, Instant};

use actix::prelude::*;
use isolated_workers::{
    Close, Driver, PoolOptions, PoolReport, PoolStatus, Status, Thread, Worker, WorkerOptions,
    WorkerPool, WorkerState, WorkerStatus,
};
use libtest_mimic::Failed;
use rustix::process::Signal;
use serde_json::json;
use support::*;

/// How long a condition on a status may take to come true.
const WAIT: Duration = Duration::from_secs(20);

fn main() {
    enter_workers();
    run(vec![
        actix_test(
            "child_process::a_pool_totals_the_crashes_and_restarts_of_every_member_it_had",
            a_pool_totals_the_crashes_and_restarts_of_every_member_it_had,
        ),
        actix_test(
            "child_process::a_crashed_worker_status_serializes_its_reason",
            a_crashed_worker_status_serializes_its_reason,
        ),
        actix_test("child_process::a_pool_answers_status_as_one_worker", || {
            a_pool_answers_status_as_one_worker(calc())
        }),
        actix_test("thread::a_pool_answers_status_as_one_worker", || {
            a_pool_answers_status_as_one_worker(Thread::new(CalcWorker::default))
        }),
    ]);
}

/// `what` answered to `Status` by anything that answers it, once
/// `condition` holds of it, polled: a status has no event for "changed".
async fn status_when(
    of: &Recipient<Status>,
    what: &str,
    condition: impl Fn(&WorkerStatus) -> bool,
) -> Result<WorkerStatus, Failed> {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = of.send(Status).await.map_err(fail)?;
        if condition(&status) {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {WAIT:?}; the status: {status:#?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pool's report once `condition` holds of it, polled.
async fn report_when<D: Driver<Calc> + Clone>(
    pool: &Addr<WorkerPool<Calc, D>>,
    what: &str,
    condition: impl Fn(&PoolReport) -> bool,
) -> Result<PoolReport, Failed> {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = pool.send(PoolStatus).await.map_err(fail)?;
        if condition(&report) {
            return Ok(report);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {WAIT:?}; the pool: {report:#?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pid of member `id` in `report`, if it is a member with a worker.
fn pid_of_member(report: &PoolReport, id: u64) -> Option<u32> {
    let member = report.members.iter().find(|member| member.id == id)?;
    member.status.pid
}

/// SIGKILLs member `id`'s worker; answers its pid.
fn kill_member(report: &PoolReport, id: u64) -> Result<u32, Failed> {
    let pid = pid_of_member(report, id).ok_or(format!("member {id} has a pid: {report:#?}"))?;
    kill(pid, Signal::KILL).map_err(fail)?;
    Ok(pid)
}

/// Whether member `id` serves with a worker other than `old`.
fn serves_anew(report: &PoolReport, id: u64, old: u32) -> bool {
    report.members.iter().any(|member| {
        member.id == id
            && member.status.state == WorkerState::Running
            && member.status.pid.is_some_and(|pid| pid != old)
    })
}

async fn a_pool_totals_the_crashes_and_restarts_of_every_member_it_had() -> Result<(), Failed> {
    // One restart each: a member's second crash makes it give up, and the
    // pool replaces it with a fresh member.
    let member = WorkerOptions::default().restart_budget(1, Duration::from_secs(600));
    let options = PoolOptions::default().members(2).member_options(member);
    let pool = WorkerPool::<Calc, _>::spawn_with(calc(), options)
        .await
        .map_err(fail)?;
    let first = pool.send(PoolStatus).await.map_err(fail)?;
    let (a, b) = (first.members[0].id, first.members[1].id);

    let killed = kill_member(&first, a)?;
    let restarted = report_when(&pool, "member a restarted its worker", |r| {
        serves_anew(r, a, killed)
    })
    .await?;
    kill_member(&restarted, a)?;
    report_when(&pool, "member a gave up and was replaced", |r| {
        r.counters.replaced == 1 && r.members.len() == 2 && !r.members.iter().any(|m| m.id == a)
    })
    .await?;
    let killed = kill_member(&first, b)?;
    report_when(&pool, "member b restarted its worker", |r| {
        serves_anew(r, b, killed)
    })
    .await?;
    for text in ["one", "two"] {
        assert_eq!(ask(&pool, ping(text)).await?.text, format!("pong: {text}"));
    }

    let report = pool.send(PoolStatus).await.map_err(fail)?;
    assert_eq!(
        (report.counters.crashes, report.counters.restarts),
        (3, 2),
        "three kills, two restarts (the third crash was a's giving up): {report:#?}"
    );
    let members_crashes: u64 = (report.members.iter())
        .map(|member| member.status.counters.crashes)
        .sum();
    assert_eq!(
        members_crashes, 1,
        "a's two crashes left with a: {report:#?}"
    );

    let served = serde_json::to_value(&report).map_err(fail)?;
    assert_eq!(served["state"], "open");
    assert_eq!(served["queued"], 0);
    let counters = &served["counters"];
    assert_eq!(
        [
            &counters["crashes"],
            &counters["restarts"],
            &counters["replaced"],
            &counters["answered"],
            &counters["started"],
        ],
        [&json!(3), &json!(2), &json!(1), &json!(2), &json!(3)],
        "{served:#}"
    );
    let members = served["members"].as_array().ok_or("members: an array")?;
    assert_eq!(members.len(), 2, "{served:#}");
    let pids = report.pids();
    let mut pings_answered = 0;
    for (member, pid) in members.iter().zip(pids) {
        assert!(member["id"].is_u64(), "{member:#}");
        assert_eq!(member["in_flight"], 0);
        assert!(member["idle_for_secs"].is_f64(), "idle: {member:#}");
        let status = &member["status"];
        assert_eq!(status["pid"], pid);
        assert_eq!(status["state"], json!({ "kind": "running" }));
        assert_eq!(status["detached"], false);
        assert!(status["uptime_secs"].as_f64().is_some_and(|s| s >= 0.0));
        let ping = &status["counters"]["by_message"]["Ping"];
        pings_answered += ping["answered"].as_u64().unwrap_or(0);
    }
    assert_eq!(pings_answered, 2, "{served:#}");
    pool.send(Close).await?;
    Ok(())
}

async fn a_crashed_worker_status_serializes_its_reason() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    ask(&worker, ping("before")).await?;
    let pid = pid_of(&worker).await?;
    kill(pid, Signal::KILL).map_err(fail)?;
    let crashed = status_when(&worker.clone().recipient(), "the crash noticed", |s| {
        matches!(s.state, WorkerState::Crashed { .. })
    })
    .await?;
    let served = serde_json::to_value(&crashed).map_err(fail)?;
    assert_eq!(
        served["state"],
        json!({
            "kind": "crashed",
            "reason": { "kind": "signal", "code": 9, "text": "killed by SIGKILL" },
            "message": null,
        }),
        "{served:#}"
    );
    assert_eq!(served["id"], json!(crashed.id), "the id is a number");
    assert_eq!(served["counters"]["crashes"], 1);
    let ping = &served["counters"]["by_message"]["Ping"];
    assert_eq!(*ping, json!({ "sent": 1, "answered": 1, "failed": 0 }));
    assert!(served["counters"]["bytes_out"].as_u64() > Some(0));
    assert!(served["uptime_secs"].is_f64(), "{served:#}");
    worker.send(Close).await?;
    Ok(())
}

/// What the health check of an app would do with any `Recipient<Status>`:
/// code written for one worker, given a pool.
async fn state_of(of: &Recipient<Status>) -> Result<WorkerState, Failed> {
    Ok(of.send(Status).await.map_err(fail)?.state)
}

async fn a_pool_answers_status_as_one_worker<D: Driver<Calc> + Clone>(
    driver: D,
) -> Result<(), Failed> {
    let lone = Worker::<Calc, D>::spawn(driver.clone())
        .await
        .map_err(fail)?;
    let options = PoolOptions::default().members(2);
    let pool = WorkerPool::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let recipients = [lone.clone().recipient(), pool.clone().recipient()];
    for of in &recipients {
        assert_eq!(state_of(of).await?, WorkerState::Running);
    }
    for text in ["a", "b", "c"] {
        ask(&pool, ping(text)).await?;
    }
    refused(&pool, Divide { a: 1.0, b: 0.0 }).await?;

    let status = pool.send(Status).await.map_err(fail)?;
    assert_eq!(status.state, WorkerState::Running);
    assert_eq!((status.pid, status.detached), (None, false));
    assert_eq!((status.in_flight, status.queued), (0, 0));
    assert_eq!((status.restarts, status.counters.crashes), (0, 0));
    let counts = |name: &str| {
        let counts = status.counters.by_message.get(name).copied();
        counts.map(|c| (c.sent, c.answered, c.failed))
    };
    assert_eq!(counts("Ping"), Some((3, 3, 0)), "{status:#?}");
    assert_eq!(counts("Divide"), Some((1, 0, 1)), "{status:#?}");
    assert_ne!(
        status.id,
        lone.send(Status).await?.id,
        "a pool has its own id"
    );

    pool.send(Close).await?;
    lone.send(Close).await?;
    for of in &recipients {
        assert_eq!(state_of(of).await?, WorkerState::Closed);
    }
    Ok(())
}
