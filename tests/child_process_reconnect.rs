//! Disconnect and Reconnect on a child-process worker: the worker keeps
//! running and keeps its actor's state while no connection is open;
//! requests fail at once meanwhile; a worker that dies while disconnected
//! is noticed and replaced; and many cycles, a `Close` or a dropped proxy
//! leave nothing behind.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use actix::Addr;
use isolated_workers::proxy::{Disconnect, Reconnect};
use isolated_workers::{CrashReason, Worker, WorkerError, WorkerState, WorkerStatus};
use libtest_mimic::Failed;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// Set (to anything) when this binary is started to run the
/// disconnect/reconnect cycles alone in its own process, where its file
/// descriptors and temporary directories are nobody else's.
const CYCLES_MODE_ENV: &str = "ISOLATED_WORKERS_TEST_RECONNECT_CYCLES_MODE";
/// Disconnect/Reconnect cycles measured (after one warm-up cycle).
const CYCLES: u64 = 100;
/// File descriptors a side may hold above its count after the warm-up
/// cycle: the runtimes open some lazily (a timer, a signal pipe, a
/// blocking-pool thread's), and a connection's descriptor closes a moment
/// after the next is up (the worker lets go of the old one when it reads
/// its end). A leak of one per cycle would be 100 over.
const FD_SLACK: usize = 2;
/// The socket a parked worker listens on for its host's return.
const ATTACH_SOCKET: &str = "attach.sock";

fn main() {
    enter_workers();
    if std::env::var_os(CYCLES_MODE_ENV).is_some() {
        cycles_mode();
    }
    run(vec![
        actix_test(
            "a_disconnected_worker_fails_sends_at_once_and_keeps_its_state_for_reconnect",
            a_disconnected_worker_fails_sends_at_once_and_keeps_its_state_for_reconnect,
        ),
        actix_test(
            "a_hundred_disconnect_reconnect_cycles_leave_no_fds_or_sockets_and_keep_the_count",
            a_hundred_disconnect_reconnect_cycles_leave_no_fds_or_sockets_and_keep_the_count,
        ),
        actix_test(
            "requests_in_flight_at_disconnect_resolve_disconnected_at_once",
            requests_in_flight_at_disconnect_resolve_disconnected_at_once,
        ),
        actix_test(
            "a_worker_killed_while_disconnected_shows_crashed_and_the_next_request_gets_a_fresh_one",
            a_worker_killed_while_disconnected_shows_crashed_and_the_next_request_gets_a_fresh_one,
        ),
        actix_test(
            "after_a_reconnect_a_request_sent_right_after_sigkill_goes_to_a_fresh_worker",
            after_a_reconnect_a_request_sent_right_after_sigkill_goes_to_a_fresh_worker,
        ),
        actix_test(
            "disconnect_and_reconnect_are_idempotent",
            disconnect_and_reconnect_are_idempotent,
        ),
        actix_test(
            "close_on_a_disconnected_worker_ends_it_and_removes_its_socket_directory",
            close_on_a_disconnected_worker_ends_it_and_removes_its_socket_directory,
        ),
        actix_test(
            "dropping_the_last_addr_of_a_disconnected_worker_kills_it",
            dropping_the_last_addr_of_a_disconnected_worker_kills_it,
        ),
    ]);
}

async fn a_disconnected_worker_fails_sends_at_once_and_keeps_its_state_for_reconnect(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    for expected in 1..=3u64 {
        let counted = ask(&worker, Increment { by: 1 }).await?;
        if counted != expected {
            return Err(format!("counter at {counted}, expected {expected}").into());
        }
    }
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let state = status(&worker).await?.state;
    if state != WorkerState::Disconnected {
        return Err(format!("state {state:?} after Disconnect").into());
    }
    match refused(&worker, Increment { by: 1 }).await? {
        WorkerError::Disconnected => {}
        other => return Err(format!("expected Disconnected, got {other}").into()),
    }
    if !process_exists(pid) {
        return Err("the worker process should keep running".into());
    }
    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    let counted = ask(&worker, Increment { by: 1 }).await?;
    if counted != 4 {
        return Err(format!("counter at {counted} after reconnect, expected 4").into());
    }
    if pid_of(&worker).await? != pid {
        return Err("reconnected to another process".into());
    }
    close(&worker).await
}

async fn a_hundred_disconnect_reconnect_cycles_leave_no_fds_or_sockets_and_keep_the_count(
) -> Result<(), Failed> {
    // Run alone in a process of its own: the file descriptors of tests
    // running alongside would blur the host's count. Its temporary
    // directory is private, so any directory left there is its worker's.
    let Alone { tmp, took } = run_alone(CYCLES_MODE_ENV).await?;
    let left = entries(tmp.path())?;
    assert!(
        left.is_empty(),
        "left in the cycles' temporary directory: {left:?}"
    );
    assert!(
        took < Duration::from_secs(40),
        "{CYCLES} cycles took {took:?}"
    );
    Ok(())
}

async fn requests_in_flight_at_disconnect_resolve_disconnected_at_once() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 1);
    let sleeping = enqueue(&worker, Sleep { ms: 10_000 });
    // The worker has read the Sleep once it answers what came after it.
    ask(&worker, ping("behind the sleep")).await?;
    assert_eq!(
        status(&worker).await?.in_flight,
        1,
        "the Sleep is in flight"
    );

    let started = Instant::now();
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let outcome = tokio::time::timeout(Duration::from_secs(5), sleeping)
        .await
        .map_err(|_| "the Sleep in flight was still unresolved 5 s after Disconnect")?;
    let took = started.elapsed();
    let err = expect_error(outcome.map_err(fail)?)?;
    assert!(
        matches!(err, WorkerError::Disconnected),
        "the Sleep in flight at Disconnect: {err:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the Sleep resolved {took:?} after Disconnect; it sleeps 10 s"
    );
    let after = status(&worker).await?;
    assert_eq!(after.state, WorkerState::Disconnected);
    assert_eq!(
        after.in_flight, 0,
        "nothing is in flight while disconnected"
    );

    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    assert_eq!(pid_of(&worker).await?, pid, "the same worker");
    // The dropped Sleep's reply never turns up on the new connection.
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 2);
    assert_eq!(status(&worker).await?.in_flight, 0);
    close(&worker).await
}

async fn a_worker_killed_while_disconnected_shows_crashed_and_the_next_request_gets_a_fresh_one(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    let dir = socket_dir(&worker).await?;
    assert_eq!(ask(&worker, Increment { by: 2 }).await?, 2);
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;

    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(fail)?;
    let seen = state_within(&worker, Duration::from_secs(5), |state| {
        matches!(state, WorkerState::Crashed { .. })
    })
    .await?;
    assert!(
        matches!(
            seen.state,
            WorkerState::Crashed {
                reason: CrashReason::Signal(9),
                ..
            }
        ),
        "the status after SIGKILL while disconnected: {seen:?}"
    );

    let reconnected = worker.send(Reconnect).await.map_err(fail)?;
    let err = expect_error(reconnected)?;
    assert!(
        matches!(
            err,
            WorkerError::Crashed {
                reason: CrashReason::Signal(9),
                ..
            }
        ),
        "Reconnect to a killed worker: {err:?}"
    );

    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        1,
        "a fresh worker starts counting from scratch"
    );
    let fresh = status(&worker).await?;
    assert_eq!(fresh.state, WorkerState::Running);
    let fresh_pid = fresh.pid.ok_or("the fresh worker has a pid")?;
    assert_ne!(fresh_pid, pid, "the fresh worker is another process");
    assert!(!process_exists(pid), "the killed worker {pid} was reaped");
    assert!(
        !dir.exists(),
        "the killed worker's socket directory {dir:?} is removed"
    );
    close(&worker).await
}

/// The read mark outlives the connection: the new connection's requests
/// are counted from its start, not after the first connection's.
async fn after_a_reconnect_a_request_sent_right_after_sigkill_goes_to_a_fresh_worker(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    assert_eq!(ask(&worker, Increment { by: 3 }).await?, 3);
    assert_eq!(ask(&worker, Increment { by: 3 }).await?, 6);
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    let pid = pid_of(&worker).await?;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(fail)?;
    // The dead worker never read it: not `Crashed`, despite `Reject`.
    let fresh = outcome(enqueue(&worker, WhoAmI)).await?.map_err(fail)?;
    assert_ne!(fresh, pid, "answered by the killed worker");
    close(&worker).await
}

async fn disconnect_and_reconnect_are_idempotent() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    worker
        .send(Reconnect)
        .await
        .map_err(fail)?
        .map_err(|e| format!("Reconnect on a connected worker: {e}"))?;
    assert_eq!(status(&worker).await?.state, WorkerState::Running);
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 1);

    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    worker
        .send(Disconnect)
        .await
        .map_err(fail)?
        .map_err(|e| format!("a second Disconnect: {e}"))?;
    assert_eq!(status(&worker).await?.state, WorkerState::Disconnected);
    assert!(running(pid), "the worker runs on while disconnected");

    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    worker
        .send(Reconnect)
        .await
        .map_err(fail)?
        .map_err(|e| format!("a second Reconnect: {e}"))?;
    assert_eq!(status(&worker).await?.state, WorkerState::Running);
    assert_eq!(pid_of(&worker).await?, pid, "the same worker");
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 2);
    close(&worker).await
}

async fn close_on_a_disconnected_worker_ends_it_and_removes_its_socket_directory(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    let dir = socket_dir(&worker).await?;
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    assert!(running(pid), "the worker runs on while disconnected");

    let started = Instant::now();
    close(&worker).await?;
    let took = started.elapsed();

    assert!(
        !process_exists(pid),
        "worker {pid} is gone, not even a zombie, once Close resolves"
    );
    assert!(!dir.exists(), "{dir:?} is removed once Close resolves");
    assert_eq!(status(&worker).await?.state, WorkerState::Closed);
    let err = refused(&worker, Increment { by: 1 }).await?;
    assert!(matches!(err, WorkerError::Closed), "after Close: {err:?}");
    assert!(took < Duration::from_secs(5), "Close took {took:?}");
    Ok(())
}

async fn dropping_the_last_addr_of_a_disconnected_worker_kills_it() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    let dir = socket_dir(&worker).await?;
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    assert!(running(pid), "the worker runs on while disconnected");

    drop(worker);
    let gone = eventually(Duration::from_secs(5), || {
        !process_exists(pid) && !dir.exists()
    })
    .await;
    if !gone {
        let still = if running(pid) {
            "runs"
        } else if process_exists(pid) {
            "is a zombie"
        } else {
            "is gone"
        };
        // Leave nothing behind even so.
        if process_exists(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "5 s after its last Addr was dropped, disconnected worker {pid} {still}; \
             its socket directory {}",
            if dir.exists() {
                "is still there"
            } else {
                "was removed"
            }
        )
        .into());
    }
    Ok(())
}

/// Asks for the worker's status until `wanted` holds of its state, for up
/// to `limit`: a proxy notices a parked worker's death by itself, with no
/// event a test could wait on.
async fn state_within(
    worker: &Addr<Worker<Calc>>,
    limit: Duration,
    wanted: impl Fn(&WorkerState) -> bool,
) -> Result<WorkerStatus, Failed> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = status(worker).await?;
        if wanted(&seen.state) {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(format!("after {limit:?} the status is still {seen:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The disconnect/reconnect cycles, alone in this process: exits 0 if
/// they left nothing behind, 1 (saying what) otherwise.
fn cycles_mode() -> ! {
    exit_after("the cycles", cycles)
}

async fn cycles() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    let dir = socket_dir(&worker).await?;
    let host_fds = "/proc/self/fd".to_owned();
    let worker_fds = format!("/proc/{pid}/fd");
    // Warm-up: the worker's attach listener (opened at the first
    // Disconnect, kept from then on) and what the runtimes open once are
    // open before counting.
    cycle(&worker, 1).await?;
    let host_before = fd_count(&host_fds)?;
    let worker_before = fd_count(&worker_fds)?;
    for count in 2..=CYCLES + 1 {
        cycle(&worker, count).await?;
    }
    // A dropped connection's descriptor closes a moment after the next is
    // up; nothing signals it.
    let settled = || {
        fd_count(&host_fds).is_ok_and(|n| n <= host_before + FD_SLACK)
            && fd_count(&worker_fds).is_ok_and(|n| n <= worker_before + FD_SLACK)
    };
    eventually(Duration::from_secs(2), settled).await;
    let host_after = fd_count(&host_fds)?;
    let worker_after = fd_count(&worker_fds)?;

    let mut left = Vec::new();
    if host_after > host_before + FD_SLACK {
        left.push(format!(
            "the host had {host_before} file descriptors open after the warm-up cycle, \
             {host_after} after {CYCLES} more: {:?}",
            fd_targets(&host_fds)
        ));
    }
    if worker_after > worker_before + FD_SLACK {
        left.push(format!(
            "worker {pid} had {worker_before} file descriptors open after the warm-up cycle, \
             {worker_after} after {CYCLES} more: {:?}",
            fd_targets(&worker_fds)
        ));
    }
    let sockets = entries(&dir)?;
    let expected: BTreeSet<String> = [ATTACH_SOCKET.to_owned()].into();
    if !sockets.is_subset(&expected) {
        left.push(format!(
            "the socket directory {dir:?} holds {sockets:?}, expected at most {expected:?}"
        ));
    }
    let status = status(&worker).await?;
    if status.pid != Some(pid) || status.restarts != 0 {
        left.push(format!(
            "the worker was replaced during the cycles: {status:?}"
        ));
    }
    close(&worker).await?;
    if dir.exists() {
        left.push(format!("{dir:?} is still there after Close"));
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("left behind: {}", left.join("; ")).into())
    }
}

/// Disconnects, reconnects and counts once, expecting the counter at
/// `expected` afterwards.
async fn cycle(worker: &Addr<Worker<Calc>>, expected: u64) -> Result<(), Failed> {
    worker
        .send(Disconnect)
        .await
        .map_err(fail)?
        .map_err(|e| format!("Disconnect in cycle {expected}: {e}"))?;
    worker
        .send(Reconnect)
        .await
        .map_err(fail)?
        .map_err(|e| format!("Reconnect in cycle {expected}: {e}"))?;
    let counted = ask(worker, Increment { by: 1 }).await?;
    if counted != expected {
        return Err(format!("counter at {counted} after cycle {expected}").into());
    }
    Ok(())
}

/// How many file descriptors the `/proc/<pid>/fd` directory `fds` lists.
fn fd_count(fds: &str) -> Result<usize, Failed> {
    Ok(std::fs::read_dir(fds).map_err(fail)?.count())
}

/// What each file descriptor in `fds` refers to, for a report.
fn fd_targets(fds: &str) -> Vec<String> {
    let Ok(listing) = std::fs::read_dir(fds) else {
        return Vec::new();
    };
    listing
        .flatten()
        .map(|entry| {
            let target = std::fs::read_link(entry.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{} -> {target}", entry.file_name().to_string_lossy())
        })
        .collect()
}

/// The names in directory `dir`.
fn entries(dir: &Path) -> Result<BTreeSet<String>, Failed> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        names.insert(
            entry
                .map_err(fail)?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(names)
}
