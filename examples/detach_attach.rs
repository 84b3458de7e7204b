//! A worker that outlives its host: the first host counts to 3, detaches
//! the worker, prints the handle as JSON and exits; a second host process
//! reads the handle, attaches, counts on to 4 and closes the worker.
//!
//! Run: `cargo run --example detach_attach` (drives both hosts itself, by
//! running this binary again as `first` and as `second <handle>`).

use std::process::{Command, Stdio};

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, Detach, DetachedWorker, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Adds one to the worker's counter and answers the new value.
#[derive(Debug, Serialize, Deserialize)]
struct Increment;

isolated_workers::contract! {
    /// A counter that lives in the worker.
    Counter {
        Increment => u64,
    }
}

/// The worker: its state is the count.
#[derive(Default)]
struct CounterWorker {
    count: u64,
}

impl Actor for CounterWorker {
    type Context = Context<Self>;
}

impl Handler<Increment> for CounterWorker {
    type Result = Result<u64, WorkerError>;

    fn handle(&mut self, _: Increment, _: &mut Context<Self>) -> Self::Result {
        self.count += 1;
        Ok(self.count)
    }
}

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    isolated_workers::worker_entry::<Counter, _>("counter", CounterWorker::default);

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("first") => actix::System::new().block_on(first_host()),
        Some("second") => {
            let handle = args.get(1).ok_or("`second` needs the handle")?;
            actix::System::new().block_on(second_host(serde_json::from_str(handle)?))
        }
        _ => drive_both(),
    }
}

/// Spawns the worker, counts to 3, detaches it and prints its handle.
async fn first_host() -> Result<(), Error> {
    let worker = Worker::<Counter>::spawn(ChildProcess::current_exe("counter")).await?;
    let mut count = 0;
    for _ in 0..3 {
        count = worker.send(Increment).await??;
    }
    eprintln!(
        "first host (pid {}): counted to {count}",
        std::process::id()
    );
    let handle = worker.send(Detach::default()).await??;
    eprintln!("first host: detached worker {}; exiting", handle.pid());
    // The handle is a secret (it holds the worker's token): printed here
    // only because this example hands it to its own next run.
    println!("{}", serde_json::to_string(&handle)?);
    if count != 3 {
        return Err(format!("counted to {count}, expected 3").into());
    }
    Ok(())
}

/// Attaches to the detached worker, counts once more, and closes it.
async fn second_host(handle: DetachedWorker) -> Result<(), Error> {
    let worker = Worker::<Counter>::attach(&handle).await?;
    let count = worker.send(Increment).await??;
    eprintln!(
        "second host (pid {}): attached to worker {}, counted to {count}",
        std::process::id(),
        handle.pid()
    );
    worker.send(Close).await?;
    eprintln!("second host: closed the worker");
    if count != 4 {
        return Err(format!("counted to {count}, expected 4: the state was lost").into());
    }
    if running(handle.pid()) {
        return Err("the worker still runs after Close".into());
    }
    if handle.socket().exists() {
        return Err("the worker's socket is still there after Close".into());
    }
    Ok(())
}

/// Runs this binary as the first host, then as the second.
fn drive_both() -> Result<(), Error> {
    let me = std::env::current_exe()?;
    let first = Command::new(&me)
        .arg("first")
        .stderr(Stdio::inherit())
        .output()?;
    if !first.status.success() {
        return Err(format!("the first host failed: {}", first.status).into());
    }
    let handle = String::from_utf8(first.stdout)?;
    let handle = handle.trim();
    let parsed: DetachedWorker = serde_json::from_str(handle)?;
    println!("handle from the first host: {parsed:?}");
    if !running(parsed.pid()) {
        return Err("the detached worker died with its first host".into());
    }
    let second = Command::new(&me).args(["second", handle]).status()?;
    if !second.success() {
        return Err(format!("the second host failed: {second}").into());
    }
    println!("the worker outlived its first host, kept its count, and was closed by the second");
    Ok(())
}

/// Whether process `pid` runs (Linux: a zombie, exited but not yet reaped
/// by whoever adopted it, does not count).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}
