//! One timer per proxy for all its requests' deadlines.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use actix::prelude::*;

use super::phase::Phase;
use super::{Link, Worker};
use crate::contract::Contract;
use crate::driver::Driver;

/// Wakes the proxy at its requests' deadlines (and periodically while
/// requests are pending, to find abandoned ones).
///
/// One timer per proxy, moved only when a new request's deadline is earlier
/// than the one it is set for: a timer per request would re-arm the
/// runtime's clock on every request, which costs a system call each.
pub(super) struct Timekeeper {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed_for: Option<Instant>,
}

impl Timekeeper {
    pub(super) fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now().into())),
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
        loop {
            if matches!(worker.phase, Phase::Closed) {
                return Poll::Ready(());
            }
            let next = worker.phase.link().and_then(Link::next_check);
            let Some(wanted) = next else {
                return Poll::Pending; // nothing pending: the timer may sleep
            };
            if self.armed_for.is_none_or(|armed| wanted < armed) {
                self.armed_for = Some(wanted);
                self.sleep.as_mut().reset(wanted.into());
            }
            if self.sleep.as_mut().poll(task).is_pending() {
                return Poll::Pending;
            }
            self.armed_for = None;
            let now = Instant::now();
            if let Some(link) = worker.phase.link_mut() {
                link.check_requests(now);
            }
        }
    }
}
