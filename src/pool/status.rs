//! What a pool says about itself: [`PoolStatus`], answered with a
//! [`PoolReport`] of its members, its queue and its counters (all
//! `Serialize`, for a status endpoint), and [`Status`], answered with one
//! [`WorkerStatus`] for the whole pool, as a lone worker answers it; and
//! how the pool gathers them, asking each member for its status and
//! removing those found given up or closed.

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use serde::Serialize;

use super::WorkerPool;
use crate::contract::Contract;
use crate::driver::Driver;
use crate::proxy::{seconds, Counters, Status, WorkerState, WorkerStatus};

/// Asks a [`WorkerPool`](crate::WorkerPool) for a [`PoolReport`].
///
/// The pool asks each member for its [`Status`](crate::Status) and answers
/// once all have. A member found to have given up (or closed) is removed
/// then, as after a request it failed with `GaveUp`.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "PoolReport")]
pub struct PoolStatus;

/// A snapshot of a pool, answered to [`PoolStatus`].
///
/// `Serialize`, as [`WorkerStatus`] is (durations as seconds in a float,
/// in fields named with `_secs`); `state` as `"open"`, `"closing"` or
/// `"closed"`. The totals over every member the pool has had are in
/// [`counters`](Self::counters) (`crashes`, `restarts`, `answered`,
/// `failed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolReport {
    /// Whether the pool takes requests.
    pub state: PoolState,
    /// Its members, oldest first.
    pub members: Vec<MemberReport>,
    /// Members being started (and those that joined while this report
    /// was gathered).
    pub starting: usize,
    /// Requests waiting for a member.
    pub queued: usize,
    /// What the pool has counted since it started.
    pub counters: PoolCounters,
}

impl PoolReport {
    /// Requests in flight on all members together.
    pub fn in_flight(&self) -> usize {
        self.members.iter().map(|member| member.in_flight).sum()
    }

    /// The members' process ids (child-process members only).
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|member| member.status.pid)
            .collect()
    }
}

/// One member of a pool, in a [`PoolReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MemberReport {
    /// The member's number in this pool, from 1, never reused.
    pub id: u64,
    /// Requests the pool sent it and it has not answered yet.
    pub in_flight: usize,
    /// How long it has had nothing in flight; `None` while busy.
    /// Serialized as `idle_for_secs`.
    #[serde(rename = "idle_for_secs", serialize_with = "optional_seconds")]
    pub idle_for: Option<Duration>,
    /// The member's own status, as its [`Worker`](crate::Worker) proxy
    /// reports it (pid, state, restarts, counters).
    pub status: WorkerStatus,
}

/// Whether a pool takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PoolState {
    /// Taking requests.
    Open,
    /// `Close` was received: its members are closing.
    Closing,
    /// Closed: every member is closed; every request gets `Closed`.
    Closed,
}

/// What a pool counts, in a [`PoolReport`]: since it started, over every
/// member it has had (those replaced or retired since included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolCounters {
    /// Requests handed to a member.
    pub dispatched: u64,
    /// Requests a member answered with a reply.
    pub answered: u64,
    /// Requests a member answered with an error (any [`WorkerError`](crate::WorkerError)).
    pub failed: u64,
    /// Requests sent on to another member after theirs gave up, because
    /// their crash policy retries them.
    pub rerouted: u64,
    /// Requests whose caller gave up before they were answered (dropped
    /// while queued or in flight).
    pub abandoned: u64,
    /// Requests that timed out while waiting in the queue.
    pub expired: u64,
    /// Requests refused because the queue was full.
    pub overloaded: u64,
    /// Members started, those the pool began with included.
    pub started: u64,
    /// Members closed after idling past the idle timeout.
    pub retired: u64,
    /// Members removed because they gave up (or closed), to be replaced.
    pub replaced: u64,
    /// Members that failed to start.
    pub start_failures: u64,
    /// Times a member's worker died without being asked to (each member's
    /// [`Counters::crashes`](crate::proxy::Counters::crashes), summed, and
    /// kept when the member leaves the pool).
    pub crashes: u64,
    /// Fresh workers members started after crashes (their
    /// [`Counters::restarts`](crate::proxy::Counters::restarts), summed
    /// likewise).
    pub restarts: u64,
}

/// Writes `duration`, if any, as [`seconds`].
fn optional_seconds<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => seconds(duration, serializer),
        None => serializer.serialize_none(),
    }
}

impl PoolReport {
    /// The pool as one worker: what it answers to [`Status`] (see
    /// [`WorkerPool`](crate::WorkerPool)). `id` and `uptime` are the
    /// pool's own.
    pub(super) fn as_worker(&self, id: crate::proxy::WorkerId, uptime: Duration) -> WorkerStatus {
        let mut counters = Counters::default();
        for member in &self.members {
            let theirs = &member.status.counters;
            for (message, counts) in &theirs.by_message {
                let ours = counters.by_message.entry(message).or_default();
                ours.sent += counts.sent;
                ours.answered += counts.answered;
                ours.failed += counts.failed;
            }
            counters.bytes_out += theirs.bytes_out;
            counters.bytes_in += theirs.bytes_in;
        }
        // The pool's totals, which outlive the members.
        counters.crashes = self.counters.crashes;
        counters.restarts = self.counters.restarts;
        let members_queued: usize = self.members.iter().map(|m| m.status.queued).sum();
        WorkerStatus {
            id,
            pid: None,
            state: match self.state {
                PoolState::Open => WorkerState::Running,
                PoolState::Closing => WorkerState::Closing,
                PoolState::Closed => WorkerState::Closed,
            },
            in_flight: self.in_flight(),
            queued: self.queued + members_queued,
            restarts: u32::try_from(self.counters.restarts).unwrap_or(u32::MAX),
            detached: false,
            uptime,
            counters,
        }
    }
}

impl<C: Contract, D: Driver<C> + Clone> WorkerPool<C, D> {
    /// Each member's id and `Status` (`None` if its proxy is gone).
    pub(super) fn member_statuses(
        &self,
    ) -> impl Future<Output = Vec<(u64, Option<WorkerStatus>)>> + 'static {
        let asks: Vec<_> = self
            .members
            .iter()
            .map(|member| {
                let id = member.id;
                let asked = member.worker.send(Status);
                async move { (id, asked.await.ok()) }
            })
            .collect();
        join_all(asks)
    }

    /// The report answered to `PoolStatus`, from the members' `statuses`;
    /// removes members found given up or closed.
    pub(super) fn report(
        &mut self,
        statuses: Vec<(u64, Option<WorkerStatus>)>,
        ctx: &mut Context<Self>,
    ) -> PoolReport {
        let mut members = Vec::new();
        for (id, status) in statuses {
            let Some(index) = self.position(id) else {
                continue; // it left the pool meanwhile
            };
            let gone = status.as_ref().is_none_or(|status| {
                matches!(
                    status.state,
                    WorkerState::GaveUp { .. } | WorkerState::Closed
                )
            });
            match status {
                _ if gone && self.state == PoolState::Open => self.replace(index, ctx),
                Some(status) => {
                    let member = &self.members[index];
                    members.push(MemberReport {
                        id,
                        in_flight: member.in_flight,
                        idle_for: member.idle_since.map(|since| since.elapsed()),
                        status,
                    });
                }
                None => {}
            }
        }
        // Members that joined while the statuses were gathered are not
        // listed; they count as still starting.
        let joined = self.members.iter().filter(|member| {
            !members
                .iter()
                .any(|listed: &MemberReport| listed.id == member.id)
        });
        let starting = self.starting + joined.count();
        PoolReport {
            state: self.state,
            members,
            starting,
            queued: self.queue.len(),
            counters: self.counters.clone(),
        }
    }
}
