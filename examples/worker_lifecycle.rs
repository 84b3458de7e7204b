//! A worker keeps its state across messages; `Status` reports on it; after
//! `Close` the worker process is gone and every send gives `Closed`.
//!
//! Run: `cargo run --example worker_lifecycle`

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, Status, Worker, WorkerError, WorkerState};
use serde::{Deserialize, Serialize};

/// Adds `by` to the worker's counter and answers the new total.
#[derive(Debug, Serialize, Deserialize)]
struct Increment {
    by: u64,
}

isolated_workers::contract! {
    /// A counter that lives in the worker.
    Counter {
        Increment => u64,
    }
}

#[derive(Default)]
struct CounterWorker {
    total: u64,
}

impl Actor for CounterWorker {
    type Context = Context<Self>;
}

impl Handler<Increment> for CounterWorker {
    type Result = Result<u64, WorkerError>;

    fn handle(&mut self, Increment { by }: Increment, _: &mut Context<Self>) -> Self::Result {
        self.total += by;
        Ok(self.total)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Counter, _>("counter", CounterWorker::default);

    actix::System::new().block_on(async {
        let spawned = ChildProcess::current_exe("counter");
        let worker = Worker::<Counter, ChildProcess>::spawn(spawned).await?;

        let mut total = 0;
        for by in [1, 2, 3] {
            total = worker.send(Increment { by }).await??;
            println!("increment by {by}: total {total}");
        }
        if total != 6 {
            return Err(format!("the worker lost its state: total {total}").into());
        }

        let status = worker.send(Status).await?;
        println!("status: {status:?}");
        if status.state != WorkerState::Running || status.pid.is_none() {
            return Err("the worker should be running".into());
        }

        worker.send(Close).await?;
        println!("status after close: {:?}", worker.send(Status).await?.state);

        match worker.send(Increment { by: 1 }).await? {
            Err(WorkerError::Closed) => println!("send after close: {}", WorkerError::Closed),
            other => return Err(format!("expected Closed, got {other:?}").into()),
        }
        Ok(())
    })
}
