//! A worker whose host dies stops within its grace period, whatever its
//! handler is doing: blocking the worker's thread (a CPU-bound job), awaiting
//! something, or nothing; and whether the host was SIGKILLed or exited
//! normally. Nothing of it is left on disk. (And a host with its stdin
//! and stderr closed, as a daemon may have, still reaches its workers.)
//!
//! Each case runs a host (this binary again, see [`HOST_MODE_ENV`]) that
//! spawns a worker, starts the case's work, says so on stdout, and is then
//! killed or told to exit. The worker prints to the same stdout (it
//! inherits the host's), which is how the test knows its handler runs.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use actix::prelude::*;
use isolated_workers::{ChildProcess, Disconnect, Status, Worker, WorkerError, WorkerOptions};
use libtest_mimic::{Arguments, Failed, Trial};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use support::{attach_dirs_of, fail, kill, reap_if_exited, running};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Set to a [`Work`]'s name when this binary runs as a host.
const HOST_MODE_ENV: &str = "ISOLATED_WORKERS_TEST_HOST_DEATH";
/// Set when this binary runs as a host with its stdin and stderr closed,
/// which spawns a worker, asks it something, and prints `answered`.
const CLOSED_STDIN_ENV: &str = "ISOLATED_WORKERS_TEST_CLOSED_STDIN";
/// The workers' grace period: how long they have to stop once their host
/// is gone.
const GRACE: Duration = Duration::from_secs(1);
/// How long past its grace period a worker may take to be gone (the issue's
/// bound: the grace period plus one second).
const SLACK: Duration = Duration::from_secs(1);
/// How long a handler blocks or waits: far longer than any bound here.
const LONG: Duration = Duration::from_secs(20);
/// The longest a host may take to report its worker busy.
const STARTUP: Duration = Duration::from_secs(30);

/// Blocks the worker's thread (`std::thread::sleep`) for `ms`.
#[derive(Debug, Serialize, Deserialize)]
struct Block {
    ms: u64,
}

/// Waits asynchronously (the thread stays free) for `ms`.
#[derive(Debug, Serialize, Deserialize)]
struct Wait {
    ms: u64,
}

isolated_workers::contract! {
    /// A worker that can be kept busy.
    Busy {
        Block => (),
        Wait => (),
    }
}

struct BusyWorker;

impl Actor for BusyWorker {
    type Context = Context<Self>;
}

impl Handler<Block> for BusyWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, block: Block, _: &mut Context<Self>) -> Self::Result {
        println!("busy");
        std::thread::sleep(Duration::from_millis(block.ms));
        Ok(())
    }
}

impl Handler<Wait> for BusyWorker {
    type Result = ResponseFuture<Result<(), WorkerError>>;
    fn handle(&mut self, wait: Wait, _: &mut Context<Self>) -> Self::Result {
        println!("busy");
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(wait.ms)).await;
            Ok(())
        })
    }
}

/// What the worker is doing when its host dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// A handler blocking the worker's thread.
    Blocking,
    /// A handler awaiting a timer.
    Async,
    /// Nothing.
    Idle,
    /// Nothing, disconnected (so it listens, in a directory of its own).
    Disconnected,
}

impl Work {
    const ALL: [Work; 4] = [Work::Blocking, Work::Async, Work::Idle, Work::Disconnected];

    fn name(self) -> &'static str {
        match self {
            Work::Blocking => "blocking",
            Work::Async => "async",
            Work::Idle => "idle",
            Work::Disconnected => "disconnected",
        }
    }
}

/// How the host dies.
#[derive(Debug, Clone, Copy)]
enum Death {
    Sigkill,
    /// `std::process::exit(0)`, with the worker's proxy still alive.
    Exit,
}

fn main() {
    support::quiet_panics_on_purpose();
    isolated_workers::worker_entry::<Busy, _>("busy", || BusyWorker);
    if std::env::var_os(CLOSED_STDIN_ENV).is_some() {
        closed_stdin_host();
    }
    if let Ok(mode) = std::env::var(HOST_MODE_ENV) {
        let work = Work::ALL.into_iter().find(|w| w.name() == mode);
        host_mode(work.expect("a known kind of work"));
    }
    let mut trials = Vec::new();
    for work in Work::ALL {
        for death in [Death::Sigkill, Death::Exit] {
            let name = format!(
                "a_worker_{}_when_its_host_{}_is_gone_within_its_grace_period_leaving_nothing",
                work.name(),
                match death {
                    Death::Sigkill => "is_sigkilled",
                    Death::Exit => "exits",
                }
            );
            trials.push(Trial::test(name, move || {
                actix::System::new().block_on(host_dies(work, death))
            }));
        }
    }
    trials.push(Trial::test(
        "a_host_with_its_stdin_and_stderr_closed_spawns_and_reaches_a_worker",
        || {
            actix::System::new()
                .block_on(a_host_with_its_stdin_and_stderr_closed_spawns_and_reaches_a_worker())
        },
    ));
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

/// A host whose descriptors 0 and 2 are closed, so that the next sockets it
/// makes take those numbers (which the worker's stdio would take over).
fn closed_stdin_host() -> ! {
    actix::System::new().block_on(async {
        // Closed here, after the runtime took its own descriptors, so that
        // the socketpair's two ends are numbered 0 and 2.
        // SAFETY: nothing in this process uses stdin or stderr any more,
        // nor holds them as `OwnedFd`s.
        unsafe {
            rustix::io::close(0);
            rustix::io::close(2);
        }
        let worker = Worker::<Busy>::spawn(ChildProcess::current_exe("busy"))
            .await
            .expect("the worker starts");
        worker
            .send(Wait { ms: 0 })
            .await
            .expect("mailbox")
            .expect("answered");
        println!("answered");
    });
    std::process::exit(0);
}

async fn a_host_with_its_stdin_and_stderr_closed_spawns_and_reaches_a_worker() -> Result<(), Failed>
{
    let exe = std::env::current_exe().map_err(fail)?;
    let ran = tokio::process::Command::new(exe)
        .env(CLOSED_STDIN_ENV, "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let ran = tokio::time::timeout(STARTUP, ran)
        .await
        .map_err(|_| "the host hung")?
        .map_err(fail)?;
    let stdout = String::from_utf8_lossy(&ran.stdout);
    if !ran.status.success() || !stdout.contains("answered") {
        return Err(format!(
            "the host ({}) said {stdout:?}; stderr: {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr)
        )
        .into());
    }
    Ok(())
}

/// The host: spawns a worker, sets it to `work`, prints `worker <pid>` and
/// `busy` (the worker prints `busy` itself when a handler runs), then exits
/// when a line arrives on stdin, or lingers to be killed.
fn host_mode(work: Work) -> ! {
    actix::System::new().block_on(async move {
        let options = WorkerOptions::default().close_grace(GRACE);
        let worker = Worker::<Busy>::spawn_with(ChildProcess::current_exe("busy"), options)
            .await
            .expect("the worker starts");
        let pid = worker
            .send(Status)
            .await
            .expect("status")
            .pid
            .expect("a pid");
        println!("worker {pid}");
        let ms = LONG.as_millis() as u64;
        match work {
            // Kept pending for as long as the host lives.
            Work::Blocking => drop(actix::spawn(worker.send(Block { ms }))),
            Work::Async => drop(actix::spawn(worker.send(Wait { ms }))),
            Work::Idle => println!("busy"),
            Work::Disconnected => {
                worker
                    .send(Disconnect)
                    .await
                    .expect("mailbox")
                    .expect("disconnected");
                println!("busy");
            }
        }
        // A line on stdin: exit as a program does, proxies and all alive.
        let mut line = String::new();
        let read = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line));
        let _ = tokio::time::timeout(Duration::from_secs(60), read).await;
        std::process::exit(0);
    })
}

async fn host_dies(work: Work, death: Death) -> Result<(), Failed> {
    // The host's worker becomes this process's child when the host dies
    // (rather than init's, which may reap it late), so that it can be
    // reaped here and seen gone.
    // Any pid turns it on.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(fail)?;
    let exe = std::env::current_exe().map_err(fail)?;
    let mut host = tokio::process::Command::new(exe)
        .env(HOST_MODE_ENV, work.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    let host_pid = host.id().ok_or("the host has a pid")?;
    let stdout = host.stdout.take().ok_or("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut worker = None;
    let reported = tokio::time::timeout(STARTUP, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(pid) = line.strip_prefix("worker ") {
                worker = pid.parse::<u32>().ok();
            } else if line == "busy" {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    })
    .await;
    let worker = worker.ok_or("the host did not report its worker")?;
    let _reaped = Reap(worker);
    if !matches!(reported, Ok(Ok(true))) {
        return Err(format!("the host did not report its worker busy: {reported:?}").into());
    }
    let dirs_before = attach_dirs_of(worker);
    if (work == Work::Disconnected) == dirs_before.is_empty() {
        return Err(format!("attach directories of a {work:?} worker: {dirs_before:?}").into());
    }

    match death {
        Death::Sigkill => kill(host_pid, Signal::KILL).map_err(fail)?,
        Death::Exit => {
            let mut stdin = host.stdin.take().ok_or("piped stdin")?;
            stdin.write_all(b"exit\n").await.map_err(fail)?;
        }
    }
    let status = host.wait().await.map_err(fail)?;
    let died = Instant::now();
    let bound = GRACE + SLACK;
    // Polled: a process disappearing offers no event to a non-parent.
    let gone = loop {
        reap_if_exited(worker);
        if !running(worker) {
            break true;
        }
        if died.elapsed() > bound + Duration::from_secs(5) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let took = died.elapsed();
    if !gone || took > bound {
        return Err(format!(
            "the {work:?} worker {worker} was still there {took:?} after its host ended ({status}); \
             the bound is {bound:?}"
        )
        .into());
    }
    let left = attach_dirs_of(worker);
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}").into());
    }
    Ok(())
}

/// Kills and reaps a worker a failed test left running.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if running(self.0) {
            let _ = kill(self.0, Signal::KILL);
            std::thread::sleep(Duration::from_millis(50));
        }
        reap_if_exited(self.0);
    }
}
