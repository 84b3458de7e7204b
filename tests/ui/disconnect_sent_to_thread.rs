// `send` (awaited, as a user writes it) of a lifecycle message the driver
// lacks the capability for. actix checks `Worker: Handler<Disconnect>` at
// `send`, for the `Request` it returns, and at `.await`, so rustc reports
// the one cause three times; each report leads with which worker does not
// accept which message, and why.
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
