//! What a request to a worker costs, and what starting one costs, each next
//! to the least that the same work can cost without this crate.
//!
//! Every group runs one workload on a floor and on our workers:
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
//! * `thread`: the same message to a `Worker<_, Thread<_>>` serving the same
//!   actor on its own arbiter: the proxy's mailbox and bookkeeping, then the
//!   message moved (not serialized) to the worker's thread and the reply
//!   moved back.
//!
//! The groups:
//!
//! * `roundtrip_16b`: one 16-byte request and its 16-byte reply at a time
//!   (latency). The thread worker has a floor of its own,
//!   `actix_cross_arbiter`: the same `Echo16` sent with a plain `Addr::send`,
//!   from the same thread, to the same `Echoer` actor started on another
//!   `Arbiter`. That is the one hop a thread worker cannot avoid (its actor
//!   lives on its own arbiter, and the reply must come back), with nothing
//!   of ours in the way, so everything above it is the proxy's overhead.
//! * `pipelined_64`: 64 16-byte requests in flight per iteration (throughput
//!   of small requests). The floor, `raw_uds_coalesced`, writes the 64
//!   messages in a single write and gets them back in a single write: the best
//!   any batching could do. `child_process` sends the 64 with 64 plain
//!   `Addr::send`s, all in flight at once; `child_process_batch` sends them as
//!   one `Batch` (one mailbox crossing; their frames go out in one write), and
//!   is the one to hold against `raw_uds_coalesced`. `actix_cross_arbiter` is
//!   the actix floor for many sends: 64 plain `Addr::send`s in flight to the
//!   same `Echoer` on another arbiter that `roundtrip_16b/actix_cross_arbiter`
//!   uses, nothing of ours in between; `child_process` is held against it,
//!   since it pays the same 64 mailbox crossings before any IPC. The thread
//!   worker is measured against the same floors, which for the raw one is a
//!   debatable comparison (it crosses no process boundary, but hands each
//!   request over on its own, not 64 in one write): read it as "how a thread
//!   worker compares to the best possible IPC".
//! * `roundtrip_1mib`: 1 MiB each way (copying and buffering). The floor's
//!   child reads the whole MiB before echoing it, as a worker must receive a
//!   whole request before handling it. `child_process` sends it as `Bytes`
//!   (encoded, written, read and decoded: the bytes are copied on each side
//!   by the serializer, beside the kernel's copies, target ≤ 1.5× the
//!   floor); `child_process_shared` as a `SharedBytes` made once, as a
//!   payload already in shared memory is: its memfd crosses as a descriptor
//!   each way and is mapped on arrival, the bytes are not copied at all
//!   (target ≤ 0.5× the floor, less than copying the MiB through the
//!   socket).
//! * `small_behind_large`: 100 16-byte requests sent at once to a child
//!   worker, timed until all are answered: `alone`, and
//!   `behind_two_1mib`, sent right after two 1 MiB requests (not timed,
//!   awaited after). A large frame must not hold the connection for its
//!   whole length (it goes in 64 KiB chunks that small frames pass), so the
//!   target is ≤ 2× `alone`: the floor here is our own small requests.
//! * `spawn_ready`: starting a worker, until its first request could be
//!   sent. The floor, `raw_spawn_self`, spawns this binary (the same
//!   executable our child worker runs, so the same exec, loading and
//!   start-up) with a marker in its environment; that child writes one byte
//!   to its stdout (a pipe) and exits, and the timing stops when the host has
//!   read the byte: the least any child process can do to say "I am up".
//!   `child_process` times `Worker::spawn(ChildProcess::current_exe(..))`
//!   until it resolves, that is until the worker has connected back and its
//!   Hello was checked; `thread` times `Worker::spawn(Thread::new(..))`
//!   until the actor has started on its new arbiter (measured against the
//!   same process floor, to show what a thread saves).
//!   `child_process_big_host` is `child_process` from a host that has
//!   touched 256 MiB of heap first: a host that forks to spawn pays for
//!   copying the page tables of all of it. Teardown is not
//!   timed, on either side: the floor's child is reaped, and each worker is
//!   sent `Close` (and waited for), outside the measurement.
//!
//! Besides the groups, every run prints one line,
//! `idle_rss/child_process: <n> kB VmRSS ...`: the resident set of an idle
//! child-process worker (release build), after one request and a short
//! pause, next to that of the floor's echo child (the same binary with no
//! runtime at all); see `report_idle_rss` for what it counts, and
//! `bench/examples/idle_rss.rs` for the same figure in a minimal binary.
//!
//! Results are compared across versions through
//! `target/criterion/<group>/<id>/new/estimates.json`: keep the ids stable.
//! `scripts/bench-summary` runs everything briefly and prints each median
//! against its floor.
//!
//! The small-message groups are dominated by wake-ups. Where waking another
//! CPU is slow (small VMs), a run is fast or slow depending on whether the
//! scheduler happens to put both processes (or threads) on one CPU; for
//! numbers that compare across runs, pin the whole run:
//! `taskset -c 0 cargo bench ...` (the children inherit the pinning).
//!
//! `cargo bench --bench roundtrip` takes about a minute and a half;
//! `cargo bench --bench roundtrip -- --test` runs every benchmark once.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, Throughput};
use futures::future::join_all;
use isolated_workers::{
    Batch, ChildProcess, Close, Driver, SharedBytes, Status, Thread, Worker, WorkerError,
};

#[path = "../common/echo.rs"]
mod echo;
use echo::{Echo16, EchoBytes, EchoContract, EchoShared, Echoer, ECHO16, SMALL, SMALL_MESSAGE};

/// The name this binary runs the benchmark worker under.
const WORKER: &str = "roundtrip-echo";
/// Set, to the socket path, in the floor's echo child.
const RAW_ECHO: &str = "ROUNDTRIP_RAW_ECHO";
/// Length of every message the floor's echo child echoes.
const RAW_ECHO_LEN: &str = "ROUNDTRIP_RAW_ECHO_LEN";
/// Set in the `spawn_ready` floor's child, which says it is up and exits.
const RAW_SPAWN: &str = "ROUNDTRIP_RAW_SPAWN";

const PIPELINE_DEPTH: usize = 64;
const MIB: usize = 1 << 20;
/// How long a worker idles before its resident set is read.
const IDLE: Duration = Duration::from_millis(500);

fn main() {
    // In the worker child this serves requests and never returns.
    isolated_workers::worker_entry::<EchoContract, _>(WORKER, || Echoer);
    // In the floors' children these do their part and exit.
    serve_raw_echo_if_asked();
    answer_raw_spawn_if_asked();

    let sys = System::new();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50)
        .configure_from_args();

    let workloads = [
        Workload {
            group: "roundtrip_16b",
            throughput: None,
            raw_id: "raw_uds",
            raw_len: SMALL,
            load: Load::Single,
            peers: &[Peer::ChildProcess, Peer::CrossArbiter, Peer::Thread],
        },
        Workload {
            group: "pipelined_64",
            throughput: Some(Throughput::Elements(PIPELINE_DEPTH as u64)),
            raw_id: "raw_uds_coalesced",
            raw_len: PIPELINE_DEPTH * SMALL,
            load: Load::Pipelined,
            peers: &[
                Peer::ChildProcess,
                Peer::ChildProcessBatch,
                Peer::CrossArbiter,
                Peer::Thread,
            ],
        },
        Workload {
            group: "roundtrip_1mib",
            throughput: Some(Throughput::Bytes(MIB as u64)),
            raw_id: "raw_uds",
            raw_len: MIB,
            // `Bytes` so that each request clones a reference, not the MiB.
            load: Load::Big(Bytes::from(vec![0xa5; MIB])),
            peers: &[Peer::ChildProcess, Peer::ChildProcessShared],
        },
    ];
    for workload in workloads {
        bench_workload(&mut c, &sys, workload);
    }
    bench_small_behind_large(&mut c, &sys);
    bench_spawn_ready(&mut c, &sys);
    report_idle_rss(&sys);

    c.final_summary();
}

/// One request/reply benchmark group: a workload measured on the floor and
/// on each of its peers.
struct Workload {
    group: &'static str,
    throughput: Option<Throughput>,
    /// The floor's benchmark id.
    raw_id: &'static str,
    /// Bytes the floor writes, and reads back, per iteration.
    raw_len: usize,
    /// What one iteration asks of an actix peer.
    load: Load,
    /// The actix peers measured after the floor, in this order.
    peers: &'static [Peer],
}

/// What one iteration asks of an echo actor.
enum Load {
    /// One `Echo16`.
    Single,
    /// `PIPELINE_DEPTH` `Echo16`s, all sent before any is awaited.
    Pipelined,

    /// One `EchoBytes` carrying these bytes.
    Big(Bytes),
    /// One `EchoShared` carrying this shared memory.
    Shared(SharedBytes),
}

impl Load {
    /// Sends this iteration's requests to `echoer`; resolves once all are
    /// answered, checking each answer.
    async fn request<A: EchoActor>(&self, echoer: &Addr<A>) {
        let echo16 = || echoer.send(ECHO16);
        match self {
            Load::Single => assert_eq!(succeeded(echo16().await).data, SMALL_MESSAGE),
            Load::Pipelined => {
                for reply in join_all((0..PIPELINE_DEPTH).map(|_| echo16())).await {
                    assert_eq!(succeeded(reply).data, SMALL_MESSAGE);
                }
            }
            Load::Big(data) => {
                let reply = echoer.send(EchoBytes { data: data.clone() });
                assert_eq!(succeeded(reply.await).len(), data.len());
            }
            Load::Shared(data) => {
                let reply = echoer.send(EchoShared { data: data.clone() });
                assert_eq!(succeeded(reply.await).len(), data.len());
            }
        }
    }
}

/// The actix peers a workload can be measured on.
#[derive(Debug, Clone, Copy)]
enum Peer {
    /// A `Worker<_, ChildProcess>`.
    ChildProcess,
    /// A `Worker<_, ChildProcess>`, the iteration's requests in one `Batch`.
    ChildProcessBatch,
    /// A `Worker<_, ChildProcess>`, sent the workload's bytes as one
    /// `SharedBytes` (made once) instead.
    ChildProcessShared,
    /// The plain `Echoer` on another arbiter: the thread worker's floor.
    CrossArbiter,
    /// A `Worker<_, Thread<Echoer>>`.
    Thread,
}

/// Benchmarks `workload`: the floor, then each of its peers. Each peer is
/// started on first use (so a filtered-out benchmark starts nothing) and
/// stopped when its benchmark is done.
fn bench_workload(c: &mut Criterion, sys: &SystemRunner, workload: Workload) {
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

    let load = &workload.load;
    for peer in workload.peers {
        match peer {
            Peer::ChildProcess => bench_peer(&mut group, sys, "child_process", load, || {
                spawn_worker(sys, ChildProcess::current_exe(WORKER))
            }),
            Peer::ChildProcessBatch => bench_batch(&mut group, sys, "child_process_batch"),
            Peer::ChildProcessShared => {
                let shared = Load::Shared(SharedBytes::from(vec![0xa5; workload.raw_len]));
                bench_peer(&mut group, sys, "child_process_shared", &shared, || {
                    spawn_worker(sys, ChildProcess::current_exe(WORKER))
                })
            }
            Peer::CrossArbiter => bench_peer(
                &mut group,
                sys,
                "actix_cross_arbiter",
                load,
                OtherArbiter::start,
            ),
            Peer::Thread => bench_peer(&mut group, sys, "thread", load, || {
                spawn_worker(sys, Thread::new(|| Echoer))
            }),
        }
    }
    group.finish();
}

/// Benchmarks `load` on the peer `start` makes (on first use), then stops
/// the peer.
fn bench_peer<P: EchoPeer>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    sys: &SystemRunner,
    id: &str,
    load: &Load,
    start: impl Fn() -> P,
) {
    let mut peer = None;
    group.bench_function(id, |b| {
        let echoer = peer.get_or_insert_with(&start).addr();
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    load.request(echoer).await;
                }
                start.elapsed()
            })
        });
    });
    if let Some(peer) = peer {
        peer.stop(sys);
    }
}

/// Benchmarks `PIPELINE_DEPTH` `Echo16`s sent to a child worker as one
/// `Batch` (what the `Pipelined` load sends one by one), then stops the
/// worker.
fn bench_batch(group: &mut BenchmarkGroup<'_, WallTime>, sys: &SystemRunner, id: &str) {
    let mut worker = None;
    group.bench_function(id, |b| {
        let worker =
            worker.get_or_insert_with(|| spawn_worker(sys, ChildProcess::current_exe(WORKER)));
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let batch = Batch::new(vec![ECHO16; PIPELINE_DEPTH]);
                    let replies = worker.send(batch).await.expect("the proxy is gone");
                    assert_eq!(replies.len(), PIPELINE_DEPTH);
                    for reply in replies {
                        assert_eq!(reply.expect("the worker failed").data, SMALL_MESSAGE);
                    }
                }
                start.elapsed()
            })
        });
    });
    if let Some(worker) = worker {
        worker.stop(sys);
    }
}

/// An actor that echoes both messages of the contract, through the same
/// `Addr::send` whether it is one of our workers or a plain actor.
trait EchoActor:
    Actor<Context = Context<Self>> + Handler<Echo16> + Handler<EchoBytes> + Handler<EchoShared>
{
}

impl<A> EchoActor for A where
    A: Actor<Context = Context<A>> + Handler<Echo16> + Handler<EchoBytes> + Handler<EchoShared>
{
}

/// A running echo peer: where to send, and how to stop it.
trait EchoPeer {
    type Actor: EchoActor;

    fn addr(&self) -> &Addr<Self::Actor>;

    /// Stops the peer and waits until it is gone.
    fn stop(self, sys: &SystemRunner);
}

impl<D: Driver<EchoContract>> EchoPeer for Addr<Worker<EchoContract, D>>
where
    Worker<EchoContract, D>: EchoActor,
{
    type Actor = Worker<EchoContract, D>;

    fn addr(&self) -> &Addr<Self::Actor> {
        self
    }

    fn stop(self, sys: &SystemRunner) {
        sys.block_on(self.send(Close)).expect("close the worker");
    }
}

/// The thread worker's floor: the plain worker actor on an arbiter of its
/// own, addressed with nothing of ours in between.
struct OtherArbiter {
    arbiter: Arbiter,
    echoer: Addr<Echoer>,
}

impl OtherArbiter {
    fn start() -> Self {
        let arbiter = Arbiter::new();
        let echoer = Echoer::start_in_arbiter(&arbiter.handle(), |_| Echoer);
        Self { arbiter, echoer }
    }
}

impl EchoPeer for OtherArbiter {
    type Actor = Echoer;

    fn addr(&self) -> &Addr<Echoer> {
        &self.echoer
    }

    fn stop(self, _: &SystemRunner) {
        self.arbiter.stop();
        self.arbiter.join().expect("join the echo arbiter");
    }
}

/// A benchmark worker on `driver`, started and ready.
fn spawn_worker<D: Driver<EchoContract>>(
    sys: &SystemRunner,
    driver: D,
) -> Addr<Worker<EchoContract, D>> {
    sys.block_on(Worker::spawn(driver))
        .expect("start the worker")
}

/// How many small requests `small_behind_large` sends at once.
const SMALL_BEHIND: usize = 100;

/// Benchmarks 100 small requests to a child worker alone, and sent right
/// after two 1 MiB requests (whose time is not counted).
fn bench_small_behind_large(c: &mut Criterion, sys: &SystemRunner) {
    let mut group = c.benchmark_group("small_behind_large");
    let big = Bytes::from(vec![0xa5; MIB]);
    let mut worker = None;
    for (id, bigs) in [("alone", 0), ("behind_two_1mib", 2)] {
        group.bench_function(id, |b| {
            let echoer = worker
                .get_or_insert_with(|| spawn_worker(sys, ChildProcess::current_exe(WORKER)))
                .clone();
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        // Sent (queued in the proxy's mailbox) at once.
                        let large: Vec<_> = (0..bigs)
                            .map(|_| echoer.send(EchoBytes { data: big.clone() }))
                            .collect();
                        let started = Instant::now();
                        let small = (0..SMALL_BEHIND).map(|_| {
                            echoer.send(Echo16 {
                                data: SMALL_MESSAGE,
                            })
                        });
                        let small = join_all(small).await;
                        timed += started.elapsed();
                        for reply in small {
                            assert_eq!(succeeded(reply).data, SMALL_MESSAGE);
                        }
                        for reply in join_all(large).await {
                            assert_eq!(succeeded(reply).len(), MIB);
                        }
                    }
                    timed
                })
            });
        });
    }
    group.finish();
    if let Some(worker) = worker {
        worker.stop(sys);
    }
}

/// Benchmarks starting the floor's child and each kind of worker, until it
/// is ready; stopping each is left out of the timing.
fn bench_spawn_ready(c: &mut Criterion, sys: &SystemRunner) {
    let mut group = c.benchmark_group("spawn_ready");
    group.bench_function("raw_spawn_self", |b| {
        time_until_ready(b, spawn_self_until_ready, |mut child| {
            let exited = child.wait().expect("reap the child");
            assert!(exited.success(), "the child failed: {exited}");
        });
    });
    group.bench_function("child_process", |b| {
        time_until_ready(
            b,
            || spawn_worker(sys, ChildProcess::current_exe(WORKER)),
            |worker| worker.stop(sys),
        );
    });
    group.bench_function("thread", |b| {
        time_until_ready(
            b,
            || spawn_worker(sys, Thread::new(|| Echoer)),
            |worker| worker.stop(sys),
        );
    });
    // Last, as the heap it touches stays with the host for the rest of the
    // run: a fork would have to copy the page tables of all of it.
    let heap = touched_heap(BIG_HOST_HEAP);
    group.bench_function("child_process_big_host", |b| {
        time_until_ready(
            b,
            || spawn_worker(sys, ChildProcess::current_exe(WORKER)),
            |worker| worker.stop(sys),
        );
    });
    group.finish();
    drop(heap);
}

/// How much heap `spawn_ready/child_process_big_host` touches first: the
/// size of a host with a warm cache.
const BIG_HOST_HEAP: usize = 256 << 20;

/// `bytes` of heap, every page written, so that each is mapped.
fn touched_heap(bytes: usize) -> Vec<u8> {
    let mut heap = vec![0u8; bytes];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(heap)
}

/// Times `iters` calls of `start`; each result is then handed to `stop`,
/// untimed.
fn time_until_ready<T>(b: &mut Bencher<'_>, start: impl Fn() -> T, stop: impl Fn(T)) {
    b.iter_custom(|iters| {
        let mut ready = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            let running = start();
            ready += started.elapsed();
            stop(running);
        }
        ready
    });
}

/// Spawns this binary as the `spawn_ready` floor's child and waits for its
/// byte. The child is left to be reaped.
fn spawn_self_until_ready() -> Child {
    let mut child = Command::new(std::env::current_exe().expect("find the current executable"))
        .env(RAW_SPAWN, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut byte = [0];
    child
        .stdout
        .take()
        .expect("the child's stdout")
        .read_exact(&mut byte)
        .expect("read the child's byte");
    child
}

/// In the `spawn_ready` floor's child: writes one byte to stdout and exits.
/// Returns at once in any other process.
fn answer_raw_spawn_if_asked() {
    if std::env::var_os(RAW_SPAWN).is_none() {
        return;
    }
    let mut stdout = std::io::stdout();
    stdout
        .write_all(b"!")
        .and_then(|()| stdout.flush())
        .expect("write to the host");
    std::process::exit(0);
}

/// Prints the resident set of an idle child-process worker (after one
/// request and [`IDLE`]), next to that of the floor's echo child: this
/// binary re-run with no runtime at all, blocked in a read.
///
/// `cargo bench` builds in release, so this is the release figure, in this
/// benchmark's binary. That binary has criterion linked in, and a worker's
/// resident set is mostly file-backed pages of its executable (code it ran,
/// mapped 64 KiB at a time by the kernel's fault-around; shared with the
/// host, which runs the same file): the bigger the executable, the more of
/// it the worker maps. The issue's figure ("idle child RSS, minimal release
/// binary") is that of a small binary: `cargo run --release --example
/// idle_rss`, which measures the same way. Compare either with its own
/// floor; `anon` (heap, stacks) is what the worker itself allocated.
fn report_idle_rss(sys: &SystemRunner) {
    let worker = spawn_worker(sys, ChildProcess::current_exe(WORKER));
    let worker_rss = sys.block_on(async {
        Load::Single.request(&worker).await;
        let status = worker.send(Status).await.expect("the proxy is gone");
        tokio::time::sleep(IDLE).await;
        Resident::of(status.pid.expect("a child-process worker has a pid"))
    });
    worker.stop(sys);

    let mut raw = RawEcho::spawn(SMALL);
    raw.round_trip(&SMALL_MESSAGE, &mut [0; SMALL]);
    std::thread::sleep(IDLE);
    let floor = Resident::of(raw.child.id());
    drop(raw);

    println!(
        "idle_rss/child_process: {worker_rss}, after one request and {IDLE:?} idle; \
         floor (the raw echo child of this binary): {floor}; above the floor: {} kB \
         ({} kB anon); release build of the bench binary (the minimal binary: \
         bench/examples/idle_rss)",
        worker_rss.vm_rss.saturating_sub(floor.vm_rss),
        worker_rss.anon.saturating_sub(floor.anon),
    );
}

/// What a process holds in memory, from `/proc/<pid>/status`, in kB as
/// `/proc` reports them (KiB).
#[derive(Debug, Clone, Copy)]
struct Resident {
    /// `VmRSS`: all its resident pages.
    vm_rss: u64,
    /// `RssAnon`: its heap and stacks.
    anon: u64,
    /// `RssFile`: pages of files it maps (its executable, libc).
    file: u64,
    /// `Threads`.
    threads: u64,
}

impl Resident {
    /// Reads process `pid`'s figures.
    fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        };
        Self {
            vm_rss: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
            threads: field("Threads:"),
        }
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kB VmRSS ({} kB anon, {} kB file, {} thread(s))",
            self.vm_rss, self.anon, self.file, self.threads
        )
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
