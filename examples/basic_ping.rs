//! Spawn a worker (this same binary, re-executed), ping it, print the
//! reply, close it.
//!
//! Run: `cargo run --example basic_ping`

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Asks the worker to echo `text` back.
#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    text: String,
}

/// The worker's answer.
#[derive(Debug, Serialize, Deserialize)]
struct Pong {
    text: String,
    pid: u32,
}

isolated_workers::contract! {
    /// What the ping worker understands.
    PingPong {
        Ping => Pong,
    }
}

/// The worker: a plain actix actor.
struct Ponger;

impl Actor for Ponger {
    type Context = Context<Self>;
}

impl Handler<Ping> for Ponger {
    type Result = Result<Pong, WorkerError>;

    fn handle(&mut self, ping: Ping, _: &mut Context<Self>) -> Self::Result {
        Ok(Pong {
            text: format!("pong: {}", ping.text),
            pid: std::process::id(),
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In the worker child this serves requests and never returns.
    isolated_workers::worker_entry::<PingPong, _>("ping", || Ponger);

    actix::System::new().block_on(async {
        let worker =
            Worker::<PingPong, ChildProcess>::spawn(ChildProcess::current_exe("ping")).await?;
        let pong = worker.send(Ping { text: "hi".into() }).await??;
        println!(
            "{} (from worker pid {}, host pid {})",
            pong.text,
            pong.pid,
            std::process::id()
        );
        if pong.text != "pong: hi" || pong.pid == std::process::id() {
            return Err("the reply did not come from the worker".into());
        }
        worker.send(Close).await?;
        println!("worker closed");
        Ok(())
    })
}
