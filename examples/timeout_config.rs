//! Request timeouts: one default for every message, and a message type with
//! a timeout of its own. A request that takes too long resolves
//! `WorkerError::Timeout { after, message, .. }`, while the worker goes on
//! answering others.
//!
//! Run: `cargo run --example timeout_config`

use std::time::{Duration, Instant};

use actix::prelude::*;
use isolated_workers::worker::Cancellable;
use isolated_workers::{ChildProcess, Close, Worker, WorkerError, WorkerOptions};
use serde::{Deserialize, Serialize};

/// Answers `n * 2` at once.
#[derive(Debug, Serialize, Deserialize)]
struct Fast {
    n: u64,
}

/// Works for `ms` milliseconds, then answers `ms`.
#[derive(Debug, Serialize, Deserialize)]
struct Slow {
    ms: u64,
}

isolated_workers::contract! {
    /// A quick lookup and a long job.
    Jobs {
        Fast => u64,
        Slow => u64,
    }
}

struct JobWorker;

impl Actor for JobWorker {
    type Context = Context<Self>;
}

impl Handler<Fast> for JobWorker {
    type Result = Result<u64, WorkerError>;

    fn handle(&mut self, Fast { n }: Fast, _: &mut Context<Self>) -> Self::Result {
        Ok(n * 2)
    }
}

impl Handler<Slow> for JobWorker {
    // `Cancellable`: when the host gives up on the request (its timeout
    // passes), the worker is told to cancel it and drops this future, so the
    // work stops at its next `.await` instead of running on for nobody.
    type Result = Cancellable<Result<u64, WorkerError>>;

    fn handle(&mut self, Slow { ms }: Slow, _: &mut Context<Self>) -> Self::Result {
        Cancellable::new(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
    }
}

/// Every message's timeout unless it has its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);
/// `Slow`'s own timeout.
const SLOW_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Jobs, _>("jobs", || JobWorker);

    actix::System::new().block_on(async {
        let options = WorkerOptions::default()
            .request_timeout(DEFAULT_TIMEOUT)
            .timeout_for::<Slow>(SLOW_TIMEOUT);
        println!("timeouts: {DEFAULT_TIMEOUT:?} by default, {SLOW_TIMEOUT:?} for `Slow`");
        let worker =
            Worker::<Jobs, ChildProcess>::spawn_with(ChildProcess::current_exe("jobs"), options)
                .await?;

        let doubled = worker.send(Fast { n: 21 }).await??;
        println!("Fast {{ n: 21 }} -> {doubled}");
        if doubled != 42 {
            return Err("wrong answer to Fast".into());
        }

        // Longer than the default timeout, within Slow's own.
        let started = Instant::now();
        let slept = worker.send(Slow { ms: 600 }).await??;
        println!(
            "Slow {{ ms: 600 }} -> {slept} after {:?}: longer than the default timeout, within its own",
            started.elapsed()
        );

        // Longer than Slow's own timeout: it times out, and meanwhile the
        // worker still answers a Fast request at once.
        let started = Instant::now();
        let too_slow = worker.send(Slow { ms: 60_000 });
        let doubled = worker.send(Fast { n: 50 }).await??;
        println!(
            "Fast {{ n: 50 }} -> {doubled} after {:?}, while a Slow request runs",
            started.elapsed()
        );
        if doubled != 100 {
            return Err("wrong answer to Fast".into());
        }
        match too_slow.await? {
            Err(WorkerError::Timeout { after, message, .. }) => {
                println!(
                    "Slow {{ ms: 60000 }} -> timed out: `{message}` after {after:?} (waited {:?})",
                    started.elapsed()
                );
                if after != SLOW_TIMEOUT || message != "Slow" {
                    return Err(format!("expected `Slow` to time out after {SLOW_TIMEOUT:?}").into());
                }
            }
            other => return Err(format!("expected a timeout, got {other:?}").into()),
        }

        // The worker serves on after a timeout.
        let doubled = worker.send(Fast { n: 1 }).await??;
        println!("Fast {{ n: 1 }} -> {doubled}: the worker serves on");
        worker.send(Close).await?;
        Ok(())
    })
}
