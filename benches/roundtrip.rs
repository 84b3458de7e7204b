//! What a request to a child-process worker costs, next to the least that any
//! request/reply between two processes can cost.
//!
//! Every group runs one workload twice:
//!
//! * the floor (`raw_uds`, `raw_uds_coalesced`): this binary re-run as a child
//!   that echoes bytes over a blocking Unix socket. Per iteration the host
//!   writes its message with one `write_all` and reads the echo with
//!   `read_exact`; the child reads exactly the message length and writes it
//!   back with one `write_all`. No framing, no encoding, no async runtime, no
//!   copies beyond the kernel's: the same socket transfers and wake-ups any
//!   worker needs, and nothing more, so everything above it is our overhead.
//! * `child_process`: the same payload as a contract message to a
//!   `Worker<_, ChildProcess>` (this binary re-run through `worker_entry`),
//!   doing all its real work: the proxy's mailbox, request ids and
//!   bookkeeping, MessagePack encoding, framing, the worker's dispatch to a
//!   plain actix actor, and the reply's way back and decoding.
//!
//! The groups:
//!
//! * `roundtrip_16b`: one 16-byte request and its 16-byte reply at a time
//!   (latency).
//! * `pipelined_64`: 64 16-byte requests in flight per iteration (throughput
//!   of small requests). The floor, `raw_uds_coalesced`, writes the 64
//!   messages in a single write and gets them back in a single write: the best
//!   any batching could do.
//! * `roundtrip_1mib`: 1 MiB each way (copying and buffering). The floor's
//!   child reads the whole MiB before echoing it, as a worker must receive a
//!   whole request before handling it.
//!
//! Results are compared across versions through
//! `target/criterion/<group>/<id>/new/estimates.json`: keep the ids stable.
//!
//! The small-message groups are dominated by wake-ups. Where waking another
//! CPU is slow (small VMs), a run is fast or slow depending on whether the
//! scheduler happens to put both processes on one CPU; for numbers that
//! compare across runs, pin the whole run: `taskset -c 0 cargo bench ...`
//! (the children inherit the pinning).
//!
//! `cargo bench --bench roundtrip` takes about a minute;
//! `cargo bench --bench roundtrip -- --test` runs every benchmark once.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures::future::join_all;
use isolated_workers::{ChildProcess, Close, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// The name this binary runs the benchmark worker under.
const WORKER: &str = "roundtrip-echo";
/// Set, to the socket path, in the floor's echo child.
const RAW_ECHO: &str = "ROUNDTRIP_RAW_ECHO";
/// Length of every message the floor's echo child echoes.
const RAW_ECHO_LEN: &str = "ROUNDTRIP_RAW_ECHO_LEN";

const SMALL: usize = 16;
const PIPELINE_DEPTH: usize = 64;
const MIB: usize = 1 << 20;
const SMALL_MESSAGE: [u8; SMALL] = *b"sixteen byte msg";

/// A small request, echoed back as its own reply.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Echo16 {
    #[serde(with = "serde_bytes")]
    data: [u8; SMALL],
}

/// A byte payload of any size, echoed back as the reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EchoBytes {
    data: Bytes,
}

isolated_workers::contract! {
    /// What the benchmark worker serves.
    EchoContract {
        Echo16 => Echo16,
        EchoBytes => Bytes,
    }
}

/// The worker actor: answers every request with what it got.
struct Echoer;

impl Actor for Echoer {
    type Context = Context<Self>;
}

impl Handler<Echo16> for Echoer {
    type Result = Result<Echo16, WorkerError>;

    fn handle(&mut self, echo: Echo16, _: &mut Context<Self>) -> Self::Result {
        Ok(echo)
    }
}

impl Handler<EchoBytes> for Echoer {
    type Result = Result<Bytes, WorkerError>;

    fn handle(&mut self, echo: EchoBytes, _: &mut Context<Self>) -> Self::Result {
        Ok(echo.data)
    }
}

type Proxy = Addr<Worker<EchoContract, ChildProcess>>;

fn main() {
    // In the worker child this serves requests and never returns.
    isolated_workers::worker_entry::<EchoContract, _>(WORKER, || Echoer);
    serve_raw_echo_if_asked();

    let sys = System::new();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50)
        .configure_from_args();

    let small = Workload {
        group: "roundtrip_16b",
        throughput: None,
        raw_id: "raw_uds",
        raw_len: SMALL,
    };
    bench_workload(&mut c, &sys, small, |worker| {
        let reply = worker.send(Echo16 {
            data: SMALL_MESSAGE,
        });
        async move { assert_eq!(succeeded(reply.await).data, SMALL_MESSAGE) }
    });

    let pipelined = Workload {
        group: "pipelined_64",
        throughput: Some(Throughput::Elements(PIPELINE_DEPTH as u64)),
        raw_id: "raw_uds_coalesced",
        raw_len: PIPELINE_DEPTH * SMALL,
    };
    bench_workload(&mut c, &sys, pipelined, |worker| {
        let replies = join_all((0..PIPELINE_DEPTH).map(|_| {
            worker.send(Echo16 {
                data: SMALL_MESSAGE,
            })
        }));
        async move {
            for reply in replies.await {
                assert_eq!(succeeded(reply).data, SMALL_MESSAGE);
            }
        }
    });

    // `Bytes` so that each request clones a reference, not the MiB.
    let big_message = Bytes::from(vec![0xa5; MIB]);
    let big = Workload {
        group: "roundtrip_1mib",
        throughput: Some(Throughput::Bytes(MIB as u64)),
        raw_id: "raw_uds",
        raw_len: MIB,
    };
    bench_workload(&mut c, &sys, big, |worker| {
        let reply = worker.send(EchoBytes {
            data: big_message.clone(),
        });
        async move { assert_eq!(succeeded(reply.await).len(), MIB) }
    });

    c.final_summary();
}

/// One benchmark group: a workload measured on the floor and on ours.
struct Workload {
    group: &'static str,
    throughput: Option<Throughput>,
    /// The floor's benchmark id.
    raw_id: &'static str,
    /// Bytes the floor writes, and reads back, per iteration.
    raw_len: usize,
}

/// Benchmarks `workload`: the floor, then `request` (one iteration's
/// requests, resolving once all are answered) through a child-process
/// worker. Each peer is started on first use (so a filtered-out benchmark
/// starts nothing) and stopped when its benchmark is done.
fn bench_workload<F>(
    c: &mut Criterion,
    sys: &SystemRunner,
    workload: Workload,
    request: impl Fn(&Proxy) -> F,
) where
    F: Future<Output = ()>,
{
    let mut group = c.benchmark_group(workload.group);
    if let Some(throughput) = workload.throughput {
        group.throughput(throughput);
    }

    let message = vec![0xa5; workload.raw_len];
    let mut echoed = vec![0; workload.raw_len];
    let mut raw = None;
    group.bench_function(workload.raw_id, |b| {
        let raw = raw.get_or_insert_with(|| RawEcho::spawn(workload.raw_len));
        b.iter(|| raw.round_trip(&message, &mut echoed));
    });
    drop(raw);

    let mut worker = None;
    group.bench_function("child_process", |b| {
        let worker = worker.get_or_insert_with(|| {
            sys.block_on(Worker::spawn(ChildProcess::current_exe(WORKER)))
                .expect("start the worker")
        });
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    request(worker).await;
                }
                start.elapsed()
            })
        });
    });
    group.finish();
    if let Some(worker) = worker {
        sys.block_on(worker.send(Close)).expect("close the worker");
    }
}

/// The reply to a request that must succeed.
fn succeeded<T>(sent: Result<Result<T, WorkerError>, MailboxError>) -> T {
    sent.expect("the proxy is gone").expect("the worker failed")
}

/// The floor's peer: this binary re-run as a blocking echo of fixed-size
/// messages over a Unix socket in a private temporary directory. Dropping
/// it kills and reaps the child and removes the directory.
struct RawEcho {
    child: Child,
    stream: UnixStream,
    _dir: tempfile::TempDir,
}

impl RawEcho {
    fn spawn(message_len: usize) -> Self {
        let dir = tempfile::tempdir().expect("create the socket directory");
        let path = dir.path().join("echo.sock");
        let listener = UnixListener::bind(&path).expect("listen on the socket");
        let child = Command::new(std::env::current_exe().expect("find the current executable"))
            .env(RAW_ECHO, &path)
            .env(RAW_ECHO_LEN, message_len.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the echo child");
        let (stream, _) = listener.accept().expect("accept the echo child");
        Self {
            child,
            stream,
            _dir: dir,
        }
    }

    /// Writes `message` in one write and reads its echo into `echoed`.
    fn round_trip(&mut self, message: &[u8], echoed: &mut [u8]) {
        self.stream
            .write_all(message)
            .expect("write to the echo child");
        self.stream
            .read_exact(echoed)
            .expect("read from the echo child");
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In the floor's echo child (started by [`RawEcho`]): echoes messages of
/// the given length, each read whole and written back in one write, until
/// the host hangs up; then exits. Returns at once in any other process.
fn serve_raw_echo_if_asked() {
    let Some(path) = std::env::var_os(RAW_ECHO) else {
        return;
    };
    let message_len = std::env::var(RAW_ECHO_LEN)
        .ok()
        .and_then(|len| len.parse().ok())
        .expect("the message length");
    let mut stream = UnixStream::connect(path).expect("connect to the host");
    let mut message = vec![0; message_len];
    while stream.read_exact(&mut message).is_ok() {
        stream.write_all(&message).expect("echo to the host");
    }
    std::process::exit(0);
}
