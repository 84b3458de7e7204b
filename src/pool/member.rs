//! One member of a pool, as the pool keeps it: the address of its worker
//! proxy, and what the pool counts about it.

use std::time::Instant;

use actix::Addr;

use crate::contract::Contract;
use crate::driver::Driver;
use crate::proxy::Worker;

/// A member as the pool keeps it.
pub(super) struct Member<C: Contract, D: Driver<C>> {
    /// The member's number in the pool, from 1, never reused: a reply
    /// finds its member by it, even after members before it left.
    pub(super) id: u64,
    /// Its worker proxy, to which the pool sends its requests.
    pub(super) worker: Addr<Worker<C, D>>,
    /// Requests the pool sent it that are not answered yet.
    pub(super) in_flight: usize,
    /// Since when it has had nothing in flight; `None` while busy.
    pub(super) idle_since: Option<Instant>,
    /// Whether a timer will look at it after the idle timeout (at most one
    /// per member, however often it goes idle).
    pub(super) idle_check: bool,
}

impl<C: Contract, D: Driver<C>> Member<C, D> {
    /// Member `id`, just started: nothing in flight, idle from now.
    pub(super) fn new(id: u64, worker: Addr<Worker<C, D>>) -> Self {
        Self {
            id,
            worker,
            in_flight: 0,
            idle_since: Some(Instant::now()),
            idle_check: false,
        }
    }

    /// One more request sent to it.
    pub(super) fn took(&mut self) {
        self.in_flight += 1;
        self.idle_since = None;
    }

    /// One of its requests ended; answers whether it is now idle.
    pub(super) fn finished(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.idle_since = Some(Instant::now());
        }
        self.in_flight == 0
    }
}
