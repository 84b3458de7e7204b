// `send` (awaited, as a user writes it) of a lifecycle message the driver
// lacks the capability for: one error, naming the message and the worker.
use actix::prelude::*;
use isolated_workers::{Disconnect, Thread, Worker, WorkerError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Ping;

isolated_workers::contract! { Calc { Ping => () } }

struct CalcWorker;
impl Actor for CalcWorker { type Context = Context<Self>; }
impl Handler<Ping> for CalcWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result { Ok(()) }
}

async fn disconnect(worker: Addr<Worker<Calc, Thread<CalcWorker>>>) {
    let _ = worker.send(Disconnect).await;
}

fn main() {}
