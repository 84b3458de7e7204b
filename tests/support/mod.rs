//! Shared by the integration tests: a contract with a worker that can be
//! made to answer, fail, stall, panic or count; a second contract (`Other`)
//! and a drifted copy of the first ([`skewed`]); workers that misbehave on
//! the wire ([`rogue`]); the entry that turns the test binary into any of
//! them when a test spawns it; helpers to spawn, ask and inspect workers;
//! and a harness that runs each test in its own actix System under a hang
//! guard.
//!
//! Test binaries use `harness = false` (libtest-mimic) so that `main` can
//! hand over to the worker first, exactly as a user's binary does.
#![allow(dead_code)]

pub mod rogue;
pub mod skewed;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::{Request, ToEnvelope};
use actix::prelude::*;
use isolated_workers::worker::Cancellable;
use isolated_workers::{
    ChildProcess, Close, Contract, RemoteError, SpawnError, Status, Worker, WorkerError,
    WorkerOptions, WorkerStatus,
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};

/// Longest any single test may take before it counts as hung.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub text: String,
}

/// A Ping with `text`.
pub fn ping(text: &str) -> Ping {
    Ping { text: text.into() }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Divide {
    pub a: f64,
    pub b: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Increment {
    pub by: u64,
}

/// Answers after `ms` milliseconds (without blocking the worker).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sleep {
    pub ms: u64,
}

/// Panics in the handler with `message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explode {
    pub message: String,
}

/// Echoes bytes back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Answers with the worker's pid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI;

isolated_workers::contract! {
    /// Everything the tests need a worker to do.
    pub Calc {
        Ping => Pong,
        Divide => f64,
        Increment => u64,
        Sleep => (),
        Explode => (),
        Echo => Vec<u8>,
        WhoAmI => u32,
        Spin => (),
        Spins => u64,
        ExplodeSoon => (),
        CatchPanic => String,
    }
}

/// Panics with `message` inside the handler and catches it there
/// (`catch_unwind`), answering the caught message: a panic the worker's own
/// code recovers from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchPanic {
    pub message: String,
}

/// Answers at once, then panics 20 ms later, with no request in flight.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplodeSoon {
    pub message: String,
}

/// Counts up, one step per millisecond, until cancelled (a `Cancellable`
/// handler): shows whether abandoned work stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spin;

/// Answers how far `Spin` handlers have counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spins;

/// The worker actor the tests spawn.
#[derive(Debug, Default)]
pub struct CalcWorker {
    counter: u64,
    spins: Arc<AtomicU64>,
    /// Where `stopped` writes [`stop_marker_text`], if anywhere.
    stop_marker: Option<PathBuf>,
    /// Whether actix ran `stopping` first.
    stopping_ran: bool,
}

/// The worker name of a Calc worker whose actor, once actix has stopped
/// it, writes [`stop_marker_text`] to the file named by
/// [`STOP_MARKER_ENV`]: shows that the actor's shutdown hooks ran.
pub const CALC_WITH_STOP_HOOK: &str = "calc-with-stop-hook";

/// The file a [`CALC_WITH_STOP_HOOK`] worker writes when its actor stops.
pub const STOP_MARKER_ENV: &str = "ISOLATED_WORKERS_TEST_STOP_MARKER";

/// What a [`CALC_WITH_STOP_HOOK`] worker writes from `stopped`, its
/// counter then being `counter`: `stopping` ran, then `stopped`, on the
/// actor's own state.
pub fn stop_marker_text(counter: u64) -> String {
    format!("stopping, then stopped; counter={counter}")
}

/// A Calc worker whose actor writes [`stop_marker_text`] to `marker` when
/// it stops.
pub fn calc_with_stop_hook(marker: &Path) -> ChildProcess {
    ChildProcess::current_exe(CALC_WITH_STOP_HOOK).env(STOP_MARKER_ENV, marker)
}

impl CalcWorker {
    /// A worker that records its stop where [`STOP_MARKER_ENV`] says.
    fn with_stop_marker_from_env() -> Self {
        Self {
            stop_marker: std::env::var_os(STOP_MARKER_ENV).map(PathBuf::from),
            ..Self::default()
        }
    }
}

impl Actor for CalcWorker {
    type Context = Context<Self>;

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.stopping_ran = true;
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let Some(marker) = &self.stop_marker else {
            return;
        };
        let text = if self.stopping_ran {
            stop_marker_text(self.counter)
        } else {
            format!("stopped without stopping; counter={}", self.counter)
        };
        // Written aside and renamed, so that a test never reads half of it.
        let aside = marker.with_extension("partial");
        let written = std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, marker));
        if let Err(e) = written {
            eprintln!("calc worker: could not write the stop marker {marker:?}: {e}");
        }
    }
}

impl Handler<Ping> for CalcWorker {
    type Result = Result<Pong, WorkerError>;
    fn handle(&mut self, ping: Ping, _: &mut Context<Self>) -> Self::Result {
        Ok(Pong {
            text: format!("pong: {}", ping.text),
        })
    }
}

impl Handler<Divide> for CalcWorker {
    type Result = Result<f64, WorkerError>;
    fn handle(&mut self, d: Divide, _: &mut Context<Self>) -> Self::Result {
        if d.b == 0.0 {
            return Err(
                RemoteError::new("DivideByZero", format!("cannot divide {} by zero", d.a))
                    .with_code(22)
                    .into(),
            );
        }
        Ok(d.a / d.b)
    }
}

impl Handler<Increment> for CalcWorker {
    type Result = Result<u64, WorkerError>;
    fn handle(&mut self, inc: Increment, _: &mut Context<Self>) -> Self::Result {
        self.counter += inc.by;
        Ok(self.counter)
    }
}

impl Handler<Sleep> for CalcWorker {
    type Result = ResponseFuture<Result<(), WorkerError>>;
    fn handle(&mut self, sleep: Sleep, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(sleep.ms)).await;
            Ok(())
        })
    }
}

impl Handler<Explode> for CalcWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, explode: Explode, _: &mut Context<Self>) -> Self::Result {
        panic_on_purpose(&explode.message);
    }
}

impl Handler<Spin> for CalcWorker {
    type Result = Cancellable<Result<(), WorkerError>>;
    fn handle(&mut self, _: Spin, _: &mut Context<Self>) -> Self::Result {
        let spins = self.spins.clone();
        Cancellable::new(async move {
            loop {
                spins.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    }
}

impl Handler<ExplodeSoon> for CalcWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, explode: ExplodeSoon, ctx: &mut Context<Self>) -> Self::Result {
        ctx.run_later(Duration::from_millis(20), move |_, _| {
            panic_on_purpose(&explode.message)
        });
        Ok(())
    }
}

impl Handler<CatchPanic> for CalcWorker {
    type Result = Result<String, WorkerError>;
    fn handle(&mut self, catch: CatchPanic, _: &mut Context<Self>) -> Self::Result {
        let caught = std::panic::catch_unwind(|| panic_on_purpose(&catch.message))
            .expect_err("the closure panics");
        Ok(caught.downcast_ref::<String>().cloned().unwrap_or_default())
    }
}

impl Handler<Spins> for CalcWorker {
    type Result = Result<u64, WorkerError>;
    fn handle(&mut self, _: Spins, _: &mut Context<Self>) -> Self::Result {
        Ok(self.spins.load(Ordering::Relaxed))
    }
}

impl Handler<Echo> for CalcWorker {
    type Result = Result<Vec<u8>, WorkerError>;
    fn handle(&mut self, echo: Echo, _: &mut Context<Self>) -> Self::Result {
        Ok(echo.data)
    }
}

impl Handler<WhoAmI> for CalcWorker {
    type Result = Result<u32, WorkerError>;
    fn handle(&mut self, _: WhoAmI, _: &mut Context<Self>) -> Self::Result {
        Ok(std::process::id())
    }
}

/// Says hello from a worker of another contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hail;

isolated_workers::contract! {
    /// A contract no test host expects: for handshake mismatches.
    pub Other {
        Hail => String,
    }
}

/// The worker serving [`Other`], started as worker `other`.
#[derive(Debug, Default)]
pub struct OtherWorker;

impl Actor for OtherWorker {
    type Context = Context<Self>;
}

impl Handler<Hail> for OtherWorker {
    type Result = Result<String, WorkerError>;
    fn handle(&mut self, _: Hail, _: &mut Context<Self>) -> Self::Result {
        Ok("hail".into())
    }
}

/// When set, names a FIFO that a spawned worker fills to the brim and then
/// makes its stderr: whatever the worker prints then blocks until the test
/// reads the FIFO.
pub const BLOCKED_STDERR_ENV: &str = "ISOLATED_WORKERS_TEST_BLOCKED_STDERR";

/// Makes the FIFO [`BLOCKED_STDERR_ENV`] names this worker's stderr, full,
/// if the test asked for it. (The test opened the FIFO for reading first.)
fn block_stderr() {
    use rustix::fs::{fcntl_setfl, OFlags};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(fifo) = std::env::var_os(BLOCKED_STDERR_ENV) else {
        return;
    };
    let mut pipe = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(OFlags::NONBLOCK.bits() as i32)
        .open(&fifo)
        .expect("the test's FIFO opens");
    // Whole pages, then single bytes, until not one more byte fits.
    for chunk in [&[b'.'; 4096][..], b"."] {
        while pipe.write(chunk).is_ok() {}
    }
    fcntl_setfl(&pipe, OFlags::empty()).expect("the FIFO blocks again");
    rustix::stdio::dup2_stderr(&pipe).expect("the FIFO becomes stderr");
}

/// When set, names a file a spawned worker makes its stderr (for a test
/// that reads what the worker printed, rather than let it reach the
/// terminal).
pub const STDERR_FILE_ENV: &str = "ISOLATED_WORKERS_TEST_STDERR_FILE";

/// Makes the file [`STDERR_FILE_ENV`] names this worker's stderr, if the
/// test asked for it.
fn stderr_to_file() {
    let Some(path) = std::env::var_os(STDERR_FILE_ENV) else {
        return;
    };
    let file = std::fs::File::create(path).expect("the test's stderr file opens");
    rustix::stdio::dup2_stderr(&file).expect("the file becomes stderr");
}

/// Set for a worker whose test wants it to print backtraces as
/// `RUST_BACKTRACE` says (see [`quiet_panics_on_purpose`]).
pub const KEEP_BACKTRACE_ENV: &str = "ISOLATED_WORKERS_TEST_KEEP_BACKTRACE";

thread_local! {
    /// Set by [`panic_on_purpose`] for the hook [`quiet_panics_on_purpose`]
    /// installs.
    static ON_PURPOSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Panics with `message` (at the caller's location, as `panic!` would), a
/// panic the test wants: [`quiet_panics_on_purpose`] keeps it off stderr.
#[track_caller]
pub fn panic_on_purpose(message: &str) -> ! {
    ON_PURPOSE.with(|on_purpose| on_purpose.set(true));
    panic!("{message}")
}

/// Keeps the panics tests cause on purpose ([`panic_on_purpose`]) off
/// stderr, so that a passing run prints none of them; every other panic is
/// printed as before. Installed before `worker_entry` (which keeps the hook
/// it finds, and calls it to print), in the host and in its workers.
///
/// With `RUST_BACKTRACE` set, a worker process prints its panics itself,
/// with their backtraces, not through this hook: so a worker drops the
/// variable it inherited (a panic it did not mean still prints its message
/// and place), unless its test set [`KEEP_BACKTRACE_ENV`] to see that.
pub fn quiet_panics_on_purpose() {
    let worker = std::env::var_os(isolated_workers::testing::CHANNEL_FD_ENV).is_some();
    if worker && std::env::var_os(KEEP_BACKTRACE_ENV).is_none() {
        // Before any other thread runs (first in `main`).
        std::env::remove_var("RUST_BACKTRACE");
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !ON_PURPOSE.with(|on_purpose| on_purpose.replace(false)) {
            previous(info);
        }
    }));
}

/// Call first in every test binary's `main`: in a spawned worker this
/// serves (or misbehaves, see [`rogue`]) and never returns.
pub fn enter_workers() {
    quiet_panics_on_purpose();
    if std::env::var_os(isolated_workers::testing::CHANNEL_FD_ENV).is_some() {
        block_stderr();
        stderr_to_file();
    }
    rogue::enter();
    isolated_workers::worker_entry::<Calc, _>("calc", CalcWorker::default);
    isolated_workers::worker_entry::<Calc, _>(
        CALC_WITH_STOP_HOOK,
        CalcWorker::with_stop_marker_from_env,
    );
    isolated_workers::worker_entry::<Other, _>("other", OtherWorker::default);
}

/// A test that runs `body` inside a fresh actix System, failing if it does
/// not finish within [`HANG_GUARD`].
pub fn actix_test<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + 'static,
{
    let name_owned = name.to_owned();
    Trial::test(name, move || {
        actix::System::new().block_on(async move {
            match tokio::time::timeout(HANG_GUARD, body()).await {
                Ok(result) => result,
                Err(_) => Err(format!("`{name_owned}` hung for {HANG_GUARD:?}").into()),
            }
        })
    })
}

/// Runs the trials with libtest's command-line interface.
pub fn run(trials: Vec<Trial>) -> ! {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials).exit()
}

/// Whether process `pid` still exists (a zombie counts as existing).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether process `pid` runs: it exists and is not a zombie (exited, not
/// yet reaped by its parent, which for an orphan is an init that may reap
/// late). Reads the state after the last `)` of `/proc/<pid>/stat`, since
/// the command name before it may hold anything.
pub fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Polls `condition` until it holds or `limit` passes. For conditions the
/// OS offers no event for (a pid disappearing once reaped).
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

/// Turns any error into a test failure with its message.
pub fn fail(e: impl std::fmt::Display) -> Failed {
    e.to_string().into()
}

/// Process `pid` as rustix names it; an error for a number no process has
/// (0, or too large: as a raw `i32` it would name a process group).
pub fn pid(pid: u32) -> std::io::Result<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("no process has pid {pid}")))
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: rustix::process::Signal) -> std::io::Result<()> {
    Ok(rustix::process::kill_process(self::pid(pid)?, signal)?)
}

/// Reaps process `pid` if it is this process's child and has exited,
/// without waiting (`waitpid(pid, WNOHANG)`).
pub fn reap_if_exited(pid: u32) {
    if let Ok(pid) = self::pid(pid) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
    }
}

/// A Calc worker: this test binary, re-run as worker `calc`.
pub fn calc() -> ChildProcess {
    ChildProcess::current_exe("calc")
}

/// Spawns a Calc worker with default options.
pub async fn spawn_calc() -> Result<Addr<Worker<Calc>>, Failed> {
    spawn_calc_with(WorkerOptions::default()).await
}

/// Spawns a Calc worker with `options`.
pub async fn spawn_calc_with(options: WorkerOptions) -> Result<Addr<Worker<Calc>>, Failed> {
    Worker::<Calc>::spawn_with(calc(), options)
        .await
        .map_err(fail)
}

/// Spawns a worker for contract `C` that is expected to fail to start.
pub async fn spawn_error<C: Contract>(
    driver: ChildProcess,
    options: WorkerOptions,
) -> Result<SpawnError, Failed> {
    match Worker::<C>::spawn_with(driver, options).await {
        Ok(_) => Err("the worker started, but it should not have".into()),
        Err(e) => Ok(e),
    }
}

/// Sends `message` and expects the worker's reply.
pub async fn ask<A, M, R, E>(worker: &Addr<A>, message: M) -> Result<R, Failed>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    outcome(worker.send(message)).await?.map_err(fail)
}

/// Sends `message` and expects an error instead of a reply.
pub async fn refused<A, M, R, E>(worker: &Addr<A>, message: M) -> Result<E, Failed>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, E>> + Send + 'static,
    R: std::fmt::Debug + Send + 'static,
    E: Send + 'static,
{
    expect_error(outcome(worker.send(message)).await?)
}

/// What a request resolved to, failing the test only if the proxy's
/// mailbox itself failed.
pub async fn outcome<A, M, R, E>(request: Request<A, M>) -> Result<Result<R, E>, Failed>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: Send + 'static,
{
    request
        .await
        .map_err(|e| format!("the proxy's mailbox failed: {e}").into())
}

/// The error of an outcome that should have been one.
pub fn expect_error<R: std::fmt::Debug, E>(outcome: Result<R, E>) -> Result<E, Failed> {
    match outcome {
        Ok(reply) => Err(format!("expected an error, got the reply {reply:?}").into()),
        Err(e) => Ok(e),
    }
}

/// Puts `message` in the proxy's mailbox now, behind everything enqueued
/// before it. (`Addr::send` defers a message until its request is polled
/// once that sender has filled the mailbox; a fresh sender never defers.)
pub fn enqueue<A, M>(worker: &Addr<A>, message: M) -> Request<A, M>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    worker.clone().send(message)
}

/// The worker's status.
pub async fn status<C: Contract>(worker: &Addr<Worker<C>>) -> Result<WorkerStatus, Failed> {
    worker.send(Status).await.map_err(fail)
}

/// The pid of a child-process worker, as its proxy reports it.
pub async fn pid_of<C: Contract>(worker: &Addr<Worker<C>>) -> Result<u32, Failed> {
    status(worker)
        .await?
        .pid
        .ok_or_else(|| "a child-process worker has a pid".into())
}

/// The prefix of a worker's attach directory in the temporary directory:
/// the worker's pid follows, then `-` and a random part.
pub const ATTACH_DIR_PREFIX: &str = "isolated-workers-";

/// The attach directories (`isolated-workers-<pid>-*`) of worker `pid` in
/// `tmp`. A worker makes one only when asked to wait for its host
/// (`Disconnect`, `Detach`), so this is empty for a worker that never was.
pub fn attach_dirs_in(tmp: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{ATTACH_DIR_PREFIX}{pid}-");
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    dirs
}

/// The attach directories of worker `pid` in this process's temporary
/// directory, which the workers it spawns share (see [`attach_dirs_in`]).
pub fn attach_dirs_of(pid: u32) -> Vec<PathBuf> {
    attach_dirs_in(&std::env::temp_dir(), pid)
}

/// Fails unless worker `pid` has nothing on disk: no attach directory.
pub fn assert_nothing_on_disk(pid: u32, when: &str) -> Result<(), Failed> {
    let dirs = attach_dirs_of(pid);
    if dirs.is_empty() {
        Ok(())
    } else {
        Err(format!("{when}, worker {pid} should have nothing on disk, but has {dirs:?}").into())
    }
}

/// A Calc worker whose temporary directory is `tmp`: a directory of its
/// own, where no other worker sweeps leftovers (the attach directories of
/// dead workers), so that a directory gone from it is one its worker or
/// host removed.
pub fn calc_in(tmp: &Path) -> ChildProcess {
    calc().env("TMPDIR", tmp)
}

/// The private directory a Calc worker made for its attach socket. It
/// exists only once the worker was asked to wait for its host
/// (`Disconnect`, `Detach`); fails before that.
pub async fn socket_dir(worker: &Addr<Worker<Calc>>) -> Result<PathBuf, Failed> {
    socket_dir_in(&std::env::temp_dir(), worker).await
}

/// [`socket_dir`] of a worker whose temporary directory is `tmp` (see
/// [`calc_in`]).
pub async fn socket_dir_in(tmp: &Path, worker: &Addr<Worker<Calc>>) -> Result<PathBuf, Failed> {
    let pid = pid_of(worker).await?;
    match &attach_dirs_in(tmp, pid)[..] {
        [dir] if dir.is_dir() => Ok(dir.clone()),
        [] => Err(format!(
            "worker {pid} has no attach directory: it makes one only when asked to wait for its host"
        )
        .into()),
        dirs => Err(format!("worker {pid} should have one attach directory, has {dirs:?}").into()),
    }
}

/// Closes the worker.
pub async fn close<C: Contract>(worker: &Addr<Worker<C>>) -> Result<(), Failed> {
    worker.send(Close).await.map_err(fail)
}

/// What [`run_alone`] found.
pub struct Alone {
    /// The run's private temporary directory: anything left in it is the
    /// run's.
    pub tmp: tempfile::TempDir,
    /// How long the run took.
    pub took: Duration,
}

/// Runs this test binary again, alone, with `mode_env` set and a private
/// `TMPDIR`: for counts (file descriptors, children, directories) that
/// tests running alongside would blur. Fails if the run fails.
pub async fn run_alone(mode_env: &str) -> Result<Alone, Failed> {
    let tmp = tempfile::tempdir().map_err(fail)?;
    let exe = std::env::current_exe().map_err(fail)?;
    let started = std::time::Instant::now();
    let ran = tokio::process::Command::new(exe)
        .env(mode_env, "1")
        .env("TMPDIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(fail)?;
    let took = started.elapsed();
    if !ran.status.success() {
        let stderr = String::from_utf8_lossy(&ran.stderr);
        return Err(format!(
            "the run alone failed ({}): {}",
            ran.status,
            stderr.trim_end()
        )
        .into());
    }
    Ok(Alone { tmp, took })
}

/// The other side of [`run_alone`]: runs `checks` in an actix System,
/// bounded by [`HANG_GUARD`], and exits 0 if they pass, or 1 saying why.
pub fn exit_after<F, Fut>(what: &str, checks: F) -> !
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let checked = actix::System::new().block_on(async {
        match tokio::time::timeout(HANG_GUARD, checks()).await {
            Ok(checked) => checked,
            Err(_) => Err(format!("{what} hung for {HANG_GUARD:?}").into()),
        }
    });
    if let Err(e) = checked {
        eprintln!("{}", e.message().unwrap_or("failed"));
        std::process::exit(1);
    }
    std::process::exit(0);
}
