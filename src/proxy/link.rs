//! How the proxy reaches (or holds) its worker: a [`Link`] over a byte
//! stream, in-process, or parked. Every question the proxy asks of a link
//! whatever its kind (its pid, what is in flight, when to look at its
//! deadlines, how to let go of it) is a method here, so that the rest of
//! the proxy does not match on its kinds.

use std::time::Instant;

use actix::prelude::*;
use futures::future::LocalBoxFuture;

use super::connection::Parked;
use super::{counters, events, local, stream, Worker};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::{Connection, ConnectionKind, Driver, ProcessHandle};
use crate::error::WorkerError;
use crate::socket::session::Session;

/// How the proxy reaches its worker.
// One per worker, matched on every request: boxing the big variant would
// save nothing worth a pointer chase.
#[allow(clippy::large_enum_variant)]
pub(super) enum Link {
    /// A byte stream: a child process, or a custom stream driver.
    Stream(stream::StreamLink),
    /// A worker on a thread of this process.
    Local(local::LocalState),
    /// A worker process left running without a connection (only while
    /// `Close` ends it: see `Phase::Parked`).
    Parked(Parked),
}

impl Link {
    /// The proxy's side of a freshly started worker.
    pub(super) fn start<C: Contract, D: Driver<C>>(
        connection: Connection,
        options: &WorkerOptions,
        tally: &counters::SharedTally,
        events: &events::Hub<C::Event>,
        ctx: &mut Context<Worker<C, D>>,
    ) -> Self {
        let tally = tally.clone();
        match connection.kind {
            ConnectionKind::Stream(stream) => {
                let link = stream::StreamLink::start(stream, options, tally, ctx);
                events.stream_started(link.id());
                Link::Stream(link)
            }
            ConnectionKind::Local(mut local) => {
                let worker_events = std::mem::replace(&mut local.events, Box::new(()));
                let (mut state, ended) = local::LocalState::new(local, options, tally);
                state.before_replies(events::local_started(events, worker_events, ctx));
                let thread = state.thread();
                ctx.spawn(actix::fut::wrap_future(ended).map(
                    move |ended, worker: &mut Worker<C, D>, ctx| {
                        worker.actor_ended(thread, ended, ctx)
                    },
                ));
                Link::Local(state)
            }
        }
    }

    /// The worker's process id, if it is a process.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Link::Stream(link) => link.pid(),
            Link::Parked(parked) => Some(parked.pid()),
            Link::Local(_) => None,
        }
    }

    /// Requests sent to the worker and not yet answered, and requests
    /// waiting for an in-flight slot.
    pub(super) fn load(&self) -> (usize, usize) {
        match self {
            Link::Stream(link) => (link.in_flight(), link.queued()),
            Link::Local(local) => (local.in_flight(), local.queued()),
            Link::Parked(_) => (0, 0),
        }
    }

    /// The worker process, if the worker is one.
    pub(super) fn process_mut(&mut self) -> Option<&mut ProcessHandle> {
        match self {
            Link::Stream(link) => link.process_mut(),
            Link::Parked(parked) => Some(parked.process_mut()),
            Link::Local(_) => None,
        }
    }

    /// How to reach a child worker again, if the worker is one.
    pub(super) fn session(&self) -> Option<&Session> {
        match self {
            Link::Stream(link) => link.session.as_ref(),
            Link::Parked(parked) => Some(parked.session()),
            Link::Local(_) => None,
        }
    }

    /// Whether the worker outlives this host.
    pub(super) fn is_detached(&self) -> bool {
        self.session().is_some_and(Session::is_detached)
    }

    /// When the proxy next needs to look at the link's requests.
    pub(super) fn next_check(&self) -> Option<Instant> {
        match self {
            Link::Stream(link) => link.next_check(),
            Link::Local(local) => local.next_check(),
            Link::Parked(_) => None,
        }
    }

    /// Times out the requests past their deadline (and, over a stream,
    /// cancels those whose caller went away).
    pub(super) fn check_requests(&mut self, now: Instant) {
        match self {
            Link::Stream(link) => link.check_requests(now),
            Link::Local(local) => local.check_requests(now),
            Link::Parked(_) => {}
        }
    }

    /// Resolves once no request is pending (at once if none is).
    pub(super) fn drained(&mut self) -> LocalBoxFuture<'static, ()> {
        match self {
            Link::Stream(link) => Box::pin(link.drained()),
            Link::Local(local) => Box::pin(local.drained()),
            Link::Parked(_) => Box::pin(std::future::ready(())),
        }
    }

    /// Asks the worker to end: requests still waiting fail `Closed`; a
    /// process is sent a Shutdown frame (if connected). Resolves `true`
    /// once the worker has ended by itself within `grace`.
    pub(super) fn shut_down(
        &mut self,
        grace: std::time::Duration,
    ) -> LocalBoxFuture<'static, bool> {
        match self {
            Link::Stream(link) => {
                link.fail_all(|| WorkerError::Closed);
                link.shut_down();
                Box::pin(link.exited_within(grace))
            }
            // No connection to say it on: start with SIGTERM.
            Link::Parked(_) => Box::pin(std::future::ready(false)),
            Link::Local(local) => {
                let joined = local.join();
                Box::pin(async move {
                    joined.await;
                    true
                })
            }
        }
    }

    /// Lets go of the worker at once: requests still waiting resolve
    /// `Closed`; a child is killed (and reaped by its watcher) unless
    /// detached; a thread worker's arbiter is stopped. What is left is
    /// dropped with the link (a child's socket directory with its session).
    pub(super) fn let_go(mut self) {
        match &mut self {
            Link::Stream(link) => {
                link.fail_all(|| WorkerError::Closed);
                // A detached worker parks when the connection drops.
                if !link.is_detached() {
                    link.kill();
                }
            }
            // Dropped: killed unless detached.
            Link::Parked(_) => {}
            Link::Local(local) => local.stop(),
        }
    }
}
