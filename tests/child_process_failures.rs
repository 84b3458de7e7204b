//! A child-process worker that dies, is closed or dropped, or never starts:
//! every request resolves, the child is reaped, and nothing of it is left
//! on disk (its attach directory, if it made one, goes).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::Addr;
use futures::future::join_all;
use isolated_workers::proxy::{Disconnect, Reconnect};
use isolated_workers::{
    ChildProcess, CrashReason, HandshakeError, SpawnError, Worker, WorkerError, WorkerOptions,
    WorkerState,
};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::*;

fn main() {
    enter_workers();
    run(vec![
        actix_test(
            "kill_9_with_100_in_flight_resolves_all_as_crashed_within_a_second",
            kill_9_with_100_in_flight_resolves_all_as_crashed_within_a_second,
        ),
        actix_test(
            "close_fails_waiting_requests_and_later_sends_as_closed_and_may_be_repeated",
            close_fails_waiting_requests_and_later_sends_as_closed_and_may_be_repeated,
        ),
        actix_test(
            "close_lets_the_worker_exit_on_its_own_before_the_grace_period",
            close_lets_the_worker_exit_on_its_own_before_the_grace_period,
        ),
        actix_test(
            "once_close_resolves_the_child_is_reaped_and_its_attach_directory_removed",
            once_close_resolves_the_child_is_reaped_and_its_attach_directory_removed,
        ),
        actix_test(
            "dropping_the_last_address_kills_the_child_and_removes_its_attach_directory",
            dropping_the_last_address_kills_the_child_and_removes_its_attach_directory,
        ),
        actix_test(
            "a_worker_exiting_during_startup_reports_its_exit_code_and_stderr",
            a_worker_exiting_during_startup_reports_its_exit_code_and_stderr,
        ),
        actix_test(
            "a_worker_that_never_says_hello_times_out_and_is_killed",
            a_worker_that_never_says_hello_times_out_and_is_killed,
        ),
        actix_test(
            "a_program_that_does_not_exist_fails_to_launch",
            a_program_that_does_not_exist_fails_to_launch,
        ),
        actix_test(
            "a_worker_serving_another_contract_fails_the_handshake_naming_both",
            a_worker_serving_another_contract_fails_the_handshake_naming_both,
        ),
    ]);
}

async fn kill_9_with_100_in_flight_resolves_all_as_crashed_within_a_second() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    let sleeps: Vec<_> = (0..100)
        .map(|_| enqueue(&worker, Sleep { ms: 60_000 }))
        .collect();
    // Answered after the worker read every Sleep before it: all started,
    // so none can go to a fresh worker instead.
    assert_eq!(
        ask(&worker, ping("read them?")).await?.text,
        "pong: read them?"
    );
    assert_eq!(status(&worker).await?.in_flight, 100);

    kill(pid, Signal::KILL).map_err(fail)?;
    let killed = Instant::now();
    let outcomes = join_all(sleeps).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "resolved {took:?} after the kill"
    );

    let killed_by_9 = |e: &WorkerError| {
        matches!(
            e,
            WorkerError::Crashed {
                reason: CrashReason::Signal(9),
                ..
            }
        )
    };
    for outcome in outcomes {
        let err = expect_error(outcome.map_err(fail)?)?;
        assert!(killed_by_9(&err), "{err:?}");
    }
    assert!(
        matches!(
            status(&worker).await?.state,
            WorkerState::Crashed {
                reason: CrashReason::Signal(9),
                ..
            }
        ),
        "the status shows the crash"
    );
    assert!(!process_exists(pid), "the killed child was reaped");
    let later = ask(&worker, WhoAmI).await?;
    assert_ne!(later, pid, "a later request is served by a fresh worker");
    close(&worker).await
}

async fn close_fails_waiting_requests_and_later_sends_as_closed_and_may_be_repeated(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let waiting = enqueue(&worker, Sleep { ms: 60_000 });
    close(&worker).await?;
    let err = expect_error(outcome(waiting).await?)?;
    assert!(
        matches!(err, WorkerError::Closed),
        "the waiting request: {err:?}"
    );
    let err = refused(&worker, ping("hello?")).await?;
    assert!(
        matches!(err, WorkerError::Closed),
        "a later request: {err:?}"
    );

    close(&worker).await?;
    assert_eq!(status(&worker).await?.state, WorkerState::Closed);
    let err = refused(&worker, ping("still?")).await?;
    assert!(
        matches!(err, WorkerError::Closed),
        "after closing twice: {err:?}"
    );
    Ok(())
}

async fn close_lets_the_worker_exit_on_its_own_before_the_grace_period() -> Result<(), Failed> {
    let grace = Duration::from_secs(20);
    let worker = spawn_calc_with(WorkerOptions::default().close_grace(grace)).await?;
    let _busy = enqueue(&worker, Sleep { ms: 60_000 });
    ask(&worker, ping("ready")).await?;
    let started = Instant::now();
    close(&worker).await?;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "close took {took:?}: the worker did not exit when asked, so it was killed after the grace period"
    );
    Ok(())
}

/// A Calc worker whose temporary directory is `tmp` (see [`calc_in`]),
/// with nothing on disk at spawn, that was disconnected and reconnected
/// once: it serves, and keeps its attach directory from then on. Returns
/// it, its pid and that directory.
async fn spawn_with_attach_directory(
    tmp: &Path,
) -> Result<(Addr<Worker<Calc>>, u32, PathBuf), Failed> {
    let worker = Worker::<Calc>::spawn(calc_in(tmp)).await.map_err(fail)?;
    let pid = pid_of(&worker).await?;
    assert!(
        attach_dirs_in(tmp, pid).is_empty(),
        "nothing on disk at spawn"
    );
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    let dir = socket_dir_in(tmp, &worker).await?;
    assert_eq!(ask(&worker, WhoAmI).await?, pid, "the same worker serves");
    Ok((worker, pid, dir))
}

async fn once_close_resolves_the_child_is_reaped_and_its_attach_directory_removed(
) -> Result<(), Failed> {
    let tmp = tempfile::tempdir().map_err(fail)?;
    let (worker, pid, dir) = spawn_with_attach_directory(tmp.path()).await?;
    assert!(process_exists(pid));
    close(&worker).await?;
    assert!(
        !process_exists(pid),
        "child {pid} is gone, not even a zombie"
    );
    assert!(!dir.exists(), "{dir:?} was removed");
    Ok(())
}

async fn dropping_the_last_address_kills_the_child_and_removes_its_attach_directory(
) -> Result<(), Failed> {
    let tmp = tempfile::tempdir().map_err(fail)?;
    let (worker, pid, dir) = spawn_with_attach_directory(tmp.path()).await?;
    drop(worker);
    let cleaned_up = eventually(Duration::from_secs(5), || {
        !process_exists(pid) && !dir.exists()
    })
    .await;
    assert!(
        cleaned_up,
        "5 s after the last address was dropped: child {pid} exists: {}, {dir:?} exists: {}",
        process_exists(pid),
        dir.exists()
    );
    Ok(())
}

async fn a_worker_exiting_during_startup_reports_its_exit_code_and_stderr() -> Result<(), Failed> {
    let script = "echo pid=$$ >&2; echo boom >&2; exit 3";
    let err = spawn_error::<Calc>(shell(script), WorkerOptions::default()).await?;
    let SpawnError::Exited { reason, stderr } = &err else {
        return Err(format!("expected Exited, got {err:?}").into());
    };
    assert_eq!(*reason, CrashReason::Exit(3));
    assert!(stderr.contains("boom"), "stderr: {stderr:?}");
    let pid: u32 = reported(stderr, "pid=")?.parse().map_err(fail)?;
    assert_nothing_on_disk(pid, "after a failed start")
}

async fn a_worker_that_never_says_hello_times_out_and_is_killed() -> Result<(), Failed> {
    let startup = Duration::from_millis(500);
    // `sleep` inherits the connection and holds it open, saying nothing.
    let script = "echo pid=$$ >&2; exec /bin/sleep 30";
    let options = WorkerOptions::default().startup_timeout(startup);
    let started = Instant::now();
    let err = spawn_error::<Calc>(shell(script), options).await?;
    let took = started.elapsed();
    let SpawnError::Timeout { after, stderr } = &err else {
        return Err(format!("expected Timeout, got {err:?}").into());
    };
    assert_eq!(*after, startup);
    assert!(
        took >= startup && took < Duration::from_secs(5),
        "gave up after {took:?}"
    );
    let pid: u32 = reported(stderr, "pid=")?.parse().map_err(fail)?;
    assert!(
        !process_exists(pid),
        "the sleeping child {pid} was killed and reaped"
    );
    assert_nothing_on_disk(pid, "after a failed start")
}

async fn a_program_that_does_not_exist_fails_to_launch() -> Result<(), Failed> {
    let program = "/nonexistent/isolated-worker";
    let err = spawn_error::<Calc>(
        ChildProcess::program(program, "calc"),
        WorkerOptions::default(),
    )
    .await?;
    let SpawnError::Launch {
        program: named,
        source,
    } = &err
    else {
        return Err(format!("expected Launch, got {err:?}").into());
    };
    assert_eq!(named, program);
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    Ok(())
}

async fn a_worker_serving_another_contract_fails_the_handshake_naming_both() -> Result<(), Failed> {
    let driver = ChildProcess::current_exe("other");
    let err = spawn_error::<Calc>(driver, WorkerOptions::default()).await?;
    let SpawnError::Handshake(HandshakeError::Contract { worker, host, .. }) = &err else {
        return Err(format!("expected a contract mismatch, got {err:?}").into());
    };
    assert_eq!((worker.as_str(), host.as_str()), ("Other", "Calc"));
    let why = err.to_string();
    assert!(
        why.starts_with("handshake failed: the worker serves contract `Other` v")
            && why.contains(", the host expects `Calc` v"),
        "names both contracts: {why}"
    );
    Ok(())
}

/// `/bin/sh -c script`, started as worker `calc`.
fn shell(script: &str) -> ChildProcess {
    ChildProcess::program("/bin/sh", "calc")
        .arg("-c")
        .arg(script)
}

/// The value a script reported on a `key…` line of its stderr.
fn reported<'a>(stderr: &'a str, key: &str) -> Result<&'a str, Failed> {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .ok_or_else(|| format!("no `{key}` line in stderr: {stderr:?}").into())
}
