//! `Reconnect` keeps what `Disconnect` promised under stress: a `Reconnect`
//! that timed out while the worker was busy does not cost the worker its
//! state, and silent connections on the attach socket neither fill it up
//! nor delay an honest host.

mod support;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use isolated_workers::{
    ChildProcess, Close, ConnectionError, Disconnect, Reconnect, Status, Worker, WorkerError,
    WorkerOptions,
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde::{Deserialize, Serialize};
use support::{attach_dirs_of, fail};

/// How long a `Reconnect` (and a spawn) may take here.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the worker's thread is kept blocked: well past
/// [`CONNECT_TIMEOUT`].
const BLOCKED: Duration = Duration::from_secs(4);
/// How often the worker looks whether it listens for its host yet, and
/// the host whether the worker has blocked.
const POLL: Duration = Duration::from_millis(5);
/// Silent connections held open on the attach socket.
const SILENT_PEERS: usize = 64;
/// How long a `Reconnect` may take despite them (the bound).
const HONEST_RECONNECT: Duration = Duration::from_secs(1);

/// Adds one to the worker's count and answers it.
#[derive(Debug, Serialize, Deserialize)]
struct Increment;

/// Answers at once; then, as soon as the worker listens for its host
/// again (after a `Disconnect`), makes the file `blocked` and blocks the
/// worker's thread for `ms`.
#[derive(Debug, Serialize, Deserialize)]
struct BlockOnceListening {
    ms: u64,
    blocked: PathBuf,
}

isolated_workers::contract! {
    /// A worker with state worth keeping.
    Counter {
        Increment => u64,
        BlockOnceListening => (),
    }
}

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

impl Handler<BlockOnceListening> for CounterWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, block: BlockOnceListening, ctx: &mut Context<Self>) -> Self::Result {
        block_once_listening(Duration::from_millis(block.ms), block.blocked, ctx);
        Ok(())
    }
}

/// Blocks the thread for `time` once this worker has made its attach
/// socket, which it does before it confirms a `Disconnect`, and says so
/// with the file `blocked`. Waiting for both, rather than blocking in the
/// request's own handler, keeps the test from depending on whether the
/// worker read the `Disconnect` in the same read as the request, and on
/// whether the block began before the host's `Reconnect`.
fn block_once_listening(time: Duration, blocked: PathBuf, ctx: &mut Context<CounterWorker>) {
    ctx.run_later(POLL, move |_, ctx| {
        if attach_dirs_of(std::process::id()).is_empty() {
            block_once_listening(time, blocked, ctx);
        } else {
            std::fs::write(&blocked, b"").expect("the marker of the block");
            std::thread::sleep(time);
        }
    });
}

fn main() {
    support::quiet_panics_on_purpose();
    isolated_workers::worker_entry::<Counter, _>("counter", CounterWorker::default);
    let trials = vec![
        test(
            "a_reconnect_that_timed_out_while_the_worker_was_blocked_does_not_cost_its_state",
            a_reconnect_that_timed_out_while_the_worker_was_blocked_does_not_cost_its_state,
        ),
        test(
            "reconnect_succeeds_within_a_second_with_64_silent_connections_on_the_attach_socket",
            reconnect_succeeds_within_a_second_with_64_silent_connections_on_the_attach_socket,
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

fn test<Fut>(name: &str, body: fn() -> Fut) -> Trial
where
    Fut: std::future::Future<Output = Result<(), Failed>> + 'static,
{
    Trial::test(name, move || {
        actix::System::new().block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), body())
                .await
                .map_err(|_| Failed::from("hung for 60 s"))?
        })
    })
}

async fn spawn_counter() -> Result<Addr<Worker<Counter>>, Failed> {
    let options = WorkerOptions::default().startup_timeout(CONNECT_TIMEOUT);
    Worker::<Counter>::spawn_with(ChildProcess::current_exe("counter"), options)
        .await
        .map_err(fail)
}

async fn increment(worker: &Addr<Worker<Counter>>) -> Result<u64, Failed> {
    worker.send(Increment).await.map_err(fail)?.map_err(fail)
}

async fn a_reconnect_that_timed_out_while_the_worker_was_blocked_does_not_cost_its_state(
) -> Result<(), Failed> {
    let worker = spawn_counter().await?;
    for expected in 1..=3 {
        assert_eq!(increment(&worker).await?, expected);
    }
    // The worker confirms the Disconnect, then its thread blocks: it
    // accepts no host until that ends.
    let markers = tempfile::tempdir().map_err(fail)?;
    let blocked = markers.path().join("blocked");
    worker
        .send(BlockOnceListening {
            ms: BLOCKED.as_millis() as u64,
            blocked: blocked.clone(),
        })
        .await
        .map_err(fail)?
        .map_err(fail)?;
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    while !blocked.exists() {
        actix_rt::time::sleep(POLL).await;
    }
    let started = Instant::now();
    match worker.send(Reconnect).await.map_err(fail)? {
        Err(ConnectionError::Unreachable(_)) => {}
        other => {
            return Err(format!(
                "a Reconnect while the worker is blocked should time out, got {other:?} after {:?}",
                started.elapsed()
            )
            .into())
        }
    }
    // Once the worker is free it takes the abandoned connection in, finds
    // it closed, and must wait for its host again rather than exit.
    let reconnected = loop {
        match worker.send(Reconnect).await.map_err(fail)? {
            Ok(()) => break true,
            Err(ConnectionError::Unreachable(_)) if started.elapsed() < BLOCKED * 3 => continue,
            Err(e) => return Err(format!("Reconnect after the block: {e}").into()),
        }
    };
    assert!(reconnected);
    assert_eq!(
        increment(&worker).await?,
        4,
        "the worker kept its count across the timed-out Reconnect"
    );
    worker.send(Close).await.map_err(fail)?;
    Ok(())
}

async fn reconnect_succeeds_within_a_second_with_64_silent_connections_on_the_attach_socket(
) -> Result<(), Failed> {
    let worker = spawn_counter().await?;
    assert_eq!(increment(&worker).await?, 1);
    let pid = worker
        .send(Status)
        .await
        .map_err(fail)?
        .pid
        .ok_or("a pid")?;
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let socket = attach_socket_of(pid)?;
    let silent: Vec<UnixStream> = (0..SILENT_PEERS)
        .map(|_| UnixStream::connect(&socket))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let started = Instant::now();
    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    let took = started.elapsed();
    assert!(
        took < HONEST_RECONNECT,
        "Reconnect took {took:?} with {} silent peers",
        silent.len()
    );
    assert_eq!(increment(&worker).await?, 2);
    drop(silent);
    worker.send(Close).await.map_err(fail)?;
    Ok(())
}

/// The attach socket worker `pid` listens on, in the directory it made.
fn attach_socket_of(pid: u32) -> Result<PathBuf, Failed> {
    match attach_dirs_of(pid).as_slice() {
        [dir] => Ok(dir.join("attach.sock")),
        other => Err(format!("attach directories of worker {pid}: {other:?}").into()),
    }
}
