//! What happens to a request whose worker crashes: with the default policy
//! (`Reject`) it fails after one try; with `Retry { attempts: 3 }` it is
//! tried 3 more times, each time on a fresh worker, and the final error
//! says it was attempt 4 (the first try plus 3 retries).
//!
//! Run: `cargo run --example shutdown_handling`

use std::path::PathBuf;

use actix::prelude::*;
use isolated_workers::{
    ChildProcess, Close, CrashPolicy, RemoteError, Status, Worker, WorkerError, WorkerOptions,
};
use serde::{Deserialize, Serialize};

/// Crashes the worker; each try is counted as a line in `tally`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Crash {
    tally: PathBuf,
}

isolated_workers::contract! {
    /// A worker that cannot survive its one message.
    Doomed {
        Crash => (),
    }
}

struct DoomedWorker;

impl Actor for DoomedWorker {
    type Context = Context<Self>;
}

impl Handler<Crash> for DoomedWorker {
    type Result = Result<(), WorkerError>;

    fn handle(&mut self, crash: Crash, _: &mut Context<Self>) -> Self::Result {
        use std::io::Write;
        let count_this_try = || -> std::io::Result<()> {
            let mut tally = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&crash.tally)?;
            writeln!(tally, "try in process {}", std::process::id())
        };
        count_this_try().map_err(|e| RemoteError::from_error(&e))?;
        // Aborting is as fatal as it gets: no unwinding, no report.
        std::process::abort();
    }
}

/// Sends one `Crash` under `policy`; returns the error and how many tries
/// the worker saw.
async fn crash_under(
    policy: CrashPolicy,
) -> Result<(WorkerError, usize), Box<dyn std::error::Error>> {
    let options = WorkerOptions::default().on_crash::<Crash>(policy);
    let worker =
        Worker::<Doomed, _>::spawn_with(ChildProcess::current_exe("doomed"), options).await?;
    let dir = tempfile::tempdir()?;
    let tally = dir.path().join("tries");
    let error = match worker
        .send(Crash {
            tally: tally.clone(),
        })
        .await?
    {
        Err(error) => error,
        Ok(()) => return Err("the worker survived".into()),
    };
    let tries = std::fs::read_to_string(&tally)?.lines().count();
    let restarts = worker.send(Status).await?.restarts;
    println!("{policy:?}: {tries} tries, {restarts} restarts, then: {error}");
    worker.send(Close).await?;
    Ok((error, tries))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Doomed, _>("doomed", || DoomedWorker);

    actix::System::new().block_on(async {
        let (error, tries) = crash_under(CrashPolicy::Reject).await?;
        if tries != 1 || !matches!(error, WorkerError::Crashed { attempt: 1, .. }) {
            return Err(format!("Reject: expected one try, got {tries}: {error:?}").into());
        }
        let (error, tries) = crash_under(CrashPolicy::Retry { attempts: 3 }).await?;
        if tries != 4 || !matches!(error, WorkerError::Crashed { attempt: 4, .. }) {
            return Err(format!("Retry: expected four tries, got {tries}: {error:?}").into());
        }
        Ok(())
    })
}
