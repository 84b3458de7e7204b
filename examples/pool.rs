//! CPU-bound jobs over a `WorkerPool` of child processes: counting primes
//! by trial division, range by range, with pools of 1, 2 and N workers
//! (N = the machine's available parallelism). Prints the throughput of
//! each, checks every answer against a sieve computed here, and exits
//! non-zero if a job is lost or wrong.
//!
//! Run: `cargo run --example pool` (with `--release` the jobs are
//! larger, so that they still take a while)

use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use isolated_workers::{ChildProcess, Close, PoolOptions, WorkerError, WorkerPool};
use serde::{Deserialize, Serialize};

/// Counts the primes in `from..to`.
#[derive(Debug, Serialize, Deserialize)]
struct CountPrimes {
    from: u64,
    to: u64,
}

isolated_workers::contract! {
    /// One kind of job.
    Primes {
        CountPrimes => u64,
    }
}

/// The worker: counts by trial division, on purpose the slow way.
struct PrimeCounter;

impl Actor for PrimeCounter {
    type Context = Context<Self>;
}

impl Handler<CountPrimes> for PrimeCounter {
    type Result = Result<u64, WorkerError>;

    fn handle(&mut self, job: CountPrimes, _: &mut Context<Self>) -> Self::Result {
        Ok((job.from..job.to).filter(|&n| is_prime(n)).count() as u64)
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The jobs: `JOBS` ranges of `SPAN` numbers each, from 0.
const JOBS: u64 = 48;
const SPAN: u64 = if cfg!(debug_assertions) {
    100_000
} else {
    400_000
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Primes, _>("primes", || PrimeCounter);

    let limit = JOBS * SPAN;
    let expected = expected_counts(limit);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut sizes = vec![1, 2, cores];
    sizes.sort_unstable();
    sizes.dedup();
    println!(
        "counting the primes below {limit} in {JOBS} jobs of {SPAN} numbers, by trial division; {cores} cores"
    );

    actix::System::new().block_on(async move {
        let mut one = None;
        for size in sizes {
            let took = run(size, &expected).await?;
            let rate = JOBS as f64 / took.as_secs_f64();
            let speedup = one
                .map(|one: f64| format!(" ({:.1}× one worker)", rate / one))
                .unwrap_or_default();
            one.get_or_insert(rate);
            let n = if size == cores { " (N)" } else { "" };
            println!(
                "{size} worker{}{n}: {JOBS} jobs in {:.2} s → {rate:.1} jobs/s{speedup}",
                if size == 1 { "" } else { "s" },
                took.as_secs_f64()
            );
        }
        let total: u64 = expected.iter().sum();
        println!("every run: all {JOBS} answers arrived and are right ({total} primes)");
        Ok(())
    })
}

/// Runs every job over a pool of `size` workers; answers how long the jobs
/// took, once each answer has arrived and matches `expected`.
async fn run(size: usize, expected: &[u64]) -> Result<Duration, Box<dyn std::error::Error>> {
    let options = PoolOptions::default().members(size);
    let pool =
        WorkerPool::<Primes, _>::spawn_with(ChildProcess::current_exe("primes"), options).await?;
    let started = Instant::now();
    let jobs = (0..JOBS).map(|i| {
        pool.send(CountPrimes {
            from: i * SPAN,
            to: (i + 1) * SPAN,
        })
    });
    let answers = join_all(jobs).await;
    let took = started.elapsed();
    pool.send(Close).await?;
    for (i, (answer, expected)) in answers.into_iter().zip(expected).enumerate() {
        match answer? {
            Ok(count) if count == *expected => {}
            Ok(count) => return Err(format!("job {i}: {count} primes, expected {expected}").into()),
            Err(error) => return Err(format!("job {i} was lost: {error}").into()),
        }
    }
    Ok(took)
}

/// The prime count of each job's range, by a sieve.
fn expected_counts(limit: u64) -> Vec<u64> {
    let mut composite = vec![false; limit as usize];
    let mut n = 2;
    while n * n < limit {
        if !composite[n as usize] {
            let mut multiple = n * n;
            while multiple < limit {
                composite[multiple as usize] = true;
                multiple += n;
            }
        }
        n += 1;
    }
    (0..JOBS)
        .map(|i| {
            (i * SPAN..(i + 1) * SPAN)
                .filter(|&n| n >= 2 && !composite[n as usize])
                .count() as u64
        })
        .collect()
}
