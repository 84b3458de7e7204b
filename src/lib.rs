//! Isolated workers for [actix](https://actix.rs): work that must not take
//! the host down with it (CPU-heavy jobs, crash-prone native code, plugins,
//! untrusted input) runs in a worker, and the host talks to the worker as
//! to any other actor.
//!
//! A [`Worker<C, D>`](Worker) is an actix actor whose mailbox accepts exactly
//! the messages of contract `C` (declared with [`contract!`]) and forwards
//! each over driver `D`: a child process reached over a local socket
//! ([`ChildProcess`], the default) or an actor on a thread of its own
//! ([`Thread`]). Each request resolves with its reply or with one
//! [`WorkerError`] that says what happened; a crashed worker never leaves a
//! request hanging. A [`WorkerPool<C, D>`](WorkerPool) accepts the same
//! messages and spreads them over several workers.
//!
//! Process isolation is not a sandbox: a worker runs as the host's user,
//! with its files and network. It protects the host from the worker's
//! crashes, panics, leaks and aborts, not from hostile code.
//!
//! # Where to start
//!
//! 1. Declare what the worker understands with [`contract!`]: each message
//!    with its reply type.
//! 2. Write the worker as a plain actix actor with a `Handler<M>` per
//!    message, each returning `Result<Reply, WorkerError>`.
//! 3. Call [`worker_entry`] first in `main`: in the host it returns at
//!    once; in a worker process (the same executable, started by
//!    [`ChildProcess::current_exe`]) it serves and never returns.
//! 4. [`Worker::spawn`] it and `send` it messages.
//!
//! ```
//! use actix::prelude::*;
//! use isolated_workers::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! isolated_workers::contract! {
//!     /// What the worker understands: each message with its reply type.
//!     Calc { Add => i64 }
//! }
//!
//! #[derive(Default)]
//! struct CalcWorker;
//! impl Actor for CalcWorker { type Context = Context<Self>; }
//! impl Handler<Add> for CalcWorker {
//!     type Result = Result<i64, WorkerError>;
//!     fn handle(&mut self, add: Add, _: &mut Context<Self>) -> Self::Result {
//!         Ok(add.a + add.b)
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Before any runtime starts: in a worker process this never returns.
//!     worker_entry::<Calc, _>("calc", CalcWorker::default);
//!
//!     actix::System::new().block_on(async {
//!         // The same executable, re-run as worker "calc".
//!         let calc = Worker::<Calc>::spawn(ChildProcess::current_exe("calc")).await?;
//!         assert_eq!(calc.send(Add { a: 2, b: 3 }).await??, 5);
//!         calc.send(Close).await?;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! The same actor runs on a thread instead by changing only the driver:
//! `Worker::<Calc, _>::spawn(Thread::new(CalcWorker::default))`. The
//! examples below use a thread worker where the driver does not matter.
//!
//! # What is in the crate
//!
//! | you want | read |
//! |---|---|
//! | to declare messages and replies | [`contract!`], [`Contract`], [`RemoteError`] (a handler's error) |
//! | where a worker runs | [`ChildProcess`] (its environment, arguments, resource limits), [`Thread`], the [`Driver`] trait to write your own, and [`serve_io`] for its worker end |
//! | to talk to a worker | [`Worker`] (every request, timeout and crash rule is on its page), [`Call`] (one `Result` instead of two), [`Status`] / [`WorkerStatus`], [`Close`], [`Drain`] |
//! | timeouts, crash policies, restarts | [`WorkerOptions`], [`CrashPolicy`], [`Worker::supervise`], [`LifecycleEvent`] |
//! | what can go wrong | [`WorkerError`] (per request), [`SpawnError`] (starting), [`CrashReason`] |
//! | many workers | [`WorkerPool`], [`PoolOptions`], [`PoolStatus`] / [`PoolReport`] |
//! | many small requests | [`Batch`]: one mailbox crossing, one write |
//! | large payloads | [`SharedBytes`]: a sealed memfd to a child process, moved to a thread |
//! | long jobs that stop when nobody waits | [`worker::Cancellable`] |
//! | progress and other events from a worker | [`worker::Events`] in the worker; [`Subscribe`] / [`SubscribeStream`] on the host |
//! | a worker that outlives a connection or its host | [`Disconnect`], [`Reconnect`], [`Detach`], [`DetachedWorker`] |
//! | cross-cutting code around every request | [`middleware`] |
//! | another wire format | [`Serializer`]: [`MessagePack`] (default), `Json` and `Postcard` (features `json`, `postcard`) |
//! | the crate's own tests' trick for yours | `test_support!` (feature `test-support`) |
//!
//! Lifecycle messages exist only where the driver can carry them: a
//! [`Thread`] worker does not accept [`Disconnect`], and the compiler says
//! so (see [`driver`]).
//!
//! # A pool, and batches
//!
//! ```
//! # use actix::prelude::*;
//! # use isolated_workers::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Serialize, Deserialize)]
//! # struct Add { a: i64, b: i64 }
//! # isolated_workers::contract! { Calc { Add => i64 } }
//! # #[derive(Default)]
//! # struct CalcWorker;
//! # impl Actor for CalcWorker { type Context = Context<Self>; }
//! # impl Handler<Add> for CalcWorker {
//! #     type Result = Result<i64, WorkerError>;
//! #     fn handle(&mut self, add: Add, _: &mut Context<Self>) -> Self::Result { Ok(add.a + add.b) }
//! # }
//! # actix::System::new().block_on(async {
//! let options = PoolOptions::default().min_members(1).max_members(2);
//! let pool = WorkerPool::<Calc, _>::spawn_with(Thread::new(CalcWorker::default), options).await?;
//! // As to one worker:
//! assert_eq!(pool.send(Add { a: 1, b: 1 }).await??, 2);
//! // Many at once, each answer with its own `Result`, in order:
//! let sums = pool.send(Batch::from_iter((0..100).map(|a| Add { a, b: 1 }))).await?;
//! assert_eq!(sums.len(), 100);
//! assert_eq!(*sums[99].as_ref().unwrap(), 100);
//! pool.send(Close).await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Timeouts, and what a caller sees
//!
//! ```
//! # use std::time::Duration;
//! # use actix::prelude::*;
//! # use isolated_workers::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Nap { ms: u64 }
//! isolated_workers::contract! { Sleepy { Nap => () } }
//!
//! struct Sleeper;
//! impl Actor for Sleeper { type Context = Context<Self>; }
//! impl Handler<Nap> for Sleeper {
//!     type Result = ResponseFuture<Result<(), WorkerError>>;
//!     fn handle(&mut self, nap: Nap, _: &mut Context<Self>) -> Self::Result {
//!         Box::pin(async move {
//!             tokio::time::sleep(Duration::from_millis(nap.ms)).await;
//!             Ok(())
//!         })
//!     }
//! }
//!
//! # actix::System::new().block_on(async {
//! let options = WorkerOptions::default().timeout_for::<Nap>(Duration::from_millis(50));
//! let worker = Worker::<Sleepy, _>::spawn_with(Thread::new(|| Sleeper), options).await?;
//! match worker.send(Nap { ms: 10_000 }).await? {
//!     Err(WorkerError::Timeout { .. }) => {} // and the worker was told to drop it
//!     other => panic!("expected a timeout, got {other:?}"),
//! }
//! worker.send(Nap { ms: 1 }).await??; // the worker serves on
//! # worker.send(Close).await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Events from a worker
//!
//! ```
//! # use actix::prelude::*;
//! # use futures::StreamExt;
//! # use isolated_workers::prelude::*;
//! use isolated_workers::worker::Events;
//! use isolated_workers::SubscribeStream;
//! # use serde::{Deserialize, Serialize};
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Run { steps: u32 }
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Progress(u32);
//! isolated_workers::contract! { Jobs (events = Progress) { Run => u32 } }
//!
//! struct JobWorker;
//! impl Actor for JobWorker { type Context = Context<Self>; }
//! impl Handler<Run> for JobWorker {
//!     type Result = Result<u32, WorkerError>;
//!     fn handle(&mut self, run: Run, _: &mut Context<Self>) -> Self::Result {
//!         let events = Events::<Jobs>::current();
//!         for step in 1..=run.steps {
//!             let _ = events.try_emit(Progress(step));
//!         }
//!         Ok(run.steps)
//!     }
//! }
//!
//! # actix::System::new().block_on(async {
//! let worker = Worker::<Jobs, _>::spawn(Thread::new(|| JobWorker)).await?;
//! let mut events = worker.send(SubscribeStream::new()).await?;
//! assert_eq!(worker.send(Run { steps: 3 }).await??, 3);
//! // Every event emitted before a reply has arrived when the reply does.
//! for step in 1..=3 {
//!     assert_eq!(events.next().await.unwrap().event, Progress(step));
//! }
//! # worker.send(Close).await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! - `json`, `postcard`: the [`Serializer`]s `Json` and `Postcard`.
//! - `test-support`: `test_support!`, for test binaries of the standard
//!   harness that spawn child-process workers.
//! - `actix-web`: `actix_web::ResponseError` for [`WorkerError`], so that a
//!   handler can return it with `?` and the client gets the status it
//!   means (503 with `Retry-After` when overloaded, 504 on a timeout, …).
//! - `nats`: `isolated_workers::nats`, workers on other machines through NATS (an `Agent`
//!   on each, the `Nats` driver on the host).
//!
//! The repository's README has the guide at length (every capability,
//! failure semantics, platforms), `ARCHITECTURE.md` the map of the code,
//! and `docs/performance.md` the benchmarks.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod call;
pub mod config;
pub mod contract;
pub mod driver;
pub mod error;
mod ids;
mod lifecycle;
pub mod middleware;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
mod panic;
pub mod pool;
pub mod proxy;
mod socket;
mod test_support;
mod unreferenced;
mod waiters;
#[cfg(feature = "actix-web")]
mod web;
pub(crate) mod wire;
pub mod worker;

#[doc(hidden)]
pub mod testing;

pub use call::{Call, Called};
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
        contract, worker_entry, Batch, Call, CanDetach, CanReconnect, Cancellable, ChildProcess,
        Close, PoolOptions, RemoteError, SharedBytes, SharesMemory, SpawnError, Status, Thread,
        WithTimeout, Worker, WorkerError, WorkerOptions, WorkerPool,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use actix;
    pub use bytes::BytesMut;
    #[cfg(feature = "test-support")]
    pub use ctor;
    /// What `test_support!` expands to calls.
    pub mod test_support {
        pub use crate::test_support::{register, run_entry};
    }
}
