//! A driver written outside the crate: `InMemory` (see `in_memory.rs`)
//! implements the public `Driver` trait, and a worker spawned with it gets
//! everything the built-in drivers get — requests, remote errors, panics
//! reported as crashes, `Status`, `Close`.
//!
//! Run: `cargo run --example custom_driver`

mod in_memory;

use actix::prelude::*;
use in_memory::InMemory;
use isolated_workers::{Close, RemoteError, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// Says hello to `name`, unless the name is empty.
#[derive(Debug, Serialize, Deserialize)]
struct Greet {
    name: String,
}

isolated_workers::contract! {
    /// A greeter.
    Greeter {
        Greet => String,
    }
}

struct GreeterWorker;

impl Actor for GreeterWorker {
    type Context = Context<Self>;
}

impl Handler<Greet> for GreeterWorker {
    type Result = Result<String, WorkerError>;

    fn handle(&mut self, Greet { name }: Greet, _: &mut Context<Self>) -> Self::Result {
        if name.is_empty() {
            return Err(RemoteError::new("NoName", "whom should I greet?").into());
        }
        Ok(format!("hello, {name}"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    actix::System::new().block_on(async {
        let worker = Worker::<Greeter, _>::spawn(InMemory::new(|| GreeterWorker)).await?;

        let greeting = worker
            .send(Greet {
                name: "actix".into(),
            })
            .await??;
        println!("{greeting}");
        let refusal = worker
            .send(Greet {
                name: String::new(),
            })
            .await?;
        println!("{refusal:?}");

        worker.send(Close).await?;
        let after = worker
            .send(Greet {
                name: "again".into(),
            })
            .await?;
        println!("after close: {after:?}");

        let refused = matches!(refusal, Err(WorkerError::Remote(ref e)) if e.name == "NoName");
        if greeting != "hello, actix" || !refused || !matches!(after, Err(WorkerError::Closed)) {
            return Err("the custom driver did not behave like a built-in one".into());
        }
        Ok(())
    })
}
