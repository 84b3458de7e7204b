//! The proxy over an in-process worker (the thread driver): the transport
//! for the request table (`requests.rs`). Each request is moved to the
//! worker actor through a typed `Recipient`, without serialization, by a
//! future of its own (the reply actix waits for). The table bounds the
//! requests in flight and queues the rest; the proxy ends a request's
//! future early through its `Signals` (at its deadline, on `Close`, when
//! the worker's actor dies), and lets a queued one go when a slot frees. A
//! panic in the worker's handler resolves every request in flight as
//! `Crashed` with the panic message.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::counters::SharedTally;
use super::requests::{deadline_in, Held, Limits, Request, Requests};
use crate::config::{CrashPolicy, WorkerOptions};
use crate::contract::WorkerMessage;
use crate::driver::LocalConnection;
use crate::error::{CrashReason, WorkerError};
use crate::middleware::trip::{Leg, Trip, Untyped};
use crate::middleware::{Body, Middlewares, Typed};
use crate::panic;
use crate::worker::routes::TypedInboxes;

/// The proxy's state for a worker in this process.
pub(super) struct LocalState {
    typed_inboxes: TypedInboxes,
    /// `None` once joined.
    arbiter: Option<Arbiter>,
    /// The arbiter's thread, whose panic message reports a crash.
    thread: ThreadId,
    /// Shared with the requests' futures (all on the proxy's thread),
    /// which leave it when they end.
    requests: Rc<RefCell<Requests<Signals>>>,
    /// The panic message of the worker's thread, taken once (by the first
    /// request that finds the actor gone, or by the proxy when it learns
    /// the actor ended) and reported by every request in flight.
    crash: Rc<OnceCell<Option<String>>>,
    /// The worker side's middleware.
    middleware: Middlewares,
    /// Publishes the worker's events waiting to be published: called
    /// before a reply is handed on, so that the events emitted before it
    /// go first.
    events: Option<Rc<dyn Fn()>>,
}

/// How the proxy reaches a thread worker's request future.
pub(super) struct Signals {
    /// Ends the request early with this error: its deadline passed, the
    /// worker is closed, or its actor died.
    end: oneshot::Sender<WorkerError>,
    /// Lets a queued request go to the worker; `None` once it may.
    start: Option<oneshot::Sender<()>>,
}

impl Held for Signals {
    /// A caller that goes away drops the request's future, which leaves
    /// the table as it drops (see `Leave`): nothing to look for.
    const SWEPT: bool = false;

    fn abandoned(&self) -> bool {
        false
    }
}

/// Takes a request out of the table when its future ends, or is dropped
/// before (its caller went away), and lets the next queued one go.
struct Leave {
    /// `None` once the request left.
    requests: Option<Rc<RefCell<Requests<Signals>>>>,
    id: u64,
}

impl Leave {
    /// The request ended with `outcome`, or (`None`) its future was dropped
    /// first: it leaves the table, counted, and the next queued one goes.
    fn leave(&mut self, outcome: Option<Result<usize, &WorkerError>>) {
        let Some(requests) = self.requests.take() else {
            return;
        };
        let mut requests = requests.borrow_mut();
        let left = match outcome {
            Some(outcome) => requests.resolve(self.id, outcome),
            None => requests.withdraw(self.id),
        };
        if left.is_some() {
            start_queued(&mut requests);
        }
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.leave(None);
    }
}

/// Lets queued requests go to the worker while slots are free.
fn start_queued(requests: &mut Requests<Signals>) {
    while let Some((_, request)) = requests.start_next() {
        if let Some(start) = request.held.start.take() {
            let _ = start.send(());
        }
    }
}

impl LocalState {
    /// The proxy's state for `link`, and the handle that resolves when the
    /// worker's actor ends.
    pub(super) fn new(
        link: LocalConnection,
        options: &WorkerOptions,
        tally: SharedTally,
    ) -> (Self, JoinHandle<()>) {
        let state = Self {
            typed_inboxes: link.typed_inboxes,
            arbiter: Some(link.arbiter),
            thread: link.thread,
            requests: Rc::new(RefCell::new(Requests::new(Limits::of(options), tally))),
            crash: Rc::default(),
            middleware: link.middleware,
            events: None,
        };
        (state, link.ended)
    }

    /// Calls `publish` before handing on each reply (see `events`).
    pub(super) fn before_replies(&mut self, publish: Option<Rc<dyn Fn()>>) {
        self.events = publish;
    }

    /// The thread the worker runs on, which identifies this link.
    pub(super) fn thread(&self) -> ThreadId {
        self.thread
    }

    /// Why the actor died: the panic message of its thread, if it panicked.
    pub(super) fn crash_message(&self) -> Option<String> {
        crash_message(&self.crash, self.thread)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.requests.borrow().in_flight()
    }

    pub(super) fn queued(&self) -> usize {
        self.requests.borrow().queued()
    }

    /// Resolves once no request is in flight or queued.
    pub(super) fn drained(&self) -> impl std::future::Future<Output = ()> + 'static {
        self.requests.borrow_mut().drained()
    }

    /// Fails waiting requests with `Closed` and stops the worker's arbiter.
    pub(super) fn stop(&mut self) {
        let failed = self.requests.borrow_mut().fail_all(&WorkerError::Closed);
        for signals in failed {
            let _ = signals.end.send(WorkerError::Closed);
        }
        self.stop_arbiter();
    }

    /// The worker's actor died: the requests still running resolve
    /// `Crashed` (with its panic message), and its arbiter is stopped.
    pub(super) fn crashed(&mut self) {
        let message = self.crash_message();
        // Thread workers never retry: the message moved into the worker.
        let never = |_: &str| CrashPolicy::Reject;
        let crash =
            (self.requests.borrow_mut()).crashed(&CrashReason::Panic, &message, never, None);
        for (signals, error) in crash.failed {
            let _ = signals.end.send(error);
        }
        self.stop_arbiter();
    }

    fn stop_arbiter(&self) {
        if let Some(arbiter) = &self.arbiter {
            arbiter.stop();
        }
    }

    /// The earliest deadline of a request in flight or queued.
    pub(super) fn next_check(&self) -> Option<Instant> {
        self.requests.borrow().next_check()
    }

    /// Ends the requests past their deadline; each resolves `Timeout`.
    pub(super) fn check_requests(&mut self, now: Instant) {
        let mut requests = self.requests.borrow_mut();
        for expired in requests.expire(now) {
            let _ = expired.held.end.send(expired.error);
        }
        start_queued(&mut requests);
    }

    /// Resolves once the worker's thread has finished.
    pub(super) fn join(&mut self) -> impl std::future::Future<Output = ()> + 'static {
        self.stop();
        let arbiter = self.arbiter.take();
        async move {
            if let Some(arbiter) = arbiter {
                // Joining a thread blocks; keep it off the proxy's thread.
                let _ = actix_rt::task::spawn_blocking(move || arbiter.join()).await;
            }
        }
    }

    /// Starts request `message`; the future resolves with its outcome, or
    /// `Timeout` once `timeout` has passed.
    pub(super) fn request<M>(
        &self,
        mut message: M,
        options: &WorkerOptions,
        timeout: Duration,
        host_typed: Option<Typed<M>>,
    ) -> LocalBoxFuture<'static, Result<M::Reply, WorkerError>>
    where
        M: WorkerMessage,
    {
        // The request went through the host's typed middleware, if any
        // (`Worker::request` answered otherwise): an outcome known at once
        // passes it back too.
        let trip = Trip::through(Leg::HostTyped, None);
        let at_once = |error, host_typed: &Option<Typed<M>>| {
            let mut outcome = Err(error);
            trip.pass_out(Leg::HostTyped, host_typed, &mut outcome);
            Box::pin(std::future::ready(outcome)) as LocalBoxFuture<'static, _>
        };
        let Some(inbox) = self.typed_inboxes.get::<M>().cloned() else {
            let unknown = crate::ProtocolFailure::UnknownMessage {
                name: M::NAME.into(),
            };
            return at_once(WorkerError::Protocol(unknown), &host_typed);
        };
        // Refused at once when every slot and the queue are taken. (It
        // takes its slot, or place in the queue, when registered below, so
        // that `Status` counts it from the moment the proxy accepted it.)
        let id = {
            let requests = self.requests.borrow();
            if let Err(overloaded) = requests.admit() {
                return at_once(overloaded, &host_typed);
            }
            requests.next_id()
        };
        let mut hooks = Hooks::new(options, &self.middleware, host_typed, id, trip);
        if let Some(hooks) = &mut hooks {
            if let Err(refused) = hooks.request(&mut message) {
                self.requests.borrow_mut().skip_id();
                return Box::pin(std::future::ready(Err(refused)));
            }
        }
        let (end, ended) = oneshot::channel();
        let request = Request {
            message: M::NAME,
            timeout,
            deadline: deadline_in(timeout),
            attempt: 1,
            held: Signals { end, start: None },
        };
        let (span, started) = {
            let mut requests = self.requests.borrow_mut();
            let (registered, send) = requests.register(request, 0);
            debug_assert_eq!(registered, id);
            let started = (!send).then(|| {
                let (start, started) = oneshot::channel();
                if let Some(signals) = requests.held_mut(id) {
                    signals.start = Some(start);
                }
                started
            });
            let span = requests.span_of(id).cloned();
            (span.unwrap_or_else(tracing::Span::none), started)
        };
        let mut leave = Leave {
            requests: Some(self.requests.clone()),
            id,
        };
        let crash = self.crash.clone();
        let thread = self.thread;
        let events = self.events.clone();
        let request = async move {
            let handed = async {
                if let Some(started) = started {
                    // Dropped unsent only once the request was ended,
                    // which `ended` reports first.
                    started.await.map_err(|_| WorkerError::Closed)?;
                }
                match inbox(message).await {
                    Ok(outcome) => outcome,
                    // The actor is gone: its handler panicked. (The proxy
                    // learns it from the actor's end, see `Worker::actor_ended`.)
                    Err(_) => Err(WorkerError::Crashed {
                        reason: CrashReason::Panic,
                        message: crash_message(&crash, thread),
                        attempt: 1,
                    }),
                }
            };
            // Ended early by the timekeeper at the deadline, by `Close`, or
            // by the actor's death.
            let mut outcome = tokio::select! {
                biased;
                Ok(error) = ended => Err(error),
                outcome = handed => outcome,
            };
            if let Some(publish) = &events {
                publish();
            }
            leave.leave(Some(outcome.as_ref().map(|_| 0)));
            if let Some(hooks) = &hooks {
                hooks.back(&mut outcome);
            }
            outcome
        };
        Box::pin(tracing::Instrument::instrument(request, span))
    }
}

/// The panic message of `thread`, taken once into `crash` and shared by
/// every request that reports the crash.
fn crash_message(crash: &OnceCell<Option<String>>, thread: ThreadId) -> Option<String> {
    crash.get_or_init(|| panic::take_message(thread)).clone()
}

/// The middleware a thread worker's request passes after the host's typed
/// chain (which `request.rs` passed): the host's untyped, the worker's
/// untyped, the worker's typed, all on the value; its outcome passes back
/// through those it reached, in reverse, then the host's typed chain.
struct Hooks<M: WorkerMessage> {
    host: Middlewares,
    host_typed: Option<Typed<M>>,
    worker: Middlewares,
    worker_typed: Option<Typed<M>>,
    id: u64,
    /// How far the request got.
    trip: Trip,
}

impl<M: WorkerMessage> Hooks<M> {
    /// The hooks of a request, or `None` if there are none.
    fn new(
        options: &WorkerOptions,
        worker: &Middlewares,
        host_typed: Option<Typed<M>>,
        id: u64,
        trip: Trip,
    ) -> Option<Self> {
        let worker_typed = worker.for_type::<M>();
        let any = options.middleware.has_untyped()
            || worker.has_untyped()
            || host_typed.is_some()
            || worker_typed.is_some();
        any.then(|| Self {
            host: options.middleware.clone(),
            host_typed,
            worker: worker.clone(),
            worker_typed,
            id,
            trip,
        })
    }

    /// Passes the request in; on a refusal, passes the refusal back out
    /// through the middleware it passed, and returns it.
    fn request(&mut self, message: &mut M) -> Result<(), WorkerError> {
        let (trip, id) = (&mut self.trip, self.id);
        let passed = trip
            .pass_in(
                Leg::HostUntyped,
                &self.host,
                Untyped::new(M::NAME, id, Body::Value(message)),
            )
            .map_err(|refused| Leg::HostUntyped.refusal(refused.error))
            .and_then(|()| {
                let request = Untyped::new(M::NAME, id, Body::Value(message));
                trip.pass_in(Leg::WorkerUntyped, &self.worker, request)
                    .map_err(|refused| Leg::WorkerUntyped.refusal(refused.error))
            })
            .and_then(|()| {
                trip.pass_in(Leg::WorkerTyped, &self.worker_typed, message)
                    .map_err(|refused| Leg::WorkerTyped.refusal(refused.error))
            });
        let Err(error) = passed else {
            return Ok(());
        };
        let mut outcome = Err(error);
        self.back(&mut outcome);
        outcome.map(|_| ())
    }

    /// Passes an outcome back out through the middleware the request
    /// passed on its way in, innermost first.
    fn back(&self, outcome: &mut Result<M::Reply, WorkerError>) {
        let (trip, id) = (&self.trip, self.id);
        trip.pass_out(Leg::WorkerTyped, &self.worker_typed, outcome);
        trip.pass_out(
            Leg::WorkerUntyped,
            &self.worker,
            Untyped::value(M::NAME, id, outcome),
        );
        trip.pass_out(
            Leg::HostUntyped,
            &self.host,
            Untyped::value(M::NAME, id, outcome),
        );
        trip.pass_out(Leg::HostTyped, &self.host_typed, outcome);
    }
}
