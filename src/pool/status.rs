//! What a pool says about itself: [`PoolStatus`], answered with a
//! [`PoolReport`] of its members, its queue and its counters; and how the
//! pool gathers it, asking each member for its status and removing those
//! found given up or closed.

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;

use super::WorkerPool;
use crate::contract::Contract;
use crate::driver::Driver;
use crate::proxy::{Status, WorkerState, WorkerStatus};

/// Asks a [`WorkerPool`](crate::WorkerPool) for a [`PoolReport`].
///
/// The pool asks each member for its [`Status`](crate::Status) and answers
/// once all have. A member found to have given up (or closed) is removed
/// then, as after a request it failed with `GaveUp`.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "PoolReport")]
pub struct PoolStatus;

/// A snapshot of a pool, answered to [`PoolStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberReport {
    /// The member's number in this pool, from 1, never reused.
    pub id: u64,
    /// Requests the pool sent it and it has not answered yet.
    pub in_flight: usize,
    /// How long it has had nothing in flight; `None` while busy.
    pub idle_for: Option<Duration>,
    /// The member's own status, as its [`Worker`](crate::Worker) proxy
    /// reports it (pid, state, restarts, counters).
    pub status: WorkerStatus,
}

/// Whether a pool takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolState {
    /// Taking requests.
    Open,
    /// `Close` was received: its members are closing.
    Closing,
    /// Closed: every member is closed; every request gets `Closed`.
    Closed,
}

/// What a pool counts, in a [`PoolReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
