//! A long job in a worker reports its progress, 0 to 100 %, to the host
//! as events, then answers its result. The host prints each percentage as
//! it arrives and checks that none is missing or out of order, and that
//! the result is right.
//!
//! Run: `cargo run --example progress_events`

use actix::prelude::*;
use futures::StreamExt;
use isolated_workers::proxy::SubscribeStream;
use isolated_workers::worker::Events;
use isolated_workers::{ChildProcess, Close, RemoteError, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Sums the squares of `1..=n`, slowly.
#[derive(Debug, Serialize, Deserialize)]
struct SumOfSquares {
    n: u64,
}

/// What the worker reports while it works.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Progress {
    Percent(u8),
}

isolated_workers::contract! {
    /// A worker that runs long jobs and says how far along they are.
    Jobs (events = Progress) {
        SumOfSquares => u64,
    }
}

/// The worker: a plain actix actor.
struct Cruncher;

impl Actor for Cruncher {
    type Context = Context<Self>;
}

impl Handler<SumOfSquares> for Cruncher {
    type Result = ResponseFuture<Result<u64, WorkerError>>;

    fn handle(&mut self, job: SumOfSquares, _: &mut Context<Self>) -> Self::Result {
        // Taken on the worker's thread, then moved to the blocking one.
        let events = Events::<Jobs>::current();
        Box::pin(async move {
            let crunched = actix_rt::task::spawn_blocking(move || {
                let mut sum = 0u64;
                let mut reported = None;
                for i in 1..=job.n {
                    sum += i * i;
                    let percent = (i * 100 / job.n) as u8;
                    if reported != Some(percent) {
                        // Waits if the host falls behind: no percentage is lost.
                        let _ = events.blocking_emit(Progress::Percent(percent));
                        reported = Some(percent);
                    }
                    if i % 2_000 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                sum
            });
            crunched
                .await
                .map_err(|e| RemoteError::new("JobFailed", e.to_string()).into())
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In the worker child this serves requests and never returns.
    isolated_workers::worker_entry::<Jobs, _>("cruncher", || Cruncher);

    actix::System::new().block_on(async {
        let worker = Worker::<Jobs>::spawn(ChildProcess::current_exe("cruncher")).await?;
        let mut progress = worker.send(SubscribeStream::new()).await?;
        // Print each percentage as it arrives; the stream ends at Close.
        let printer = actix_rt::spawn(async move {
            let mut seen = Vec::new();
            while let Some(event) = progress.next().await {
                let Progress::Percent(percent) = event.event;
                println!("progress: {percent:3} %");
                if event.missed > 0 {
                    println!("(missed {} updates)", event.missed);
                }
                seen.push((percent, event.missed));
            }
            seen
        });
        let n = 200_000u64;
        let sum = worker.send(SumOfSquares { n }).await??;
        println!("result: {sum}");
        worker.send(Close).await?;
        let seen = printer.await?;

        let expected: Vec<(u8, u64)> = (0..=100).map(|p| (p, 0)).collect();
        if seen != expected {
            return Err(format!("progress missing or out of order: {seen:?}").into());
        }
        if sum != n * (n + 1) * (2 * n + 1) / 6 {
            return Err(format!("wrong result: {sum}").into());
        }
        println!("all 101 updates in order, result checked");
        Ok(())
    })
}
