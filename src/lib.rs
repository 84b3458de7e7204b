#![doc = include_str!("../README.md")]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod config;
pub mod contract;
pub mod driver;
pub mod error;
mod ids;
mod lifecycle;
pub mod middleware;
mod panic;
pub mod pool;
pub mod proxy;
mod socket;
mod unreferenced;
mod waiters;
pub(crate) mod wire;
pub mod worker;

#[doc(hidden)]
pub mod testing;

pub use config::{CrashPolicy, WhileRestarting, WorkerOptions};
pub use contract::{Contract, InContract, LocalOnly, Portable, WorkerMessage};
pub use driver::child_process::DetachedWorker;
pub use driver::{
    CanDetach, CanReconnect, Carries, ChildProcess, Connection, Driver, SharesMemory, Thread,
};
pub use error::{
    AttachError, ConnectionError, Crash, CrashReason, HandshakeError, ProtocolFailure, RemoteError,
    SpawnError, WorkerError,
};
pub use pool::{PoolOptions, PoolReport, PoolStatus, WorkerPool};
pub use proxy::{
    Accepted, Batch, Close, Detach, Disconnect, Drain, LifecycleEvent, Reconnect, Status, Watch,
    WithTimeout, Worker, WorkerId, WorkerState, WorkerStatus,
};
#[cfg(feature = "json")]
pub use wire::serializer::Json;
#[cfg(feature = "postcard")]
pub use wire::serializer::Postcard;
pub use wire::serializer::{CodecError, MessagePack, Serializer};
pub use wire::shared_bytes::SharedBytes;
pub use worker::{serve_io, serve_io_with, worker_entry, worker_entry_with, Cancellable};
// Worker → host events.
pub use contract::NoEvents;
pub use proxy::{EventStream, Subscribe, SubscribeStream, WorkerEvent};
pub use worker::{EmitError, Events};

/// The names most programs need: `use isolated_workers::prelude::*;`.
pub mod prelude {
    pub use crate::{
        contract, worker_entry, Batch, CanDetach, CanReconnect, Cancellable, ChildProcess, Close,
        PoolOptions, RemoteError, SharedBytes, SharesMemory, SpawnError, Status, Thread,
        WithTimeout, Worker, WorkerError, WorkerOptions, WorkerPool,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use actix;
    pub use bytes::BytesMut;
}
