//! How much memory an idle child worker holds: this small binary spawns
//! itself as a worker, sends it one request, lets it idle, and prints its
//! resident set next to the floor, the same binary re-run doing nothing but
//! sleeping (no runtime, nothing of this crate).
//!
//! ```text
//! cargo run --release -p isolated-workers-bench --example idle_rss            # one line per process
//! cargo run --release -p isolated-workers-bench --example idle_rss -- --maps  # and the worker's largest mappings
//! cargo run --release -p isolated-workers-bench --example idle_rss -- --hold  # keep the worker until Enter
//! cargo run --release -p isolated-workers-bench --example idle_rss -- --trace # the host has a tracing subscriber
//! ```
//!
//! Figures are `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`), the
//! private pages of `/proc/<pid>/smaps_rollup` and the thread count
//! (`/proc/<pid>/task`), in kB as `/proc` reports them (KiB). Most of a
//! worker's `VmRSS` is file-backed: the executable's code it ran (the kernel
//! maps 64 KiB around each page it faults in), shared with the host, which
//! runs the same file. Its private pages are what it costs on its own.

use std::time::Duration;

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, Status, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// A tiny request, answered with itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ping(u64);

isolated_workers::contract! { Idle { Ping => Ping } }

/// Answers each ping.
struct Ponger;

impl Actor for Ponger {
    type Context = Context<Self>;
}

impl Handler<Ping> for Ponger {
    type Result = Result<Ping, WorkerError>;
    fn handle(&mut self, ping: Ping, _: &mut Context<Self>) -> Self::Result {
        Ok(ping)
    }
}

/// How long each process idles before it is measured.
const IDLE: Duration = Duration::from_millis(500);
/// Set in the floor's child, which only sleeps.
const FLOOR: &str = "IDLE_RSS_FLOOR";

fn main() {
    isolated_workers::worker_entry::<Idle, _>("idle", || Ponger);
    if std::env::var_os(FLOOR).is_some() {
        // The floor: the same executable, loaded and started, then asleep.
        std::thread::sleep(Duration::from_secs(3600));
        return;
    }
    let maps = std::env::args().any(|arg| arg == "--maps");
    let hold = std::env::args().any(|arg| arg == "--hold");
    if std::env::args().any(|arg| arg == "--trace") {
        // A host with a subscriber: the worker forwards its own events.
        tracing::subscriber::set_global_default(tracing_subscriber::registry())
            .expect("no subscriber yet");
    }

    let mut floor = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(FLOOR, "1")
        .spawn()
        .expect("start the floor");
    std::thread::sleep(IDLE);
    let floor_line = describe(floor.id());
    floor.kill().expect("stop the floor");
    floor.wait().expect("reap the floor");

    actix::System::new().block_on(async move {
        let worker = Worker::<Idle, ChildProcess>::spawn(ChildProcess::current_exe("idle"))
            .await
            .expect("spawn the worker");
        worker.send(Ping(1)).await.expect("sent").expect("answered");
        let pid = worker
            .send(Status)
            .await
            .expect("status")
            .pid
            .expect("a pid");
        tokio::time::sleep(IDLE).await;
        println!("worker: {}", describe(pid));
        println!("floor:  {floor_line}");
        if maps {
            print_largest_mappings(pid);
        }
        if hold {
            println!("worker pid {pid}; press Enter to close it");
            let _ = std::io::stdin().read_line(&mut String::new());
        }
        worker.send(Close).await.expect("closed");
    });
}

/// `VmRSS`, `RssAnon`, `RssFile` and the thread count of process `pid`,
/// and what of it is its own: `Private_Clean` + `Private_Dirty` from
/// `smaps_rollup` (what the machine would get back if it exited).
fn describe(pid: u32) -> String {
    let field = |file: &str, name: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("read /proc");
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    let private = field("smaps_rollup", "Private_Clean:") + field("smaps_rollup", "Private_Dirty:");
    format!(
        "VmRSS {} kB (anon {} kB, file {} kB), private {private} kB, {threads} thread(s)",
        field("status", "VmRSS:"),
        field("status", "RssAnon:"),
        field("status", "RssFile:"),
    )
}

/// The mappings of `pid` holding the most resident memory, from
/// `/proc/<pid>/smaps`.
fn print_largest_mappings(pid: u32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut mappings: Vec<(u64, String)> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            mappings.push((0, line.to_owned()));
        } else if let Some(rss) = line.strip_prefix("Rss:") {
            let kib = rss
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            if let Some(last) = mappings.last_mut() {
                last.0 = kib;
            }
        }
    }
    mappings.sort_by_key(|mapping| std::cmp::Reverse(mapping.0));
    for (kib, header) in mappings.iter().take(24) {
        println!("{kib:>6} kB  {header}");
    }
}
