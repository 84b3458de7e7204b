//! Requests to a child-process worker, beyond what the conformance suite
//! checks for every driver: large payloads (and small requests passing
//! them), how a panic kills the process (reported before it is printed),
//! the pid in `Status`, requests queued in the proxy, and the resource
//! limits a worker starts with.

mod support;

/// A worker that says, for each request, how many of the other kind it
/// had handled before it.
mod lanes {
    use actix::prelude::*;
    use bytes::Bytes;
    use isolated_workers::WorkerError;
    use serde::{Deserialize, Serialize};

    /// The name this worker is started under.
    pub const WORKER: &str = "lanes";

    /// A large request: answers how many `Small`s were handled before it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Big(pub Bytes);

    /// A small request: answers how many `Big`s were handled before it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Small;

    isolated_workers::contract! {
        /// Large and small requests.
        pub Lanes {
            Big => u32,
            Small => u32,
        }
    }

    /// Counts what it handled.
    #[derive(Debug, Default)]
    pub struct LaneWorker {
        bigs: u32,
        smalls: u32,
    }

    impl Actor for LaneWorker {
        type Context = Context<Self>;
    }

    impl Handler<Big> for LaneWorker {
        type Result = Result<u32, WorkerError>;
        fn handle(&mut self, _: Big, _: &mut Context<Self>) -> Self::Result {
            self.bigs += 1;
            Ok(self.smalls)
        }
    }

    impl Handler<Small> for LaneWorker {
        type Result = Result<u32, WorkerError>;
        fn handle(&mut self, _: Small, _: &mut Context<Self>) -> Self::Result {
            self.smalls += 1;
            Ok(self.bigs)
        }
    }
}

use std::time::{Duration, Instant};

use futures::future::join_all;
use isolated_workers::{CrashReason, WorkerError, WorkerOptions, WorkerState};
use libtest_mimic::Failed;
use support::*;

fn main() {
    enter_workers();
    isolated_workers::worker_entry::<lanes::Lanes, _>(lanes::WORKER, lanes::LaneWorker::default);
    run(vec![
        actix_test(
            "a_small_request_sent_after_two_large_ones_is_handled_before_they_are_whole",
            a_small_request_sent_after_two_large_ones_is_handled_before_they_are_whole,
        ),
        actix_test(
            "a_one_mebibyte_echo_round_trips_byte_exactly",
            a_one_mebibyte_echo_round_trips_byte_exactly,
        ),
        actix_test(
            "a_panicking_handler_crashes_every_request_with_the_panic_text",
            a_panicking_handler_crashes_every_request_with_the_panic_text,
        ),
        actix_test(
            "a_panic_is_reported_before_the_worker_prints_it_and_its_backtrace",
            a_panic_is_reported_before_the_worker_prints_it_and_its_backtrace,
        ),
        actix_test(
            "a_panic_the_handler_catches_is_not_reported_and_the_worker_serves_on",
            a_panic_the_handler_catches_is_not_reported_and_the_worker_serves_on,
        ),
        actix_test(
            "status_reports_the_workers_pid_state_and_requests_in_flight",
            status_reports_the_workers_pid_state_and_requests_in_flight,
        ),
        actix_test(
            "status_counts_requests_by_message_crashes_restarts_and_bytes",
            status_counts_requests_by_message_crashes_restarts_and_bytes,
        ),
        actix_test(
            "requests_beyond_max_in_flight_wait_in_the_proxy_and_all_complete",
            requests_beyond_max_in_flight_wait_in_the_proxy_and_all_complete,
        ),
        actix_test(
            "limits_given_to_the_driver_hold_in_the_worker_process",
            limits_given_to_the_driver_hold_in_the_worker_process,
        ),
    ]);
}

async fn limits_given_to_the_driver_hold_in_the_worker_process() -> Result<(), Failed> {
    use isolated_workers::driver::child_process::Resource;
    let driver = calc()
        .limit(Resource::RLIMIT_NOFILE, 100, 200)
        .limit(Resource::RLIMIT_CORE, 0, 0);
    let worker = isolated_workers::Worker::<Calc>::spawn(driver)
        .await
        .map_err(fail)?;
    assert_eq!(ask(&worker, Increment { by: 2 }).await?, 2, "it serves");
    let pid = pid_of(&worker).await?;
    // As the kernel reports them: `Max open files  100  200  files`.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(fail)?;
    let values = |name: &str| -> Option<Vec<String>> {
        let line = limits.lines().find(|line| line.starts_with(name))?;
        let rest = line[name.len()..].split_whitespace();
        Some(rest.take(2).map(str::to_owned).collect())
    };
    assert_eq!(
        values("Max open files"),
        Some(vec!["100".into(), "200".into()]),
        "{limits}"
    );
    assert_eq!(
        values("Max core file size"),
        Some(vec!["0".into(), "0".into()]),
        "{limits}"
    );
    close(&worker).await
}

async fn a_panic_the_handler_catches_is_not_reported_and_the_worker_serves_on() -> Result<(), Failed>
{
    // With backtraces on, a worker's hook defers printing them: a caught
    // panic must still be nothing more than printed.
    let dir = tempfile::tempdir().map_err(fail)?;
    let stderr = dir.path().join("stderr");
    let driver = calc()
        .env("RUST_BACKTRACE", "1")
        .env(KEEP_BACKTRACE_ENV, "1")
        .env(STDERR_FILE_ENV, &stderr);
    let worker = isolated_workers::Worker::<Calc>::spawn(driver)
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;
    let caught = ask(
        &worker,
        CatchPanic {
            message: "recovered 7".into(),
        },
    )
    .await?;
    assert_eq!(caught, "recovered 7");
    assert_eq!(
        ask(&worker, ping("still here")).await?.text,
        "pong: still here"
    );
    let status = status(&worker).await?;
    assert_eq!(status.state, WorkerState::Running);
    assert_eq!(status.pid, Some(pid), "the same process serves on");
    close(&worker).await?;
    // Printed by the time the worker exited (it waits for its printer).
    let printed = std::fs::read_to_string(&stderr).map_err(fail)?;
    assert!(
        printed.contains("recovered 7") && printed.contains("stack backtrace"),
        "the worker printed the caught panic and its backtrace: {printed:?}"
    );
    Ok(())
}

async fn a_one_mebibyte_echo_round_trips_byte_exactly() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    // Every byte value, in a pattern that does not repeat every 256 bytes.
    let data: Vec<u8> = (0u32..1 << 20).map(|i| (i ^ (i >> 8)) as u8).collect();
    let echoed = ask(&worker, Echo { data: data.clone() }).await?;
    assert_eq!(echoed.len(), data.len());
    let first_difference = echoed.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the echo differs");
    close(&worker).await
}

async fn a_panicking_handler_crashes_every_request_with_the_panic_text() -> Result<(), Failed> {
    const PANIC_TEXT: &str = "kaboom 42";
    let crashed = |e: &WorkerError| {
        matches!(e, WorkerError::Crashed { reason: CrashReason::Panic, message: Some(m), .. }
            if m.contains(PANIC_TEXT))
    };
    let worker = spawn_calc().await?;
    let sleeping = enqueue(&worker, Sleep { ms: 10_000 });
    let explode = Explode {
        message: PANIC_TEXT.into(),
    };
    let err = refused(&worker, explode).await?;
    assert!(crashed(&err), "the panicking request: {err:?}");
    let in_flight = expect_error(outcome(sleeping).await?)?;
    assert!(crashed(&in_flight), "the request in flight: {in_flight:?}");
    assert!(
        matches!(
            status(&worker).await?.state,
            WorkerState::Crashed {
                reason: CrashReason::Panic,
                ..
            }
        ),
        "the status shows the crash"
    );
    let pong = ask(&worker, ping("hello?")).await?;
    assert_eq!(
        pong.text, "pong: hello?",
        "a fresh worker serves later requests"
    );
    close(&worker).await
}

/// A panic reaches the host before anything slow runs in the worker: with
/// `RUST_BACKTRACE=full`, printing the panic resolves its backtrace's
/// symbols, 100 ms and more. Rather than time that (a bound loose enough
/// for a slow machine would hide it), the worker's stderr is a full FIFO
/// that nobody reads yet, so that printing anything blocks until this test
/// reads it: the crash must be reported all the same. Then the panic and
/// its backtrace are printed after all, and the worker exits by itself.
async fn a_panic_is_reported_before_the_worker_prints_it_and_its_backtrace() -> Result<(), Failed> {
    use tokio::io::AsyncReadExt;
    const PANIC_TEXT: &str = "kaboom, unprinted";
    /// Only for a test that fails: the report arrives in milliseconds.
    const REPORT_LIMIT: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().map_err(fail)?;
    let fifo = dir.path().join("stderr");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RWXU).map_err(fail)?;
    // Open before the worker, which opens the other end as it starts.
    let mut stderr = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .map_err(fail)?;
    let driver = calc()
        .env("RUST_BACKTRACE", "full")
        .env(KEEP_BACKTRACE_ENV, "1")
        .env(BLOCKED_STDERR_ENV, &fifo);
    // Time enough to print, however slow the machine.
    let options = WorkerOptions::default().close_grace(Duration::from_secs(30));
    let worker = isolated_workers::Worker::<Calc>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let pid = ask(&worker, WhoAmI).await?;
    let explode = Explode {
        message: PANIC_TEXT.into(),
    };
    let crashed = tokio::time::timeout(REPORT_LIMIT, refused(&worker, explode))
        .await
        .map_err(|_| "no crash report while the worker cannot print")??;
    match &crashed {
        WorkerError::Crashed {
            reason: CrashReason::Panic,
            message: Some(message),
            ..
        } if message.contains(PANIC_TEXT) && message.contains("support/mod.rs") => {}
        other => return Err(format!("expected the panic with its location, got {other:?}").into()),
    }
    assert!(running(pid), "the worker is still there, printing");
    // Read to the end: the worker exits once it has printed.
    let mut printed = Vec::new();
    stderr.read_to_end(&mut printed).await.map_err(fail)?;
    let printed = String::from_utf8_lossy(&printed);
    let printed = printed.trim_start_matches('.');
    assert!(
        printed.contains("panicked at tests/support/mod.rs")
            && printed.contains(PANIC_TEXT)
            && printed.contains("stack backtrace:"),
        "the panic and its backtrace are printed: {printed}"
    );
    assert!(
        eventually(Duration::from_secs(10), || !running(pid)).await,
        "the worker exits by itself"
    );
    close(&worker).await
}

async fn status_reports_the_workers_pid_state_and_requests_in_flight() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let idle = status(&worker).await?;
    assert_eq!(idle.pid, Some(ask(&worker, WhoAmI).await?));
    assert_eq!(idle.state, WorkerState::Running);
    assert_eq!((idle.in_flight, idle.queued), (0, 0));

    let sleeps: Vec<_> = (0..3)
        .map(|_| enqueue(&worker, Sleep { ms: 100 }))
        .collect();
    let busy = status(&worker).await?;
    assert_eq!((busy.in_flight, busy.queued), (3, 0));
    assert_eq!(busy.state, WorkerState::Running);

    for sleep in sleeps {
        outcome(sleep).await?.map_err(fail)?;
    }
    let done = status(&worker).await?;
    assert_eq!((done.in_flight, done.queued), (0, 0));
    close(&worker).await
}

async fn status_counts_requests_by_message_crashes_restarts_and_bytes() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    for _ in 0..3 {
        ask(&worker, Increment { by: 1 }).await?;
    }
    refused(&worker, Divide { a: 1.0, b: 0.0 }).await?;
    let before_crash = status(&worker).await?;
    let counts = |status: &isolated_workers::WorkerStatus, name: &str| {
        let c = status
            .counters
            .by_message
            .get(name)
            .copied()
            .unwrap_or_default();
        (c.sent, c.answered, c.failed)
    };
    assert_eq!(counts(&before_crash, "Increment"), (3, 3, 0));
    assert_eq!(counts(&before_crash, "Divide"), (1, 0, 1));
    assert!(before_crash.counters.bytes_out > 0 && before_crash.counters.bytes_in > 0);
    assert_eq!(
        (
            before_crash.counters.crashes,
            before_crash.counters.restarts
        ),
        (0, 0)
    );
    assert!(before_crash.uptime > Duration::ZERO);

    let crash = Instant::now();
    refused(
        &worker,
        Explode {
            message: "boom".into(),
        },
    )
    .await?;
    ask(&worker, Increment { by: 1 }).await?; // on a fresh worker
    let after = status(&worker).await?;
    assert_eq!(counts(&after, "Explode"), (1, 0, 1));
    assert_eq!(counts(&after, "Increment"), (4, 4, 0));
    assert_eq!((after.counters.crashes, after.counters.restarts), (1, 1));
    assert!(
        after.uptime <= crash.elapsed(),
        "uptime {:?} should count from the restart, {:?} ago at most",
        after.uptime,
        crash.elapsed()
    );
    close(&worker).await
}

async fn requests_beyond_max_in_flight_wait_in_the_proxy_and_all_complete() -> Result<(), Failed> {
    const NAP_MS: u64 = 100;
    let worker = spawn_calc_with(WorkerOptions::default().max_in_flight(2)).await?;
    let started = Instant::now();
    let sleeps: Vec<_> = (0..5)
        .map(|_| enqueue(&worker, Sleep { ms: NAP_MS }))
        .collect();
    let busy = status(&worker).await?;
    assert_eq!((busy.in_flight, busy.queued), (2, 3));

    for sleep in join_all(sleeps).await {
        sleep.map_err(fail)?.map_err(fail)?;
    }
    // Two at a time, five naps take at least three rounds.
    let took = started.elapsed();
    assert!(
        took >= 3 * Duration::from_millis(NAP_MS),
        "five {NAP_MS} ms naps took only {took:?}: more than two ran at once"
    );
    let done = status(&worker).await?;
    assert_eq!((done.in_flight, done.queued), (0, 0));
    close(&worker).await
}

/// A large request's frame does not hold the connection for its whole
/// length: one sent after two 4 MiB requests reaches the worker (which
/// handles requests in the order they are whole) before either of them.
async fn a_small_request_sent_after_two_large_ones_is_handled_before_they_are_whole(
) -> Result<(), Failed> {
    use lanes::{Big, Lanes, Small};
    let worker = isolated_workers::Worker::<Lanes>::spawn(
        isolated_workers::ChildProcess::current_exe(lanes::WORKER),
    )
    .await
    .map_err(fail)?;
    let large = bytes::Bytes::from(vec![7u8; 4 << 20]);
    let first = worker.send(Big(large.clone()));
    let second = worker.send(Big(large));
    let small = worker.send(Small);
    let (first, second, small) = futures::join!(first, second, small);
    let bigs_before_small = small?.map_err(fail)?;
    assert_eq!(
        bigs_before_small, 0,
        "the small request waited for a large one"
    );
    assert_eq!(first?.map_err(fail)?, 1, "the small one was handled before");
    assert_eq!(second?.map_err(fail)?, 1);
    worker.send(isolated_workers::Close).await.map_err(fail)
}
