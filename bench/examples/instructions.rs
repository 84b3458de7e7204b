//! The workload `scripts/instructions` counts with callgrind: N sequential
//! 16-byte round trips, N requests 64 in flight at a time, or N requests in
//! batches of 64 (`Batch`, our workers only), to a child worker, to a thread
//! worker, or as plain actix sends to an actor on another arbiter (the
//! floor). Run by hand it only does the work:
//!
//! ```text
//! cargo run --release -p isolated-workers-bench --example instructions -- child sequential 1000
//! ```
//!
//! Arguments: `child | thread | actix`, `sequential | pipelined | batched`, N.

use actix::prelude::*;
use isolated_workers::{Batch, ChildProcess, Close, Driver, Thread, Worker};

#[path = "../common/echo.rs"]
mod echo;
use echo::{Echo16, EchoContract, Echoer, ECHO16};

/// How many requests are in flight at once when pipelined.
const IN_FLIGHT: usize = 64;

/// Sends `n` requests to `echo` with a plain `Addr::send`, one at a time or
/// `IN_FLIGHT` at a time.
async fn drive<A>(echo: &Addr<A>, n: usize, pipelined: bool)
where
    A: Actor + Handler<Echo16>,
    A::Context: actix::dev::ToEnvelope<A, Echo16>,
{
    let send = || {
        let reply = echo.send(ECHO16);
        async move {
            reply.await.expect("delivered").expect("answered");
        }
    };
    if pipelined {
        let mut left = n;
        while left > 0 {
            let batch = left.min(IN_FLIGHT);
            futures::future::join_all((0..batch).map(|_| send())).await;
            left -= batch;
        }
    } else {
        for _ in 0..n {
            send().await;
        }
    }
}

/// Sends `n` requests to `worker` in batches of `IN_FLIGHT`.
async fn drive_batched<D: Driver<EchoContract>>(worker: &Addr<Worker<EchoContract, D>>, n: usize) {
    let mut left = n;
    while left > 0 {
        let batch = left.min(IN_FLIGHT);
        let replies = worker.send(Batch::new(vec![ECHO16; batch])).await;
        for reply in replies.expect("delivered") {
            reply.expect("answered");
        }
        left -= batch;
    }
}

/// Sends `n` requests to `worker` as `mode` says.
async fn drive_worker<D: Driver<EchoContract>>(
    worker: &Addr<Worker<EchoContract, D>>,
    n: usize,
    mode: Mode,
) {
    match mode {
        Mode::Sequential => drive(worker, n, false).await,
        Mode::Pipelined => drive(worker, n, true).await,
        Mode::Batched => drive_batched(worker, n).await,
    }
}

/// How the requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Sequential,
    Pipelined,
    Batched,
}

fn main() {
    isolated_workers::worker_entry::<EchoContract, _>("echo", Echoer::default);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: instructions child|thread|actix sequential|pipelined|batched N";
    let [target, mode, n] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mode = match mode.as_str() {
        "sequential" => Mode::Sequential,
        "pipelined" => Mode::Pipelined,
        "batched" if target != "actix" => Mode::Batched,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let Ok(n) = n.parse::<usize>() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let target = target.clone();
    System::new().block_on(async move {
        match target.as_str() {
            "child" => {
                // By its path, not `current_exe`, which executes
                // `/proc/self/exe`: under valgrind that is valgrind's own
                // tool, not this program, and the worker would not start.
                let exe = std::env::current_exe().expect("this program's path");
                let worker =
                    Worker::<EchoContract, ChildProcess>::spawn(ChildProcess::program(exe, "echo"))
                        .await
                        .expect("the worker starts");
                drive_worker(&worker, n, mode).await;
                worker.send(Close).await.expect("closed");
            }
            "thread" => {
                let worker = Worker::<EchoContract, _>::spawn(Thread::new(Echoer::default))
                    .await
                    .expect("the worker starts");
                drive_worker(&worker, n, mode).await;
                worker.send(Close).await.expect("closed");
            }
            "actix" => {
                let arbiter = Arbiter::new();
                let actor = Echoer::start_in_arbiter(&arbiter.handle(), |_| Echoer);
                drive(&actor, n, mode == Mode::Pipelined).await;
                arbiter.stop();
            }
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    });
}
