// Disconnect, Reconnect and Detach need a driver with the capability;
// a thread worker has neither.
use actix::prelude::*;
use isolated_workers::{Detach, Disconnect, Reconnect, Thread, Worker, WorkerError};
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

fn lifecycle(worker: Addr<Worker<Calc, Thread<CalcWorker>>>) {
    worker.do_send(Disconnect);
    worker.do_send(Reconnect);
    worker.do_send(Detach::default());
}

fn main() {}
