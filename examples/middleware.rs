//! Middleware on both sides: the host logs each request going out and each
//! reply coming in, the worker logs each request coming in and each reply
//! going out, a typed middleware refuses one message before it leaves the
//! host, and the example checks the order everything happened in.
//!
//! Run: `cargo run --example middleware`

use std::sync::{Arc, Mutex};

use actix::prelude::*;
use isolated_workers::middleware::{
    Direction, MessageMiddleware, Middleware, Middlewares, Passage, Side,
};
use isolated_workers::{ChildProcess, Close, RemoteError, Worker, WorkerError, WorkerOptions};
use serde::{Deserialize, Serialize};

/// Asks for a pong.
#[derive(Debug, Serialize, Deserialize)]
struct Ping;

/// Deletes everything; the host's middleware does not let it through.
#[derive(Debug, Serialize, Deserialize)]
struct DropTables;

/// Asks the worker what its middleware saw.
#[derive(Debug, Serialize, Deserialize)]
struct Trail;

isolated_workers::contract! {
    /// What the worker understands.
    Service {
        Ping => String,
        DropTables => (),
        Trail => Vec<String>,
    }
}

/// What one side's middleware saw, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        println!("{line}");
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Logs every message with its direction, name and id.
struct Logger {
    log: Log,
}

impl Middleware for Logger {
    fn on_request(&self, request: &mut Passage<'_>) -> Result<(), RemoteError> {
        self.log.push(tag(request));
        Ok(())
    }

    fn on_response(&self, response: &mut Passage<'_>) {
        self.log.push(tag(response));
    }
}

/// `[OUTGOING] ping #1` on the host, `[WORKER IN] ping #1` on the worker.
fn tag(passage: &Passage<'_>) -> String {
    let direction = match (passage.side(), passage.direction()) {
        (Side::Host, Direction::Outgoing) => "[OUTGOING]",
        (Side::Host, Direction::Incoming) => "[INCOMING]",
        (Side::Worker, Direction::Incoming) => "[WORKER IN]",
        (Side::Worker, Direction::Outgoing) => "[WORKER OUT]",
    };
    let name = match (passage.name(), passage.is_request()) {
        ("Ping", true) => "ping",
        ("Ping", false) => "pong",
        (other, _) => other,
    };
    format!("{direction} {name} #{}", passage.id())
}

/// Refuses `DropTables` on the host: it never reaches the worker.
struct NoDropping;

impl MessageMiddleware<DropTables> for NoDropping {
    fn on_request(&self, _: &mut DropTables) -> Result<(), RemoteError> {
        Err(RemoteError::new(
            "Forbidden",
            "this host does not drop tables",
        ))
    }
}

/// The worker: answers pings, and tells what its middleware saw.
struct Server {
    log: Log,
}

impl Actor for Server {
    type Context = Context<Self>;
}

impl Handler<Ping> for Server {
    type Result = Result<String, WorkerError>;
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        Ok("pong".into())
    }
}

impl Handler<DropTables> for Server {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, _: DropTables, _: &mut Context<Self>) -> Self::Result {
        Err(RemoteError::new("Oops", "the tables were dropped").into())
    }
}

impl Handler<Trail> for Server {
    type Result = Result<Vec<String>, WorkerError>;
    fn handle(&mut self, _: Trail, _: &mut Context<Self>) -> Self::Result {
        Ok(self.log.lines())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker_log = Log::default();
    let worker_side = Middlewares::new().layer(Logger {
        log: worker_log.clone(),
    });
    isolated_workers::worker_entry_with::<Service, _>(
        "service",
        move || Server { log: worker_log },
        worker_side,
    );

    let host_log = Log::default();
    let host_side = Middlewares::new()
        .layer(Logger {
            log: host_log.clone(),
        })
        .for_message::<DropTables>(NoDropping);
    let options = WorkerOptions::default().middleware(host_side);

    actix::System::new().block_on(async move {
        let worker =
            Worker::<Service>::spawn_with(ChildProcess::current_exe("service"), options).await?;
        let pong = worker.send(Ping).await??;
        let refused = worker.send(DropTables).await?;
        println!("DropTables: {refused:?}");
        let worker_saw = worker.send(Trail).await??;
        worker.send(Close).await?;

        if pong != "pong" {
            return Err(format!("expected a pong, got {pong:?}").into());
        }
        match refused {
            Err(WorkerError::Rejected(error)) if error.name == "Forbidden" => {}
            other => return Err(format!("DropTables should be refused, got {other:?}").into()),
        }
        // The worker saw the ping come in and its pong go out, and the
        // Trail request come in (its reply leaves after it answered), but
        // never DropTables.
        let expected_worker = [
            "[WORKER IN] ping #1",
            "[WORKER OUT] pong #1",
            "[WORKER IN] Trail #2",
        ];
        if worker_saw != expected_worker {
            return Err(format!("the worker's middleware saw {worker_saw:?}").into());
        }
        // The host's typed middleware (outside) refused DropTables before
        // the untyped Logger saw it, so the log has only Ping and Trail.
        let expected_host = [
            "[OUTGOING] ping #1",
            "[INCOMING] pong #1",
            "[OUTGOING] Trail #2",
            "[INCOMING] Trail #2",
        ];
        let host_saw = host_log.lines();
        if host_saw != expected_host {
            return Err(format!("the host's middleware saw {host_saw:?}").into());
        }
        println!("order and refusal as documented");
        Ok(())
    })
}
