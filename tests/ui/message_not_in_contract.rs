// A worker accepts only its contract's messages.
use actix::Addr;
use isolated_workers::{ChildProcess, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Ping;

#[derive(Serialize, Deserialize)]
struct Launch;

isolated_workers::contract! { Calc { Ping => () } }
isolated_workers::contract! { Rockets { Launch => () } }

fn send(worker: Addr<Worker<Calc, ChildProcess>>) {
    worker.do_send(Launch);
}

fn main() {}
