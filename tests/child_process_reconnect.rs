//! Disconnect and Reconnect on a child-process worker: the worker keeps
//! running and keeps its actor's state while no connection is open;
//! requests fail at once meanwhile; a worker that dies while disconnected
//! is noticed and replaced; and many cycles, a `Close` or a dropped proxy
//! leave nothing behind. The attach socket a disconnected worker waits on
//! lets only its host back in: not another user, not a wrong token, not a
//! peer that says anything else.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use actix::Addr;
use isolated_workers::proxy::{Disconnect, Reconnect};
use isolated_workers::testing::PROTOCOL;
use isolated_workers::{
    AttachError, ConnectionError, Contract, CrashReason, DetachedWorker, Worker, WorkerError,
    WorkerState, WorkerStatus,
};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::rogue::{calc_hello, GARBAGE_FRAME};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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

/// How the forked `nobody` process fared (its exit code): refused by the
/// directory's permissions, hung up on without a word, answered, left
/// waiting, or failed for another reason.
const REFUSED: i32 = 0;
const HUNG_UP: i32 = 1;
const ANSWERED: i32 = 2;
const KEPT_WAITING: i32 = 3;
const OTHER_ERROR: i32 = 4;
/// How long the `nobody` process waits for an answer.
const NOBODY_PATIENCE: Duration = Duration::from_secs(5);

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
            "close_on_a_disconnected_worker_ends_it_and_removes_its_attach_directory",
            close_on_a_disconnected_worker_ends_it_and_removes_its_attach_directory,
        ),
        actix_test(
            "dropping_the_last_addr_of_a_disconnected_worker_kills_it",
            dropping_the_last_addr_of_a_disconnected_worker_kills_it,
        ),
        actix_test(
            "impostors_on_the_attach_socket_are_dropped_and_the_host_reconnects",
            impostors_on_the_attach_socket_are_dropped_and_the_host_reconnects,
        ),
        actix_test(
            "another_user_cannot_reach_the_attach_socket_nor_is_served_when_let_through",
            another_user_cannot_reach_the_attach_socket_nor_is_served_when_let_through,
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
    // The worker's directory is in a temporary directory of its own, which
    // no other worker sweeps of leftovers: if it goes, its host removed it.
    let tmp = tempfile::tempdir().map_err(fail)?;
    let worker = Worker::<Calc>::spawn(calc_in(tmp.path()))
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;
    assert_eq!(ask(&worker, Increment { by: 2 }).await?, 2);
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let dir = socket_dir_in(tmp.path(), &worker).await?;

    kill(pid, Signal::KILL).map_err(fail)?;
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
            ConnectionError::Crashed {
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
        "the killed worker's attach directory {dir:?} is removed"
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
    kill(pid, Signal::KILL).map_err(fail)?;
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

async fn close_on_a_disconnected_worker_ends_it_and_removes_its_attach_directory(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    assert_nothing_on_disk(pid, "at spawn")?;
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let dir = socket_dir(&worker).await?;
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
    // A temporary directory of the worker's own, which no other worker
    // sweeps of leftovers: if its attach directory goes, its worker or host
    // removed it.
    let tmp = tempfile::tempdir().map_err(fail)?;
    let worker = Worker::<Calc>::spawn(calc_in(tmp.path()))
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;
    assert!(
        attach_dirs_in(tmp.path(), pid).is_empty(),
        "nothing on disk at spawn"
    );
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let dir = socket_dir_in(tmp.path(), &worker).await?;
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
            let _ = kill(pid, Signal::KILL);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "5 s after its last Addr was dropped, disconnected worker {pid} {still}; \
             its attach directory {}",
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

async fn impostors_on_the_attach_socket_are_dropped_and_the_host_reconnects() -> Result<(), Failed>
{
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 1);
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let socket = socket_dir(&worker).await?.join(ATTACH_SOCKET);

    // Connected, silent, and left open until the host is back.
    let _silent = UnixStream::connect(&socket).await.map_err(fail)?;
    // The right worker and contract, a wrong token: refused as such.
    let forged = handle_for(pid, &socket, &"0".repeat(64))?;
    match Worker::<Calc>::attach(&forged).await {
        Err(AttachError::WrongToken) => {}
        Err(other) => return Err(format!("attach with a wrong token: {other}").into()),
        Ok(_) => return Err("attached with a wrong token".into()),
    }
    // Each of these is hung up on without a word.
    let impostors = [
        ("a worker's Hello", calc_hello("", PROTOCOL)),
        ("a frame that is no MessagePack", GARBAGE_FRAME.to_vec()),
        (
            "a length prefix of 0xFFFF_FFFF",
            u32::MAX.to_le_bytes().to_vec(),
        ),
        ("half a length prefix", vec![0x10, 0x00]),
    ];
    for (what, bytes) in impostors {
        let mut stream = UnixStream::connect(&socket).await.map_err(fail)?;
        stream.write_all(&bytes).await.map_err(fail)?;
        // All it will ever say.
        stream.shutdown().await.map_err(fail)?;
        let mut answer = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => return Err(format!("the worker answered {what} with {n} bytes").into()),
            Err(_) => return Err(format!("the worker kept {what} open for 5 s").into()),
        }
    }

    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    assert_eq!(pid_of(&worker).await?, pid, "the same worker");
    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        2,
        "the worker kept its count"
    );
    close(&worker).await
}

async fn another_user_cannot_reach_the_attach_socket_nor_is_served_when_let_through(
) -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        println!("skipped: only root can run a process as `nobody` here");
        return Ok(());
    }
    // The worker's temporary directory, where it makes its own, is one
    // `nobody` may pass through (the test's may not be: CI's is 0700), so
    // that only the attach directory and socket keep it out.
    let tmp = tempfile::Builder::new()
        .prefix("passable-")
        .tempdir_in("/tmp")
        .map_err(fail)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).map_err(fail)?;
    let worker = isolated_workers::Worker::<Calc>::spawn(calc_in(tmp.path()))
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let dir = socket_dir_in(tmp.path(), &worker).await?;
    let socket = dir.join(ATTACH_SOCKET);
    // What a host with a wrong token says first: the worker answers it
    // (Refused) if it comes from the worker's user.
    let attach = attach_frame(pid, &"0".repeat(64)).await?;

    let code = as_nobody(&socket, &attach).await?;
    assert_eq!(code, REFUSED, "nobody reached the attach socket");

    // Let through by the file system, another user is still hung up on.
    let modes = |dir_mode, socket_mode| {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode))
            .and_then(|()| {
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(socket_mode))
            })
            .map_err(fail)
    };
    modes(0o711, 0o666)?;
    let code = as_nobody(&socket, &attach).await;
    modes(0o700, 0o600)?;
    assert_eq!(code?, HUNG_UP, "nobody, let through, was not hung up on");
    let mut ours = UnixStream::connect(&socket).await.map_err(fail)?;
    ours.write_all(&attach).await.map_err(fail)?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut answer))
        .await
        .map_err(|_| "the worker kept its own user waiting for 5 s")?
        .map_err(fail)?;
    assert!(
        !answer.is_empty(),
        "the worker's own user is answered (refused for its token)"
    );

    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    assert_eq!(
        ask(&worker, ping("still mine")).await?.text,
        "pong: still mine"
    );
    close(&worker).await
}

/// A handle for attaching to worker `pid` at `socket` with `token`, as if
/// the worker had been detached (after `Disconnect` it was not: this is
/// how a test presents a token of its choosing).
fn handle_for(pid: u32, socket: &Path, token: &str) -> Result<DetachedWorker, Failed> {
    serde_json::from_value(serde_json::json!({
        "socket": socket,
        "pid": pid,
        "token": token,
        "contract": Calc::NAME,
        "contract_version": Calc::VERSION,
        "protocol": PROTOCOL,
    }))
    .map_err(fail)
}

/// The first frame a host attaching to worker `pid` with `token` sends,
/// as it goes out: captured on a socket of this test's own, then hung up
/// on.
async fn attach_frame(pid: u32, token: &str) -> Result<Vec<u8>, Failed> {
    let scratch = tempfile::tempdir().map_err(fail)?;
    let socket = scratch.path().join("capture.sock");
    let listener = tokio::net::UnixListener::bind(&socket).map_err(fail)?;
    let handle = handle_for(pid, &socket, token)?;
    let capture = async {
        let (mut stream, _) = listener.accept().await?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let mut frame = len.to_vec();
        frame.resize(4 + u32::from_le_bytes(len) as usize, 0);
        stream.read_exact(&mut frame[4..]).await?;
        Ok::<_, std::io::Error>(frame)
    };
    let (attached, captured) = tokio::join!(Worker::<Calc>::attach(&handle), capture);
    if attached.is_ok() {
        return Err("attached to a socket that only captures".into());
    }
    captured.map_err(fail)
}

/// Forks a process that becomes `nobody`, connects to `socket`, sends
/// `frame`, and waits up to [`NOBODY_PATIENCE`] for an answer; returns how
/// it fared ([`REFUSED`], [`HUNG_UP`], ...). Forked rather than spawned, so
/// that `nobody` need not be able to execute this binary (its directory
/// may be private).
async fn as_nobody(socket: &Path, frame: &[u8]) -> Result<i32, Failed> {
    let (socket, frame) = (socket.to_owned(), frame.to_owned());
    tokio::task::spawn_blocking(move || fork_as_nobody(&socket, &frame))
        .await
        .map_err(fail)?
}

fn fork_as_nobody(socket: &Path, frame: &[u8]) -> Result<i32, Failed> {
    use std::io::{ErrorKind, Read, Write};
    // `fork`, `setgid`, `setuid` and `_exit` are libc's: rustix has no
    // `fork` (but in its experimental runtime module), and only per-thread
    // `setuid`/`setgid`.
    // SAFETY: the child only makes system calls (setgid, setuid, socket,
    // connect, setsockopt, write, read) and leaves with `_exit`; it
    // allocates nothing and takes no lock, as a fork of a multi-threaded
    // process must.
    match unsafe { libc::fork() } {
        -1 => Err(fail(std::io::Error::last_os_error())),
        0 => {
            // SAFETY: plain system calls.
            let code = if unsafe { libc::setgid(65534) != 0 || libc::setuid(65534) != 0 } {
                OTHER_ERROR
            } else {
                match std::os::unix::net::UnixStream::connect(socket) {
                    Err(e) if e.kind() == ErrorKind::PermissionDenied => REFUSED,
                    Err(_) => OTHER_ERROR,
                    Ok(mut stream) => {
                        let mut answer = [0u8; 64];
                        let sent = stream
                            .set_read_timeout(Some(NOBODY_PATIENCE))
                            .and_then(|()| stream.write_all(frame));
                        match sent.and_then(|()| stream.read(&mut answer)) {
                            Ok(0) => HUNG_UP,
                            Ok(_) => ANSWERED,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) =>
                            {
                                KEPT_WAITING
                            }
                            // Hung up on before it had its say.
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                                ) =>
                            {
                                HUNG_UP
                            }
                            Err(_) => OTHER_ERROR,
                        }
                    }
                }
            };
            // SAFETY: leaves the forked child at once, running no handler
            // of the parent's.
            unsafe { libc::_exit(code) }
        }
        child => {
            let child = rustix::process::Pid::from_raw(child).ok_or("fork gave no pid")?;
            let waited =
                rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty());
            match waited.map_err(fail)? {
                Some((_, status)) if status.exited() => {
                    status.exit_status().ok_or_else(|| "no exit code".into())
                }
                other => Err(format!("the nobody process ended as {other:?}").into()),
            }
        }
    }
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
    assert_nothing_on_disk(pid, "at spawn")?;
    let host_fds = "/proc/self/fd".to_owned();
    let worker_fds = format!("/proc/{pid}/fd");
    // Warm-up: the worker's attach listener (opened at the first
    // Disconnect, kept from then on) and what the runtimes open once are
    // open before counting.
    cycle(&worker, 1).await?;
    let dir = socket_dir(&worker).await?;
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
            "the attach directory {dir:?} holds {sockets:?}, expected at most {expected:?}"
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
