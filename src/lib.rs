//! Isolated workers for actix.
pub mod config;
pub mod contract;
pub mod driver;
pub mod error;
pub mod proxy;
pub(crate) mod wire;
pub mod worker;

pub use config::WorkerOptions;
pub use contract::{Contract, InContract, WorkerMessage};
pub use driver::{ChildProcess, Driver};
pub use error::{CrashReason, RemoteError, SpawnError, WorkerError};
pub use proxy::{Close, Status, Worker, WorkerState, WorkerStatus};
pub use wire::{CodecError, MessagePack, Serializer};
pub use worker::worker_entry;

#[doc(hidden)]
pub mod testing;

#[doc(hidden)]
pub mod __private {
    pub use actix;
}
