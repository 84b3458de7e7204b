//! What happens to a worker, as its watchers are told: [`LifecycleEvent`],
//! naming the worker by its [`WorkerId`]. A leaf, so that the options
//! (which hold the watchers) and the pool (which watches its members) need
//! not import the proxy that sends the events. Re-exported as
//! `isolated_workers::proxy::{LifecycleEvent, WorkerId}`.

use std::sync::atomic::{AtomicU64, Ordering};

use actix::Message;
use serde::Serialize;

use crate::error::{Crash, CrashReason};

/// Names one worker proxy for the life of the process: the `worker` of its
/// [`LifecycleEvent`]s and of its [`WorkerStatus`](crate::WorkerStatus).
/// Serialized as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct WorkerId(u64);

impl WorkerId {
    /// A name no other proxy in this process has.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        WorkerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker#{}", self.0)
    }
}

/// What happened to a worker, told to its watchers (see
/// [`Watch`](crate::Watch) and
/// [`WorkerOptions::watched_by`](crate::WorkerOptions::watched_by)).
///
/// Serialized as an object whose `event` names the variant in snake case,
/// with its fields beside it: `{"event": "restarted", "worker": 3,
/// "restarts": 1}`.
#[derive(Debug, Clone, PartialEq, Eq, Message, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[rtype(result = "()")]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// The worker died without being asked to. A restart follows: at once
    /// for a [supervised](crate::Worker::supervise) worker, else with the next
    /// request.
    Crashed {
        /// Which worker.
        worker: WorkerId,
        /// Exit code, signal, or lost connection.
        reason: CrashReason,
        /// What the worker said before dying, if anything.
        message: Option<String>,
    },
    /// A fresh worker is up in place of a crashed one.
    Restarted {
        /// Which worker.
        worker: WorkerId,
        /// Restarts within the restart window, this one included.
        restarts: u32,
    },
    /// The restart budget is spent: the worker stays down and every request
    /// fails with [`WorkerError::GaveUp`](crate::WorkerError::GaveUp).
    GaveUp {
        /// Which worker.
        worker: WorkerId,
        /// Restarts made within the restart window.
        restarts: u32,
        /// The last crash.
        last: Crash,
    },
}

impl LifecycleEvent {
    /// The worker it happened to.
    pub fn worker(&self) -> WorkerId {
        match self {
            LifecycleEvent::Crashed { worker, .. }
            | LifecycleEvent::Restarted { worker, .. }
            | LifecycleEvent::GaveUp { worker, .. } => *worker,
        }
    }
}
