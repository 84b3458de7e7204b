// A `#[local]` message is moved, never serialized: only a driver that
// shares memory with the host can carry it.
use std::sync::Arc;

use actix::Addr;
use isolated_workers::{ChildProcess, Worker};

struct Render {
    scene: Arc<Vec<u8>>,
}

isolated_workers::contract! { Renderer { #[local] Render => usize } }

fn send(worker: Addr<Worker<Renderer, ChildProcess>>) {
    worker.do_send(Render { scene: Arc::new(vec![0; 1024]) });
}

fn main() {}
