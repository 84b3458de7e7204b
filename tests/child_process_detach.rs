//! Detach and attach: a detached child worker outlives its host (even one
//! killed with SIGKILL), keeps its state for the next host, serves one host
//! at a time, refuses a wrong token or contract, stops by itself after its
//! idle timeout, and leaves no attach directory behind, even when it dies.
//! Its attach token is never in its environment.
//!
//! For the tests where the worker must outlive its host, this binary plays
//! the host too: started with [`HOST_MODE_ENV`], it spawns a Calc worker,
//! counts to 3, detaches it, prints the handle as one line of JSON, and
//! exits or waits to be killed.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use actix::Addr;
use isolated_workers::{
    AttachError, ChildProcess, Contract, Detach, DetachedWorker, Worker, WorkerState,
};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// When set, this binary is a host: `exit` makes it exit once it has
/// printed the handle; `wait` makes it stop dead (its runtime no longer
/// driven, its connection to the worker still open) until it is killed.
const HOST_MODE_ENV: &str = "ISOLATED_WORKERS_TEST_HOST_MODE";
/// How long a waiting host waits to be killed before it exits by itself,
/// so that a test that never kills it leaves nothing behind for long.
const HOST_LINGER: Duration = Duration::from_secs(60);
/// How long a test gives a host to print its handle.
const HOST_REPORT: Duration = Duration::from_secs(30);
/// What a worker detached in this process waits for a host before it
/// stops: long enough for any test, short enough that one left behind by a
/// crashed test run goes away by itself.
const IN_PROCESS_DETACH: Detach = Detach {
    idle_timeout: Some(Duration::from_secs(60)),
};

fn main() {
    enter_workers();
    if let Some(mode) = std::env::var_os(HOST_MODE_ENV) {
        host_mode(&mode.to_string_lossy());
    }
    run(vec![
        actix_test(
            "a_worker_detached_by_a_host_that_exits_keeps_its_state_for_the_next_host",
            a_worker_detached_by_a_host_that_exits_keeps_its_state_for_the_next_host,
        ),
        actix_test(
            "a_worker_detached_by_a_host_killed_with_sigkill_keeps_its_state_for_the_next_host",
            a_worker_detached_by_a_host_killed_with_sigkill_keeps_its_state_for_the_next_host,
        ),
        actix_test(
            "attaching_with_a_wrong_token_is_refused_and_leaves_the_worker_unharmed",
            attaching_with_a_wrong_token_is_refused_and_leaves_the_worker_unharmed,
        ),
        actix_test(
            "attaching_as_another_contract_or_version_is_refused_before_connecting",
            attaching_as_another_contract_or_version_is_refused_before_connecting,
        ),
        actix_test(
            "attaching_to_a_dead_worker_answers_gone_and_removes_its_attach_directory",
            attaching_to_a_dead_worker_answers_gone_and_removes_its_attach_directory,
        ),
        actix_test(
            "attaching_to_a_dead_worker_not_yet_reaped_answers_gone_and_removes_its_attach_directory",
            attaching_to_a_dead_worker_not_yet_reaped_answers_gone_and_removes_its_attach_directory,
        ),
        actix_test(
            "a_second_host_is_refused_as_busy_until_the_first_lets_go",
            a_second_host_is_refused_as_busy_until_the_first_lets_go,
        ),
        actix_test(
            "a_detached_worker_with_no_host_stops_after_its_idle_timeout",
            a_detached_worker_with_no_host_stops_after_its_idle_timeout,
        ),
        actix_test(
            "detaching_again_answers_the_same_handle",
            detaching_again_answers_the_same_handle,
        ),
        actix_test(
            "the_attach_token_is_not_in_the_workers_environment_or_command_line",
            the_attach_token_is_not_in_the_workers_environment_or_command_line,
        ),
    ]);
}

async fn a_worker_detached_by_a_host_that_exits_keeps_its_state_for_the_next_host(
) -> Result<(), Failed> {
    let mut host = Host::start("exit").await?;
    let _leftover = Leftover::of(&host.handle);
    let status = host.child.wait().await.map_err(fail)?;
    assert!(status.success(), "the host exited with {status}");
    outlives_its_host(&host.handle).await
}

async fn a_worker_detached_by_a_host_killed_with_sigkill_keeps_its_state_for_the_next_host(
) -> Result<(), Failed> {
    let mut host = Host::start("wait").await?;
    let _leftover = Leftover::of(&host.handle);
    host.kill().await?;
    outlives_its_host(&host.handle).await
}

/// The worker behind `handle`, whose host counted to 3 and is gone, runs
/// and counts on for a host that attaches; `Close` from that host ends it.
async fn outlives_its_host(handle: &DetachedWorker) -> Result<(), Failed> {
    let pid = handle.pid();
    let dir = socket_dir_of(handle)?;
    assert!(running(pid), "detached worker {pid} outlives its host");
    assert!(dir.is_dir(), "{dir:?} outlives the host");

    let worker = attach_when_free(handle).await?;
    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        4,
        "the worker kept its count across hosts"
    );
    let seen = status(&worker).await?;
    assert!(seen.detached, "an attached worker is detached: {seen:?}");
    assert_eq!(seen.pid, Some(pid), "{seen:?}");
    assert_eq!(seen.state, WorkerState::Running, "{seen:?}");

    close(&worker).await?;
    // The worker is no child of this process: once it exits it may stay a
    // zombie until whoever adopted it reaps it.
    assert!(!running(pid), "worker {pid} still runs after Close");
    assert!(!dir.exists(), "{dir:?} is removed once Close resolves");
    assert_eq!(status(&worker).await?.state, WorkerState::Closed);
    Ok(())
}

async fn attaching_with_a_wrong_token_is_refused_and_leaves_the_worker_unharmed(
) -> Result<(), Failed> {
    let (worker, handle) = spawn_detached().await?;
    let _leftover = Leftover::of(&handle);
    drop(worker);

    let mut forged = serde_json::to_value(&handle).map_err(fail)?;
    let token = forged["token"]
        .as_str()
        .ok_or("the handle's JSON has a `token` string")?
        .to_owned();
    // The same length, one character off.
    let first = if token.starts_with('0') { "1" } else { "0" };
    forged["token"] = format!("{first}{}", token.get(1..).unwrap_or_default()).into();
    let forged: DetachedWorker = serde_json::from_value(forged).map_err(fail)?;
    assert_ne!(forged, handle, "the token was changed");

    match Worker::<Calc>::attach(&forged).await {
        Err(AttachError::WrongToken) => {}
        Err(other) => return Err(format!("attach with a wrong token: {other}").into()),
        Ok(_) => return Err("attached with a wrong token".into()),
    }
    assert!(running(handle.pid()), "the worker runs on");

    let worker = attach_when_free(&handle).await?;
    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        4,
        "the worker kept its count"
    );
    close_and_check(&worker, &handle).await
}

async fn attaching_as_another_contract_or_version_is_refused_before_connecting(
) -> Result<(), Failed> {
    // The spawning host stays attached throughout: an attach that got as
    // far as the worker would be refused as busy.
    let (worker, handle) = spawn_detached().await?;
    let _leftover = Leftover::of(&handle);
    let (name, version) = handle.contract();
    assert_eq!((name, version), (Calc::NAME, Calc::VERSION));

    let (expected, found) = mismatch(
        "the handle read as contract Other",
        Worker::<Other>::attach(&handle).await,
    )?;
    assert!(
        expected.contains(Other::NAME) && found.contains(Calc::NAME),
        "expected {expected:?}, found {found:?}"
    );

    // Checked before connecting: with its socket pointing nowhere the
    // handle is still refused for its contract, not found gone.
    let nowhere = tempfile::tempdir().map_err(fail)?;
    let mut moved = serde_json::to_value(&handle).map_err(fail)?;
    moved["socket"] = nowhere.path().join("attach.sock").to_string_lossy().into();
    let moved: DetachedWorker = serde_json::from_value(moved).map_err(fail)?;
    mismatch(
        "a handle with no socket, read as contract Other",
        Worker::<Other>::attach(&moved).await,
    )?;

    let mut bumped = serde_json::to_value(&handle).map_err(fail)?;
    let theirs = bumped["contract_version"]
        .as_u64()
        .ok_or("the handle's JSON has a numeric `contract_version`")?;
    bumped["contract_version"] = (theirs + 1).into();
    let bumped: DetachedWorker = serde_json::from_value(bumped).map_err(fail)?;
    let (_, found) = mismatch(
        "a handle for the next contract version",
        Worker::<Calc>::attach(&bumped).await,
    )?;
    assert!(
        found.contains(&(theirs + 1).to_string()),
        "the mismatch names the handle's version: {found:?}"
    );

    assert!(running(handle.pid()), "the worker runs on");
    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        4,
        "the attached host is served as before"
    );
    close_and_check(&worker, &handle).await
}

async fn attaching_to_a_dead_worker_answers_gone_and_removes_its_attach_directory(
) -> Result<(), Failed> {
    // Detached by this process, so this process reaps it when it dies. Its
    // directory is in a temporary directory of its own, which no other
    // worker sweeps of leftovers before this test looks.
    let tmp = tempfile::tempdir().map_err(fail)?;
    let (worker, handle) = spawn_detached_with(calc().env("TMPDIR", tmp.path())).await?;
    let leftover = Leftover::of(&handle);
    drop(worker);
    let pid = handle.pid();
    let dir = socket_dir_of(&handle)?;

    kill(pid, Signal::KILL).map_err(fail)?;
    let reaped = eventually(Duration::from_secs(5), || !process_exists(pid)).await;
    assert!(reaped, "killed worker {pid} was reaped");
    assert!(dir.is_dir(), "a killed worker cannot remove {dir:?} itself");

    gone_and_cleaned_up(&handle, &dir).await?;
    drop(leftover);
    Ok(())
}

async fn attaching_to_a_dead_worker_not_yet_reaped_answers_gone_and_removes_its_attach_directory(
) -> Result<(), Failed> {
    // The worker's host is alive but stopped dead, so the killed worker
    // stays a zombie: it runs no more, but its pid still exists (as it
    // does, once its host is gone, under an init that reaps orphans late
    // or never).
    let mut host = Host::start("wait").await?;
    let leftover = Leftover::of(&host.handle);
    let handle = host.handle.clone();
    let pid = handle.pid();
    let dir = socket_dir_of(&handle)?;

    kill(pid, Signal::KILL).map_err(fail)?;
    let dead = eventually(Duration::from_secs(5), || !running(pid)).await;
    assert!(dead, "killed worker {pid} stopped running");
    assert!(dir.is_dir(), "a killed worker cannot remove {dir:?} itself");

    let checked = gone_and_cleaned_up(&handle, &dir).await;
    host.kill().await?;
    drop(leftover);
    checked
}

/// The `expected` and `found` of an attach refused for its contract.
fn mismatch<T>(what: &str, attached: Result<T, AttachError>) -> Result<(String, String), Failed> {
    match attached {
        Err(AttachError::ContractMismatch { expected, found }) => Ok((expected, found)),
        Err(other) => Err(format!("{what}: expected a contract mismatch, got {other}").into()),
        Ok(_) => Err(format!("{what}: attached").into()),
    }
}

/// Attaching to the dead worker behind `handle` answers `Gone` and
/// removes its attach directory `dir`.
async fn gone_and_cleaned_up(handle: &DetachedWorker, dir: &Path) -> Result<(), Failed> {
    let pid = handle.pid();
    match Worker::<Calc>::attach(handle).await {
        Err(AttachError::Gone { pid: gone, .. }) => {
            assert_eq!(gone, pid, "Gone names the handle's pid");
        }
        Err(other) => return Err(format!("attach to dead worker {pid}: {other}").into()),
        Ok(_) => return Err(format!("attached to dead worker {pid}").into()),
    }
    if dir.exists() {
        return Err(format!(
            "the failed attach to dead worker {pid} ({}) left its attach directory \
             {dir:?} behind",
            process_state(pid)
        )
        .into());
    }
    Ok(())
}

async fn a_second_host_is_refused_as_busy_until_the_first_lets_go() -> Result<(), Failed> {
    let (worker, handle) = spawn_detached().await?;
    let _leftover = Leftover::of(&handle);

    match Worker::<Calc>::attach(&handle).await {
        Err(AttachError::Busy) => {}
        Err(other) => return Err(format!("a second host: {other}").into()),
        Ok(_) => return Err("a second host attached while the first is attached".into()),
    }
    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        4,
        "the first host is served on"
    );

    drop(worker);
    let worker = attach_when_free(&handle).await?;
    assert_eq!(ask(&worker, Increment { by: 1 }).await?, 5);
    close_and_check(&worker, &handle).await
}

async fn a_detached_worker_with_no_host_stops_after_its_idle_timeout() -> Result<(), Failed> {
    let idle = Duration::from_millis(300);
    let worker = spawn_calc().await?;
    assert_nothing_on_disk(pid_of(&worker).await?, "at spawn")?;
    let handle = ask(
        &worker,
        Detach {
            idle_timeout: Some(idle),
        },
    )
    .await?;
    let _leftover = Leftover::of(&handle);
    let pid = handle.pid();
    let dir = socket_dir(&worker).await?;
    assert_eq!(socket_dir_of(&handle)?, dir);

    // A detached worker is not killed when its proxy stops: it parks.
    let dropped = Instant::now();
    drop(worker);
    let stopped = eventually(Duration::from_secs(20), || !running(pid) && !dir.exists()).await;
    let took = dropped.elapsed();
    if !stopped {
        return Err(format!(
            "{took:?} after its host left, worker {pid} with an idle timeout of {idle:?}: {}; \
             {dir:?} {}",
            process_state(pid),
            if dir.exists() {
                "still exists"
            } else {
                "removed"
            }
        )
        .into());
    }
    assert!(
        took >= idle,
        "worker {pid} stopped {took:?} after its host left, before its idle timeout of {idle:?}"
    );
    Ok(())
}

async fn detaching_again_answers_the_same_handle() -> Result<(), Failed> {
    let (worker, handle) = spawn_detached().await?;
    let _leftover = Leftover::of(&handle);
    let again = ask(&worker, Detach::default()).await?;
    assert_eq!(again, handle, "a second Detach");
    let with_another_timeout = ask(&worker, Detach { idle_timeout: None }).await?;
    assert_eq!(with_another_timeout, handle, "a third Detach");
    assert_eq!(
        ask(&worker, Increment { by: 1 }).await?,
        4,
        "the worker serves on"
    );
    close_and_check(&worker, &handle).await
}

async fn the_attach_token_is_not_in_the_workers_environment_or_command_line() -> Result<(), Failed>
{
    let (worker, handle) = spawn_detached().await?;
    let _leftover = Leftover::of(&handle);
    let json = serde_json::to_value(&handle).map_err(fail)?;
    let token = json["token"]
        .as_str()
        .ok_or("the handle's JSON has a `token` string")?;
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "the attach token is 64 hex digits"
    );

    let pid = handle.pid();
    // What the worker was started with: `/proc/<pid>/environ` shows the
    // environment as it was at exec, whatever the worker removed since.
    let environ = proc_strings(pid, "environ")?;
    assert!(!environ.is_empty(), "worker {pid} has an environment");
    for var in &environ {
        assert!(
            !var.starts_with("ISOLATED_WORKERS_TOKEN"),
            "worker {pid} was given a token: {var:?}"
        );
        assert!(
            !var.contains(token),
            "worker {pid}'s environment holds its attach token"
        );
        if let Some((name, value)) = var.split_once('=') {
            let token_like = value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(
                !(name.starts_with("ISOLATED_WORKERS_") && token_like),
                "worker {pid} was given a secret in {name}"
            );
        }
    }
    let cmdline = proc_strings(pid, "cmdline")?;
    assert!(
        !cmdline.iter().any(|arg| arg.contains(token)),
        "worker {pid}'s command line holds its attach token"
    );
    close_and_check(&worker, &handle).await
}

/// The NUL-separated strings of `/proc/<pid>/<file>` (`environ`,
/// `cmdline`).
fn proc_strings(pid: u32, file: &str) -> Result<Vec<String>, Failed> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).map_err(fail)?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// A Calc worker spawned here, counted to 3 and detached (with
/// [`IN_PROCESS_DETACH`]); this process stays attached to it.
async fn spawn_detached() -> Result<(Addr<Worker<Calc>>, DetachedWorker), Failed> {
    spawn_detached_with(calc()).await
}

/// [`spawn_detached`] with `driver`.
async fn spawn_detached_with(
    driver: ChildProcess,
) -> Result<(Addr<Worker<Calc>>, DetachedWorker), Failed> {
    let worker = Worker::<Calc>::spawn(driver).await.map_err(fail)?;
    for expected in 1..=3 {
        assert_eq!(ask(&worker, Increment { by: 1 }).await?, expected);
    }
    let handle = ask(&worker, IN_PROCESS_DETACH).await?;
    let seen = status(&worker).await?;
    assert!(seen.detached, "detached: {seen:?}");
    assert_eq!(seen.pid, Some(handle.pid()), "{seen:?}");
    Ok((worker, handle))
}

/// Attaches to the worker behind `handle`, which a host has just let go
/// of. The worker may read the end of that host's connection only after
/// this attach arrives; it waits for it briefly rather than answer `Busy`.
async fn attach_when_free(handle: &DetachedWorker) -> Result<Addr<Worker<Calc>>, Failed> {
    Worker::<Calc>::attach(handle)
        .await
        .map_err(|e| format!("attach to worker {}: {e}", handle.pid()).into())
}

/// Closes the worker behind `handle` and checks it is gone, directory and
/// all.
async fn close_and_check(
    worker: &Addr<Worker<Calc>>,
    handle: &DetachedWorker,
) -> Result<(), Failed> {
    let dir = socket_dir_of(handle)?;
    close(worker).await?;
    let pid = handle.pid();
    assert!(
        !running(pid),
        "worker {pid} still runs after Close: {}",
        process_state(pid)
    );
    assert!(!dir.exists(), "{dir:?} is removed once Close resolves");
    Ok(())
}

/// The private directory holding the attach socket `handle` names.
fn socket_dir_of(handle: &DetachedWorker) -> Result<PathBuf, Failed> {
    let dir = handle
        .socket()
        .parent()
        .ok_or("the handle's socket has a directory")?;
    let named = dir
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("isolated-workers-"));
    if !named {
        return Err(format!("{dir:?} is not a worker's attach directory").into());
    }
    Ok(dir.to_owned())
}

/// What `/proc` says about `pid`: its state letter (`Z` for a zombie), or
/// that it is gone.
fn process_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    match stat
        .as_deref()
        .and_then(|stat| stat.rsplit_once(')'))
        .and_then(|(_, rest)| rest.split_whitespace().next())
    {
        Some(state) => format!("state {state}"),
        None => "gone".into(),
    }
}

/// This binary started as a host (see [`HOST_MODE_ENV`]), with the handle
/// it printed. Killed if dropped still running.
struct Host {
    child: tokio::process::Child,
    handle: DetachedWorker,
    /// The temporary directory of the host and its worker, their own: no
    /// other worker sweeps a dead worker's leftovers from it behind a
    /// test's back.
    _tmp: tempfile::TempDir,
}

impl Host {
    /// Starts a host in `mode` and reads the handle it prints.
    async fn start(mode: &str) -> Result<Self, Failed> {
        let tmp = tempfile::tempdir().map_err(fail)?;
        let exe = std::env::current_exe().map_err(fail)?;
        let mut command = tokio::process::Command::new(exe);
        // Whatever this process was told as a worker (nothing, normally)
        // is not the host's business.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ISOLATED_WORKERS_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .env(HOST_MODE_ENV, mode)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(fail)?;
        let stdout = child.stdout.take().ok_or("the host's stdout is piped")?;
        let line = tokio::time::timeout(HOST_REPORT, BufReader::new(stdout).lines().next_line())
            .await
            .map_err(|_| format!("the host printed no handle within {HOST_REPORT:?}"))?
            .map_err(fail)?
            .ok_or("the host ended without printing a handle")?;
        let handle = serde_json::from_str(&line)
            .map_err(|e| format!("the host printed {line:?}, not a handle: {e}"))?;
        Ok(Self {
            child,
            handle,
            _tmp: tmp,
        })
    }

    /// Kills the host with SIGKILL and reaps it.
    async fn kill(&mut self) -> Result<(), Failed> {
        let pid = self.child.id().ok_or("the host has not been reaped yet")?;
        kill(pid, Signal::KILL).map_err(fail)?;
        self.child.wait().await.map_err(fail)?;
        Ok(())
    }
}

/// A detached worker a test started, killed and its directory removed if
/// they outlive the test, so that a failing test leaves nothing behind
/// either.
struct Leftover {
    pid: u32,
    dir: Option<PathBuf>,
}

impl Leftover {
    fn of(handle: &DetachedWorker) -> Self {
        Self {
            pid: handle.pid(),
            dir: socket_dir_of(handle).ok(),
        }
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        if running(self.pid) {
            let _ = kill(self.pid, Signal::KILL);
        }
        if let Some(dir) = &self.dir {
            if dir.exists() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// The host of the tests where the worker must outlive its host: spawns a
/// Calc worker, counts to 3, detaches it, prints the handle, and exits
/// (`exit`) or stops dead until killed (`wait`).
fn host_mode(mode: &str) -> ! {
    // The worker inherits this process's environment: it must not take
    // itself for a host (it enters the worker before looking, but even so).
    std::env::remove_var(HOST_MODE_ENV);
    let system = actix::System::new();
    let detached = system.block_on(async {
        let worker = spawn_calc().await?;
        for expected in 1..=3 {
            let counted = ask(&worker, Increment { by: 1 }).await?;
            if counted != expected {
                return Err(format!("counted to {counted}, expected {expected}").into());
            }
        }
        let handle = ask(&worker, Detach::default()).await?;
        Ok::<_, Failed>((worker, handle))
    });
    let (worker, handle) = match detached {
        Ok(detached) => detached,
        Err(e) => {
            eprintln!("host: {}", e.message().unwrap_or("failed"));
            std::process::exit(1);
        }
    };
    let printed = serde_json::to_string(&handle)
        .map_err(std::io::Error::other)
        .and_then(|json| {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{json}")?;
            stdout.flush()
        });
    if let Err(e) = printed {
        eprintln!("host: could not print the handle: {e}");
        std::process::exit(1);
    }
    match mode {
        "exit" => {
            drop(worker);
            drop(system);
            std::process::exit(0);
        }
        "wait" => {
            // The runtime is no longer driven: the connection stays open,
            // and nothing here reaps the worker should it die.
            std::thread::sleep(HOST_LINGER);
            std::process::exit(1);
        }
        other => {
            eprintln!("host: unknown mode {other:?}");
            std::process::exit(1);
        }
    }
}
