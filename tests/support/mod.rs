//! Shared by the integration tests: a contract with a worker that can be
//! made to answer, fail, stall, panic or count; the entry that turns the
//! test binary into that worker when a test spawns it; and a harness that
//! runs each test in its own actix System under a hang guard.
//!
//! Test binaries use `harness = false` (libtest-mimic) so that `main` can
//! hand over to the worker first, exactly as a user's binary does.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use isolated_workers::{RemoteError, WorkerError};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};

/// Longest any single test may take before it counts as hung.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub text: String,
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
    }
}

/// The worker actor the tests spawn.
#[derive(Debug, Default)]
pub struct CalcWorker {
    counter: u64,
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

/// Call first in every test binary's `main`: in a spawned worker this
/// serves and never returns.
pub fn enter_workers() {
    isolated_workers::worker_entry::<Calc, _>("calc", CalcWorker::default);
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
