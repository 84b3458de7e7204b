//! How a child-process worker ends: `Close` (Shutdown, then SIGTERM, then
//! SIGKILL, a grace period apart), SIGTERM from outside, the host's death,
//! and many spawn/close cycles. Each time the worker's actor is stopped the
//! actix way where it can be, and nothing is left behind: no process, no
//! zombie, no attach directory, no file descriptor. A worker has nothing on
//! disk until it is asked to wait for its host; then its attach socket is
//! private.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::future::join_all;
use isolated_workers::proxy::{Disconnect, Reconnect};
use isolated_workers::{CrashReason, Worker, WorkerError, WorkerOptions, WorkerState};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::rogue::{Rogue, RogueLog};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Set (to anything) when this binary is started as a host that spawns
/// [`HOST_WORKERS`] Calc workers, disconnects every other one (so that it
/// has an attach directory and waits for its host), prints a
/// `pid<TAB>connected|disconnected` line for each, and waits to be killed.
const HOST_MODE_ENV: &str = "ISOLATED_WORKERS_TEST_HOST_MODE";
/// How many workers a host started in [`HOST_MODE_ENV`] spawns.
const HOST_WORKERS: usize = 4;
/// How long a host waits to be killed before giving up, so that a test
/// that never kills it leaves nothing behind for long.
const HOST_LINGER: Duration = Duration::from_secs(60);

/// Set (to anything) when this binary is started to run the spawn/close
/// cycles alone in its own process, where its file descriptors, children
/// and temporary directories are nobody else's.
const CYCLES_MODE_ENV: &str = "ISOLATED_WORKERS_TEST_CYCLES_MODE";
/// Spawn/close cycles measured.
const CYCLES: usize = 200;
/// Cycles run at once.
const CYCLES_AT_ONCE: usize = 4;
/// File descriptors the runtime may open lazily after the warm-up round.
const FD_SLACK: usize = 2;

fn main() {
    enter_workers();
    if std::env::var_os(HOST_MODE_ENV).is_some() {
        host_mode();
    }
    if std::env::var_os(CYCLES_MODE_ENV).is_some() {
        cycles_mode();
    }
    run(vec![
        actix_test(
            "close_runs_the_worker_actors_stopping_and_stopped_hooks",
            close_runs_the_worker_actors_stopping_and_stopped_hooks,
        ),
        actix_test(
            "close_with_a_request_in_flight_still_runs_the_stopped_hook",
            close_with_a_request_in_flight_still_runs_the_stopped_hook,
        ),
        actix_test(
            "sigterm_from_outside_runs_the_stopped_hook_and_the_worker_exits_with_code_0",
            sigterm_from_outside_runs_the_stopped_hook_and_the_worker_exits_with_code_0,
        ),
        actix_test(
            "sigint_from_a_terminal_leaves_the_worker_to_its_host",
            sigint_from_a_terminal_leaves_the_worker_to_its_host,
        ),
        actix_test(
            "close_ends_a_worker_ignoring_shutdown_and_sigterm_within_two_grace_periods",
            close_ends_a_worker_ignoring_shutdown_and_sigterm_within_two_grace_periods,
        ),
        actix_test(
            "close_sends_shutdown_then_sigterm_a_grace_period_later_then_sigkill",
            close_sends_shutdown_then_sigterm_a_grace_period_later_then_sigkill,
        ),
        actix_test(
            "a_worker_has_nothing_on_disk_until_disconnect_then_a_0600_socket_in_a_0700_directory",
            a_worker_has_nothing_on_disk_until_disconnect_then_a_0600_socket_in_a_0700_directory,
        ),
        actix_test(
            "when_the_host_is_killed_its_workers_exit_and_remove_their_attach_directories",
            when_the_host_is_killed_its_workers_exit_and_remove_their_attach_directories,
        ),
        actix_test(
            "two_hundred_spawn_close_cycles_leave_no_fds_processes_or_directories",
            two_hundred_spawn_close_cycles_leave_no_fds_processes_or_directories,
        ),
        actix_test(
            "kill_9_with_1000_in_flight_resolves_each_once_as_crashed_within_a_second",
            kill_9_with_1000_in_flight_resolves_each_once_as_crashed_within_a_second,
        ),
    ]);
}

/// A terminal's Ctrl-C is a SIGINT to the whole foreground process group,
/// workers included: a worker serves on (its host decides when it ends).
async fn sigint_from_a_terminal_leaves_the_worker_to_its_host() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 1);
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .map_err(fail)?;
    assert!(sent.success(), "kill -INT {pid}: {sent}");
    // A SIGINT with its default action would have ended the process as it
    // was delivered, at the latest when the next request woke it.
    for expected in 2..=3 {
        assert_eq!(ask(&worker, Increment { by: 1 }).await?, expected);
    }
    let status = status(&worker).await?;
    assert_eq!((status.pid, status.restarts), (Some(pid), 0), "{status:?}");
    close(&worker).await
}

async fn close_runs_the_worker_actors_stopping_and_stopped_hooks() -> Result<(), Failed> {
    let scratch = tempfile::tempdir().map_err(fail)?;
    let marker = scratch.path().join("stopped");
    // A grace period far longer than the bound below: Close must not have
    // to wait it out, the worker exits when asked.
    let options = WorkerOptions::default().close_grace(Duration::from_secs(20));
    let worker = Worker::<Calc>::spawn_with(calc_with_stop_hook(&marker), options)
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;
    assert_nothing_on_disk(pid, "at spawn")?;
    assert_eq!(ask(&worker, Increment { by: 5 }).await?, 5);
    assert!(
        !marker.exists(),
        "the hook has not run while the worker serves"
    );

    let started = Instant::now();
    close(&worker).await?;
    let took = started.elapsed();

    assert_stop_marker(&marker, 5)?;
    assert!(
        took < Duration::from_secs(5),
        "Close took {took:?}: the worker did not exit when asked"
    );
    assert!(
        !process_exists(pid),
        "child {pid} is reaped once Close resolves"
    );
    assert_nothing_on_disk(pid, "once Close resolves")
}

async fn close_with_a_request_in_flight_still_runs_the_stopped_hook() -> Result<(), Failed> {
    let scratch = tempfile::tempdir().map_err(fail)?;
    let marker = scratch.path().join("stopped");
    let options = WorkerOptions::default().close_grace(Duration::from_secs(20));
    let worker = Worker::<Calc>::spawn_with(calc_with_stop_hook(&marker), options)
        .await
        .map_err(fail)?;
    assert_eq!(ask(&worker, Increment { by: 3 }).await?, 3);
    let sleeping = enqueue(&worker, Sleep { ms: 60_000 });
    // The worker has read the Sleep once it answers what came after it.
    ask(&worker, ping("behind the sleep")).await?;

    let started = Instant::now();
    close(&worker).await?;
    let took = started.elapsed();

    let err = expect_error(outcome(sleeping).await?)?;
    assert!(matches!(err, WorkerError::Closed), "the sleep: {err:?}");
    assert_stop_marker(&marker, 3)?;
    assert!(
        took < Duration::from_secs(5),
        "Close took {took:?}: the worker did not exit when asked"
    );
    Ok(())
}

async fn sigterm_from_outside_runs_the_stopped_hook_and_the_worker_exits_with_code_0(
) -> Result<(), Failed> {
    let scratch = tempfile::tempdir().map_err(fail)?;
    let marker = scratch.path().join("stopped");
    let worker = Worker::<Calc>::spawn(calc_with_stop_hook(&marker))
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;
    assert_eq!(ask(&worker, Increment { by: 7 }).await?, 7);
    let pending = enqueue(&worker, Sleep { ms: 60_000 });
    ask(&worker, ping("behind the sleep")).await?;

    kill(pid, Signal::TERM).map_err(fail)?;
    let err = expect_error(outcome(pending).await?)?;
    let exited_0 = |e: &WorkerError| {
        matches!(
            e,
            WorkerError::Crashed {
                reason: CrashReason::Exit(0),
                ..
            }
        )
    };
    assert!(
        matches!(err, WorkerError::Crashed { .. }),
        "the pending request: {err:?}"
    );
    assert!(
        exited_0(&err),
        "the pending request should see the worker exit with code 0 after SIGTERM: {err:?}"
    );
    let reaped = eventually(Duration::from_secs(5), || !process_exists(pid)).await;
    assert!(reaped, "child {pid} was reaped after it exited");
    assert_stop_marker(&marker, 7)?;
    let state = status(&worker).await?.state;
    assert!(
        matches!(
            state,
            WorkerState::Crashed {
                reason: CrashReason::Exit(0),
                ..
            }
        ),
        "the status shows the exit: {state:?}"
    );
    // (A later request would go to a fresh worker: not this test's subject.)
    close(&worker).await
}

async fn close_ends_a_worker_ignoring_shutdown_and_sigterm_within_two_grace_periods(
) -> Result<(), Failed> {
    let grace = Duration::from_millis(300);
    let options = WorkerOptions::default().close_grace(grace);
    let driver = Rogue::IgnoresShutdownAndSigterm.driver();
    let worker = Worker::<Calc>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;

    let started = Instant::now();
    close(&worker).await?;
    let took = started.elapsed();

    assert!(
        took < Duration::from_secs(3),
        "Close took {took:?} with a grace period of {grace:?}"
    );
    assert!(
        !process_exists(pid),
        "child {pid} is gone, not even a zombie, once Close resolves"
    );
    assert!(
        took >= 2 * grace,
        "Close took {took:?}: a worker ignoring SIGTERM can only be gone by SIGKILL, \
         which comes two grace periods ({grace:?} each) after Shutdown"
    );
    Ok(())
}

async fn close_sends_shutdown_then_sigterm_a_grace_period_later_then_sigkill() -> Result<(), Failed>
{
    let scratch = tempfile::tempdir().map_err(fail)?;
    let log = scratch.path().join("rogue.log");
    let grace = Duration::from_millis(300);
    let options = WorkerOptions::default().close_grace(grace);
    let driver = Rogue::RecordsShutdownAndSigterm.logging_driver(&log);
    let worker = Worker::<Calc>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let pid = pid_of(&worker).await?;

    let started = Instant::now();
    close(&worker).await?;
    let took = started.elapsed();

    assert!(
        !process_exists(pid),
        "child {pid} is gone, not even a zombie, once Close resolves"
    );
    let seen = RogueLog::read(&log);
    let shutdown = seen
        .shutdown_at_ms
        .ok_or_else(|| format!("the worker was sent no Shutdown frame; it saw {seen:?}"))?;
    let [sigterm] = seen.sigterms_at_ms[..] else {
        return Err(format!(
            "the worker should have been sent SIGTERM once; it saw {seen:?} (Close took {took:?})"
        )
        .into());
    };
    let between = Duration::from_millis(sigterm.saturating_sub(shutdown));
    // Timers never fire early, but the rogue reads Shutdown a moment after
    // the proxy starts its grace period: half of it is a safe lower bound.
    assert!(
        between >= grace / 2 && between < grace + Duration::from_secs(1),
        "SIGTERM came {between:?} after Shutdown, with a grace period of {grace:?}"
    );
    assert!(
        took >= 2 * grace && took < Duration::from_secs(3),
        "Close took {took:?}: SIGKILL should come a grace period ({grace:?}) after SIGTERM"
    );
    Ok(())
}

async fn a_worker_has_nothing_on_disk_until_disconnect_then_a_0600_socket_in_a_0700_directory(
) -> Result<(), Failed> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    assert_nothing_on_disk(pid, "at spawn")?;
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 1);
    assert_nothing_on_disk(pid, "while it serves its first host")?;

    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let dir = socket_dir(&worker).await?;
    let socket = dir.join("attach.sock");
    let uid = rustix::process::geteuid().as_raw();
    let dir_meta = std::fs::symlink_metadata(&dir).map_err(fail)?;
    assert!(dir_meta.is_dir(), "{dir:?} is a directory: {dir_meta:?}");
    assert_eq!(dir_meta.uid(), uid, "{dir:?} is ours");
    assert_eq!(
        dir_meta.mode() & 0o7777,
        0o700,
        "{dir:?} has mode {:o}",
        dir_meta.mode() & 0o7777
    );
    assert!(
        dir.starts_with(std::env::temp_dir()),
        "{dir:?} is in the temporary directory"
    );
    let socket_meta = std::fs::symlink_metadata(&socket).map_err(fail)?;
    assert!(
        socket_meta.file_type().is_socket(),
        "{socket:?} is a socket: {socket_meta:?}"
    );
    assert_eq!(socket_meta.uid(), uid, "{socket:?} is ours");
    assert_eq!(
        socket_meta.mode() & 0o7777,
        0o600,
        "{socket:?} has mode {:o}",
        socket_meta.mode() & 0o7777
    );

    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 2);
    close(&worker).await?;
    assert!(
        !process_exists(pid),
        "worker {pid} is reaped once Close resolves"
    );
    assert!(!dir.exists(), "{dir:?} is removed once Close resolves");
    Ok(())
}

async fn when_the_host_is_killed_its_workers_exit_and_remove_their_attach_directories(
) -> Result<(), Failed> {
    // The host's workers become our children when it dies (rather than
    // init's, which may never reap them), so that we can reap them and see
    // them gone.
    // Any pid turns it on.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(fail)?;
    // A private temporary directory for the host and its workers: no other
    // process sweeps a directory a dead worker left there, so a directory
    // gone is one its worker removed.
    let tmp = tempfile::tempdir().map_err(fail)?;
    let exe = std::env::current_exe().map_err(fail)?;
    let mut host = tokio::process::Command::new(exe)
        .env(HOST_MODE_ENV, "1")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    let host_pid = host.id().ok_or("the host has a pid")?;
    let stdout = host.stdout.take().ok_or("the host's stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut workers = Leftovers::default();
    let mut disconnected = 0;
    for _ in 0..HOST_WORKERS {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| "the host did not report its workers within 30 s")?
            .map_err(fail)?
            .ok_or("the host ended before reporting its workers")?;
        let (pid, state) = line
            .split_once('\t')
            .ok_or_else(|| format!("not a `pid<TAB>state` line: {line:?}"))?;
        let pid: u32 = pid.parse().map_err(fail)?;
        let dirs = attach_dirs_in(tmp.path(), pid);
        match (state, &dirs[..]) {
            ("connected", []) => {}
            ("disconnected", [dir]) if dir.is_dir() => disconnected += 1,
            _ => {
                return Err(format!("{state} worker {pid} has attach directories {dirs:?}").into())
            }
        }
        workers.0.push((pid, dirs));
    }
    assert!(disconnected > 0, "some of the workers wait for their host");
    for (pid, _) in &workers.0 {
        assert!(process_exists(*pid), "worker {pid} runs");
    }

    kill(host_pid, Signal::KILL).map_err(fail)?;
    let killed = Instant::now();
    host.wait().await.map_err(fail)?;
    let cleaned_up = eventually(Duration::from_secs(2), || {
        // Reap every one before looking: an orphaned worker is our child now.
        workers.0.iter().for_each(|(pid, _)| reap_if_exited(*pid));
        workers
            .0
            .iter()
            .all(|(pid, _)| !process_exists(*pid) && attach_dirs_in(tmp.path(), *pid).is_empty())
    })
    .await;
    let took = killed.elapsed();
    if !cleaned_up {
        let report: Vec<String> = workers
            .0
            .iter()
            .map(|(pid, _)| {
                format!(
                    "worker {pid}: {}; attach directories {:?}",
                    process_state(*pid),
                    attach_dirs_in(tmp.path(), *pid)
                )
            })
            .collect();
        return Err(format!("{took:?} after the host was killed: {}", report.join("; ")).into());
    }
    Ok(())
}

async fn two_hundred_spawn_close_cycles_leave_no_fds_processes_or_directories() -> Result<(), Failed>
{
    // Run alone in a process of its own: the file descriptors, children and
    // temporary directories of tests running alongside would blur the count.
    // Its temporary directory is private, so any directory left there is
    // one of its workers'.
    let Alone { tmp, took } = run_alone(CYCLES_MODE_ENV).await?;
    let left = worker_dirs(tmp.path())?;
    assert!(left.is_empty(), "directories left behind: {left:?}");
    assert!(
        took < Duration::from_secs(30),
        "{CYCLES} cycles took {took:?}"
    );
    Ok(())
}

async fn kill_9_with_1000_in_flight_resolves_each_once_as_crashed_within_a_second(
) -> Result<(), Failed> {
    const IN_FLIGHT: usize = 1000;
    let options = WorkerOptions::default();
    assert!(options.max_in_flight >= IN_FLIGHT);
    let worker = spawn_calc_with(options).await?;
    let pid = pid_of(&worker).await?;
    let sleeps: Vec<_> = (0..IN_FLIGHT)
        .map(|_| enqueue(&worker, Sleep { ms: 30_000 }))
        .collect();
    // The worker has read every Sleep once it answers what came after them.
    assert_eq!(ask(&worker, WhoAmI).await?, pid);
    assert_eq!(status(&worker).await?.in_flight, IN_FLIGHT);

    kill(pid, Signal::KILL).map_err(fail)?;
    let killed = Instant::now();
    let outcomes = tokio::time::timeout(Duration::from_secs(10), join_all(sleeps))
        .await
        .map_err(|_| "the requests were still unresolved 10 s after the kill")?;
    let took = killed.elapsed();

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for outcome in outcomes {
        let kind = match outcome.map_err(fail)? {
            Err(WorkerError::Crashed {
                reason: CrashReason::Signal(9),
                ..
            }) => "crashed by SIGKILL".to_owned(),
            other => format!("{other:?}"),
        };
        *counts.entry(kind).or_default() += 1;
    }
    let expected = BTreeMap::from([("crashed by SIGKILL".to_owned(), IN_FLIGHT)]);
    assert_eq!(counts, expected, "each request resolves once, as crashed");
    assert!(
        took < Duration::from_secs(1),
        "resolved {took:?} after the kill"
    );
    assert_eq!(status(&worker).await?.in_flight, 0);
    assert!(!process_exists(pid), "the killed child was reaped");
    close(&worker).await
}

/// The stop marker says the actor's `stopping` and `stopped` ran, with its
/// counter at `counter`.
fn assert_stop_marker(marker: &Path, counter: u64) -> Result<(), Failed> {
    match std::fs::read_to_string(marker) {
        Ok(text) => {
            assert_eq!(text, stop_marker_text(counter), "the stop marker");
            Ok(())
        }
        Err(e) => Err(format!(
            "the actor's `stopped` hook did not run: no stop marker at {marker:?} ({e})"
        )
        .into()),
    }
}

/// What `/proc` says about `pid`: gone, or its state (`Z` for a zombie)
/// and parent.
fn process_state(pid: u32) -> String {
    match stat_fields(pid) {
        Some((state, ppid)) => format!("still exists (state {state}, parent {ppid})"),
        None => "gone".into(),
    }
}

/// The state and parent pid of process `pid`, from `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (name) state ppid ...`; the name may hold anything.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_owned();
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Workers a test saw (with their attach directories), killed if they
/// outlive it, so that a failing test leaves nothing behind either.
#[derive(Default)]
struct Leftovers(Vec<(u32, Vec<PathBuf>)>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, dirs) in &self.0 {
            reap_if_exited(*pid);
            if process_exists(*pid) {
                let _ = kill(*pid, Signal::KILL);
                if let Ok(pid) = support::pid(*pid) {
                    let _ =
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                }
            }
            for dir in dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The host of the host-death test: spawns its workers, disconnects every
/// other one, reports them, and waits to be killed.
fn host_mode() -> ! {
    let hosted = actix::System::new().block_on(async {
        let mut workers = Vec::new();
        for i in 0..HOST_WORKERS {
            let worker = spawn_calc().await?;
            let pid = pid_of(&worker).await?;
            let state = if i % 2 == 1 {
                worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
                "disconnected"
            } else {
                "connected"
            };
            // Line-buffered: each line reaches the test at once.
            println!("{pid}\t{state}");
            workers.push(worker);
        }
        tokio::time::sleep(HOST_LINGER).await;
        Ok::<_, Failed>(())
    });
    if let Err(e) = hosted {
        eprintln!("host: {}", e.message().unwrap_or("failed"));
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// The spawn/close cycles, alone in this process: exits 0 if they left
/// nothing behind, 1 (saying what) otherwise.
fn cycles_mode() -> ! {
    exit_after("the cycles", cycles)
}

async fn cycles() -> Result<(), Failed> {
    let tmp = std::env::temp_dir();
    let dirs_before = worker_dirs(&tmp)?;
    // Warm-up: what the runtime opens once (signal pipes, timers) is open
    // before counting.
    cycle_round().await?;
    let fds_before = open_fds()?;
    for _ in 0..CYCLES / CYCLES_AT_ONCE {
        cycle_round().await?;
    }
    // A closed worker's proxy lets go of its end of the socket when the
    // proxy actor itself stops, a moment after its last address is gone.
    let settled = |fds: &BTreeMap<String, String>| fds.len() <= fds_before.len() + FD_SLACK;
    eventually(Duration::from_secs(2), || {
        open_fds().is_ok_and(|fds| settled(&fds))
    })
    .await;
    let fds_after = open_fds()?;

    let mut left = Vec::new();
    let children = children_of(std::process::id())?;
    if !children.is_empty() {
        left.push(format!("child processes: {children:?}"));
    }
    if !settled(&fds_after) {
        let new: Vec<_> = fds_after
            .iter()
            .filter(|(fd, _)| !fds_before.contains_key(*fd))
            .collect();
        left.push(format!(
            "{} file descriptors open before the cycles, {} after; new: {new:?}",
            fds_before.len(),
            fds_after.len()
        ));
    }
    let dirs_after = worker_dirs(&tmp)?;
    let dirs: Vec<_> = dirs_after.difference(&dirs_before).collect();
    if !dirs.is_empty() {
        left.push(format!("attach directories in {tmp:?}: {dirs:?}"));
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("left behind: {}", left.join("; ")).into())
    }
}

/// [`CYCLES_AT_ONCE`] workers spawned, asked once, and closed, at once.
/// While they serve, nothing of theirs is in the (private) temporary
/// directory: a worker spawned has nothing on disk.
async fn cycle_round() -> Result<(), Failed> {
    let cycles = (0..CYCLES_AT_ONCE).map(|i| async move {
        let worker = spawn_calc().await?;
        let text = format!("cycle {i}");
        let pong = ask(&worker, ping(&text)).await?;
        if pong.text != format!("pong: {text}") {
            return Err(format!("wrong reply {pong:?}").into());
        }
        let on_disk = worker_dirs(&std::env::temp_dir())?;
        if !on_disk.is_empty() {
            return Err(format!("spawned workers serving, with {on_disk:?} on disk").into());
        }
        close(&worker).await
    });
    join_all(cycles).await.into_iter().collect()
}

/// This process's open file descriptors and what each refers to.
fn open_fds() -> Result<BTreeMap<String, String>, Failed> {
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        fds.insert(entry.file_name().to_string_lossy().into_owned(), target);
    }
    Ok(fds)
}

/// The processes (zombies included) whose parent is `parent`, each as
/// `pid (state S)`.
fn children_of(parent: u32) -> Result<Vec<String>, Failed> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // `None` if gone since the listing: not a child any more.
        if let Some((state, ppid)) = stat_fields(pid) {
            if ppid == parent {
                children.push(format!("{pid} (state {state})"));
            }
        }
    }
    Ok(children)
}

/// The workers' attach directories (`isolated-workers-*`) in `tmp`.
fn worker_dirs(tmp: &Path) -> Result<BTreeSet<PathBuf>, Failed> {
    let mut dirs = BTreeSet::new();
    for entry in std::fs::read_dir(tmp).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(ATTACH_DIR_PREFIX)
        {
            dirs.insert(entry.path());
        }
    }
    Ok(dirs)
}
