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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use actix::dev::{Request, ToEnvelope};
use actix::prelude::*;
use isolated_workers::testing::SOCKET_ENV;
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

/// Answers with the path of the socket the worker was told to connect to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketPath;

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
        SocketPath => String,
        Spin => (),
        Spins => u64,
    }
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
}

impl Actor for CalcWorker {
    type Context = Context<Self>;
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
        panic!("{}", explode.message);
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

impl Handler<SocketPath> for CalcWorker {
    type Result = Result<String, WorkerError>;
    fn handle(&mut self, _: SocketPath, _: &mut Context<Self>) -> Self::Result {
        Ok(SOCKET_PATH.get().cloned().unwrap_or_default())
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

/// The socket path this worker process was given, captured before
/// `worker_entry` removes it from the environment.
static SOCKET_PATH: OnceLock<String> = OnceLock::new();

/// Call first in every test binary's `main`: in a spawned worker this
/// serves (or misbehaves, see [`rogue`]) and never returns.
pub fn enter_workers() {
    if let Ok(socket) = std::env::var(SOCKET_ENV) {
        let _ = SOCKET_PATH.set(socket);
    }
    rogue::enter();
    isolated_workers::worker_entry::<Calc, _>("calc", CalcWorker::default);
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
pub async fn ask<A, M, R>(worker: &Addr<A>, message: M) -> Result<R, Failed>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, WorkerError>> + Send + 'static,
    R: Send + 'static,
{
    outcome(worker.send(message)).await?.map_err(fail)
}

/// Sends `message` and expects an error instead of a reply.
pub async fn refused<A, M, R>(worker: &Addr<A>, message: M) -> Result<WorkerError, Failed>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, WorkerError>> + Send + 'static,
    R: std::fmt::Debug + Send + 'static,
{
    expect_error(outcome(worker.send(message)).await?)
}

/// What a request resolved to, failing the test only if the proxy's
/// mailbox itself failed.
pub async fn outcome<A, M, R>(request: Request<A, M>) -> Result<Result<R, WorkerError>, Failed>
where
    A: Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = Result<R, WorkerError>> + Send + 'static,
    R: Send + 'static,
{
    request
        .await
        .map_err(|e| format!("the proxy's mailbox failed: {e}").into())
}

/// The error of an outcome that should have been one.
pub fn expect_error<R: std::fmt::Debug>(
    outcome: Result<R, WorkerError>,
) -> Result<WorkerError, Failed> {
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

/// The private directory holding a Calc worker's socket.
pub async fn socket_dir(worker: &Addr<Worker<Calc>>) -> Result<PathBuf, Failed> {
    let socket = PathBuf::from(ask(worker, SocketPath).await?);
    let dir = socket.parent().ok_or("the socket path has a parent")?;
    if !dir.is_dir() {
        return Err(format!("socket directory {dir:?} should exist while the worker runs").into());
    }
    Ok(dir.to_owned())
}

/// Closes the worker.
pub async fn close<C: Contract>(worker: &Addr<Worker<C>>) -> Result<(), Failed> {
    worker.send(Close).await.map_err(fail)
}
