//! [`Status`]: a snapshot of a worker, and [`WorkerState`], the public
//! view of where it is in its life (derived from the proxy's `Phase`).
//! Both are `Serialize`, for a status endpoint; how their durations are
//! written ([`seconds`]) is here too, for the pool's report.

use std::time::Duration;

use actix::prelude::*;
use serde::{Serialize, Serializer};

use super::{Accepted, Worker};
use crate::contract::Contract;
use crate::driver::Driver;
use crate::error::{Crash, CrashReason};

/// Asks for a [`WorkerStatus`].
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "WorkerStatus")]
pub struct Status;

/// A snapshot of a worker, answered to [`Status`].
///
/// `Serialize`, to serve as it is (say as JSON from a `/status` endpoint).
/// Durations are written as seconds in a float, in a field named with
/// `_secs` (`uptime_secs`); the other fields keep their names; `state` is
/// an object tagged by `kind` (see [`WorkerState`]).
///
/// ```
/// # use isolated_workers::{WorkerState, WorkerStatus};
/// fn status_json(status: &WorkerStatus) -> serde_json::Value {
///     serde_json::to_value(status).expect("a status always serializes")
/// }
/// // {"id": 1, "pid": 4242, "state": {"kind": "running"}, "in_flight": 0,
/// //  "queued": 0, "restarts": 0, "detached": false, "uptime_secs": 12.5,
/// //  "counters": {"by_message": {"ping": {"sent": 3, "answered": 3, "failed": 0}},
/// //               "crashes": 0, "restarts": 0, "bytes_out": 42, "bytes_in": 51}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Which proxy this is (as named in its [`LifecycleEvent`](super::LifecycleEvent)s).
    pub id: super::WorkerId,
    /// The worker's process id (child-process workers).
    pub pid: Option<u32>,
    /// Where the worker is in its life.
    pub state: WorkerState,
    /// Requests sent to the worker and not yet answered.
    pub in_flight: usize,
    /// Requests waiting for an in-flight slot.
    pub queued: usize,
    /// Fresh workers started after crashes, within the restart window.
    pub restarts: u32,
    /// Whether the worker outlives the host (see
    /// [`Detach`](crate::proxy::Detach)).
    pub detached: bool,
    /// How long the current worker has been running (since it was
    /// spawned, restarted, or attached to). Serialized as `uptime_secs`.
    #[serde(rename = "uptime_secs", serialize_with = "seconds")]
    pub uptime: Duration,
    /// What the proxy has counted.
    pub counters: super::Counters,
}

/// Where a worker is in its life.
///
/// Serialized as an object whose `kind` names the variant in snake case,
/// with the variant's fields beside it: `{"kind": "running"}`,
/// `{"kind": "crashed", "reason": {..}, "message": "boom"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Serving requests.
    Running,
    /// The connection was closed with [`Disconnect`](crate::proxy::Disconnect);
    /// the worker runs on, keeping its state, until
    /// [`Reconnect`](crate::proxy::Reconnect).
    Disconnected,
    /// `Close` was received; shutting down.
    Closing,
    /// Closed: the worker is gone and its resources are released.
    Closed,
    /// The worker died without being asked to. A fresh one is started at
    /// once if the worker is [supervised](crate::Worker::supervise), else
    /// by the next request.
    Crashed {
        /// Exit code, signal, or lost connection.
        reason: CrashReason,
        /// What the worker said before dying, if anything.
        message: Option<String>,
    },
    /// The worker crashed more often than the restart budget allows; the
    /// proxy no longer restarts it and fails every request.
    GaveUp {
        /// Restarts made within the restart window.
        restarts: u32,
        /// The last crash.
        last: Crash,
    },
}

/// Writes `duration` as seconds in a float: what a status reader (a
/// dashboard, `jq`) can compare and plot without knowing serde's
/// `{secs, nanos}` shape.
pub(crate) fn seconds<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl<C: Contract, D: Driver<C>> Accepted<C, D> for Status {
    type Response = MessageResult<Status>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        let parked = worker.phase.parked();
        let link = worker.phase.link();
        let (in_flight, queued) = link.map_or((0, 0), |link| link.load());
        MessageResult(WorkerStatus {
            id: worker.id,
            pid: parked
                .map(|parked| parked.pid())
                .or_else(|| link.and_then(|link| link.pid())),
            state: worker.phase.state(),
            in_flight,
            queued,
            restarts: worker.restart.count(),
            detached: parked.is_some_and(|parked| parked.session().is_detached())
                || link.is_some_and(|link| link.is_detached()),
            uptime: worker.started.elapsed(),
            counters: worker.tally.borrow().snapshot(),
        })
    }
}
