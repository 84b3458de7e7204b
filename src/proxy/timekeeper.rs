//! One alarm per proxy for all its requests' deadlines.

use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use actix::prelude::*;

use super::alarm::Alarm;
use super::phase::Phase;
use super::{Link, Worker};
use crate::contract::Contract;
use crate::driver::Driver;

/// Wakes the proxy at its requests' deadlines (and periodically while
/// requests are pending, to find abandoned ones).
///
/// One alarm per proxy (see [`Alarm`]), moved only when a new request's
/// deadline is earlier than the one it is set for.
pub(super) struct Timekeeper {
    alarm: Alarm,
    /// What the alarm is set for, until it rings.
    armed_for: Option<Instant>,
}

impl Timekeeper {
    pub(super) fn new() -> Self {
        Self {
            alarm: Alarm::new(),
            armed_for: None,
        }
    }
}

impl<C: Contract, D: Driver<C>> ActorFuture<Worker<C, D>> for Timekeeper {
    type Output = ();

    fn poll(
        mut self: Pin<&mut Self>,
        worker: &mut Worker<C, D>,
        _: &mut Context<Worker<C, D>>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        if self.alarm.rang() {
            self.armed_for = None;
        }
        loop {
            if matches!(worker.phase, Phase::Closed) {
                return Poll::Ready(());
            }
            let next = worker.phase.link().and_then(Link::next_check);
            let Some(wanted) = next else {
                return Poll::Pending; // nothing pending: the alarm may stay as it is
            };
            match self.armed_for {
                Some(armed) if armed <= wanted => return Poll::Pending,
                Some(_) => {}
                None => {
                    // Not set (or it rang): the time may have come.
                    let now = Instant::now();
                    if wanted <= now {
                        if let Some(link) = worker.phase.link_mut() {
                            link.check_requests(now);
                        }
                        continue;
                    }
                }
            }
            self.armed_for = Some(wanted);
            self.alarm.set(wanted, task.waker());
            return Poll::Pending;
        }
    }
}
