//! The same worker code served by two drivers: a thread (an actix arbiter
//! in this process, messages moved, not serialized) and a child process.
//! Switching is a change of the driver value alone.
//!
//! Run: `cargo run --example worker_threads`

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, Status, Thread, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Doubles `value`.
#[derive(Debug, Serialize, Deserialize)]
struct Compute {
    value: u64,
}

isolated_workers::contract! {
    /// One computation.
    Doubler {
        Compute => u64,
    }
}

#[derive(Default)]
struct DoublerWorker;

impl Actor for DoublerWorker {
    type Context = Context<Self>;
}

impl Handler<Compute> for DoublerWorker {
    type Result = Result<u64, WorkerError>;

    fn handle(&mut self, Compute { value }: Compute, _: &mut Context<Self>) -> Self::Result {
        Ok(value * 2)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Doubler, _>("doubler", DoublerWorker::default);

    actix::System::new().block_on(async {
        let on_thread = Worker::<Doubler, _>::spawn(Thread::new(DoublerWorker::default)).await?;
        let answer = on_thread.send(Compute { value: 42 }).await??;
        let status = on_thread.send(Status).await?;
        println!(
            "thread worker: 42 → {answer} (pid {:?}: same process)",
            status.pid
        );

        let in_child = Worker::<Doubler, _>::spawn(ChildProcess::current_exe("doubler")).await?;
        let same = in_child.send(Compute { value: 42 }).await??;
        let status = in_child.send(Status).await?;
        println!("child-process worker: 42 → {same} (pid {:?})", status.pid);

        on_thread.send(Close).await?;
        in_child.send(Close).await?;
        if answer != 84 || same != 84 {
            return Err(format!("expected 84 from both, got {answer} and {same}").into());
        }
        Ok(())
    })
}
