//! The proxy over an in-process worker (the thread driver): each request is
//! moved to the worker actor through a typed `Recipient`, without
//! serialization. In-flight requests are bounded by a semaphore; a panic in
//! the worker's handler resolves every request in flight as `Crashed` with
//! the panic message.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::ThreadId;

use std::time::Instant;
use tokio::task::JoinHandle;

use futures::future::{AbortHandle, Abortable, Aborted, LocalBoxFuture};

use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::counters::SharedTally;
use crate::config::WorkerOptions;
use crate::contract::WorkerMessage;
use crate::driver::LocalLink;
use crate::error::{CrashReason, WorkerError};
use crate::middleware::{Body, Direction, Middlewares, Passage, Side, Typed};
use crate::panic;
use crate::worker::routes::Deliveries;

/// The proxy's state for a worker in this process.
pub(super) struct LocalState {
    deliveries: Deliveries,
    /// `None` once joined.
    arbiter: Option<Arbiter>,
    /// The arbiter's thread, whose panic message reports a crash.
    thread: ThreadId,
    shared: Arc<Shared>,
    /// The requests in flight, by deadline; shared with their tasks (all on
    /// the proxy's thread), which remove themselves when done.
    running: Rc<RefCell<Running>>,
    /// The worker side's middleware.
    middleware: Middlewares,
    tally: SharedTally,
    /// Publishes the worker's events waiting to be published: called
    /// before a reply is handed on, so that the events emitted before it
    /// go first.
    events: Option<Rc<dyn Fn()>>,
}

/// Requests in flight to a thread worker, so that one timer per proxy (the
/// `Timekeeper`) can end those past their deadline, and `Close` all of them.
#[derive(Default)]
struct Running {
    next_id: u64,
    deadlines: BTreeSet<(Instant, u64)>,
    aborts: HashMap<u64, (Instant, AbortHandle)>,
}

impl Running {
    fn remove(&mut self, id: u64) -> Option<AbortHandle> {
        let (deadline, abort) = self.aborts.remove(&id)?;
        self.deadlines.remove(&(deadline, id));
        Some(abort)
    }
}

/// Takes a finished request out of the table, however it finished.
struct Leave {
    running: Rc<RefCell<Running>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.running.borrow_mut().remove(self.id);
    }
}

/// What the request futures share with the proxy.
struct Shared {
    /// One permit per request allowed in flight.
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    max_queued: usize,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    /// Set on `Close`: requests ended from then on resolve `Closed`.
    closed: AtomicBool,
    /// Set by the first request that finds the actor dead: the panic
    /// message every request in flight reports.
    crash: OnceLock<Option<String>>,
}

impl LocalState {
    /// The proxy's state for `link`, and the handle that resolves when the
    /// worker's actor ends.
    pub(super) fn new(
        link: LocalLink,
        options: &WorkerOptions,
        tally: SharedTally,
    ) -> (Self, JoinHandle<()>) {
        let state = Self {
            deliveries: link.deliveries,
            arbiter: Some(link.arbiter),
            thread: link.thread,
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(options.max_in_flight)),
                max_in_flight: options.max_in_flight,
                max_queued: options.max_queued,
                queued: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                crash: OnceLock::new(),
            }),
            running: Rc::default(),
            middleware: link.middleware,
            tally,
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
        self.shared.crash_message(self.thread)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.shared.max_in_flight - self.shared.permits.available_permits()
    }

    pub(super) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Resolves once no request is in flight or queued: it then holds
    /// every slot for a moment (queued requests go first, the semaphore
    /// being fair).
    pub(super) fn drained(&self) -> impl std::future::Future<Output = ()> + 'static {
        let permits = self.shared.permits.clone();
        let all = u32::try_from(self.shared.max_in_flight).unwrap_or(u32::MAX);
        async move {
            let _ = permits.acquire_many_owned(all).await;
        }
    }

    /// Fails waiting requests with `Closed` and stops the worker's arbiter.
    pub(super) fn stop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.permits.close();
        self.end();
    }

    /// The worker's actor died: the requests still running resolve
    /// `Crashed` (with its panic message), and its arbiter is stopped.
    pub(super) fn crashed(&mut self) {
        let _ = self.crash_message();
        self.end();
    }

    /// Ends every request still running and stops the worker's arbiter.
    fn end(&mut self) {
        let running = std::mem::take(&mut *self.running.borrow_mut());
        for (_, abort) in running.aborts.into_values() {
            abort.abort();
        }
        if let Some(arbiter) = &self.arbiter {
            arbiter.stop();
        }
    }

    /// The earliest deadline of a request in flight.
    pub(super) fn next_check(&self) -> Option<Instant> {
        Some(self.running.borrow().deadlines.first()?.0)
    }

    /// Ends the requests past their deadline; each resolves `Timeout`.
    pub(super) fn check_requests(&mut self, now: Instant) {
        let mut running = self.running.borrow_mut();
        while let Some(&(deadline, id)) = running.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(abort) = running.remove(id) {
                abort.abort();
            }
        }
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

    /// Starts request `message`; the future resolves with its outcome.
    pub(super) fn request<M>(
        &self,
        mut message: M,
        options: &WorkerOptions,
        host_typed: Option<Typed<M>>,
    ) -> LocalBoxFuture<'static, Result<M::Reply, WorkerError>>
    where
        M: WorkerMessage,
    {
        let timeout = options.timeout_of(M::NAME);
        // An outcome known at once still passes the host's typed
        // middleware, which has seen the request.
        let at_once = |error| {
            let mut outcome = Err(error);
            if let Some(typed) = &host_typed {
                typed.reply(&mut outcome);
            }
            Box::pin(std::future::ready(outcome)) as LocalBoxFuture<'static, _>
        };
        let Some(deliver) = self.deliveries.get::<M>().cloned() else {
            let unknown = crate::ProtocolFailure::UnknownMessage {
                name: M::NAME.into(),
            };
            return at_once(WorkerError::Protocol(unknown));
        };
        let shared = self.shared.clone();
        let thread = self.thread;
        // Take the slot (or the place in the queue) now, so that `Status`
        // counts this request from the moment the proxy accepted it.
        let slot = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => Slot::InFlight(permit),
            Err(_) => {
                if shared.queued.fetch_add(1, Ordering::Relaxed) >= shared.max_queued {
                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                    return at_once(WorkerError::Overloaded {
                        limit: shared.max_queued,
                    });
                }
                Slot::Queued
            }
        };
        let (abort, registration) = AbortHandle::new_pair();
        let id = {
            let mut running = self.running.borrow_mut();
            // Numbered from 1, as over a byte stream.
            running.next_id += 1;
            let id = running.next_id;
            let deadline = Instant::now() + timeout;
            running.deadlines.insert((deadline, id));
            running.aborts.insert(id, (deadline, abort));
            id
        };
        let leave = Leave {
            running: self.running.clone(),
            id,
        };
        let hooks = Hooks::new(options, &self.middleware, host_typed, id);
        if let Some(hooks) = &hooks {
            if let Err(refused) = hooks.request(&mut message) {
                if let Slot::Queued = slot {
                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                }
                return Box::pin(std::future::ready(Err(refused)));
            }
        }
        let counted = self.tally.borrow_mut().sent(M::NAME, 0);
        let tally = self.tally.clone();
        let events = self.events.clone();
        let span = tracing::debug_span!("request", message = M::NAME, id, attempt = 1u32);
        let request = async move {
            let _leave = leave;
            let outcome = async {
                let _permit = match slot {
                    Slot::InFlight(permit) => permit,
                    Slot::Queued => {
                        let permit = shared.permits.clone().acquire_owned().await;
                        shared.queued.fetch_sub(1, Ordering::Relaxed);
                        permit.map_err(|_| WorkerError::Closed)?
                    }
                };
                match deliver(message).await {
                    Ok(outcome) => outcome,
                    Err(_) if shared.closed.load(Ordering::Relaxed) => Err(WorkerError::Closed),
                    // The actor is gone: its handler panicked. (The proxy
                    // learns it from the actor's end, see `Worker::actor_ended`.)
                    Err(_) => Err(WorkerError::Crashed {
                        reason: CrashReason::Panic,
                        message: shared.crash_message(thread),
                        attempt: 1,
                    }),
                }
            };
            // Ended early by `Close`, by the actor's death, or by the
            // timekeeper at the deadline.
            let mut outcome = match Abortable::new(outcome, registration).await {
                Ok(outcome) => outcome,
                Err(Aborted) if shared.closed.load(Ordering::Relaxed) => Err(WorkerError::Closed),
                Err(Aborted) if shared.crash.get().is_some() => Err(WorkerError::Crashed {
                    reason: CrashReason::Panic,
                    message: shared.crash_message(thread),
                    attempt: 1,
                }),
                Err(Aborted) => Err(WorkerError::Timeout {
                    after: timeout,
                    message: M::NAME,
                }),
            };
            if let Some(publish) = &events {
                publish();
            }
            tally.borrow_mut().ended_at(counted, outcome.is_ok(), 0);
            match &outcome {
                Ok(_) => tracing::debug!("answered"),
                Err(error) => tracing::debug!(%error, "failed"),
            }
            if let Some(hooks) = &hooks {
                hooks.back(Stage::Handled, &mut outcome);
            }
            outcome
        };
        Box::pin(tracing::Instrument::instrument(request, span))
    }
}

/// The middleware a thread worker's request passes, in order: the host's
/// untyped, the worker's untyped, the worker's typed (the host's typed
/// chain ran before, in `request.rs`); its outcome passes them in reverse,
/// then the host's typed chain.
struct Hooks<M: WorkerMessage> {
    host: Middlewares,
    host_typed: Option<Typed<M>>,
    worker: Middlewares,
    worker_typed: Option<Typed<M>>,
    id: u64,
    started: Instant,
}

/// How far a request got through [`Hooks`].
#[derive(Clone, Copy)]
enum Stage {
    /// Refused by the host's untyped middleware at this position.
    Host(usize),
    /// Refused by the worker's untyped middleware at this position.
    Worker(usize),
    /// Refused by the worker's typed middleware at this position.
    WorkerTyped(usize),
    /// Handed to the worker's actor.
    Handled,
}

impl<M: WorkerMessage> Hooks<M> {
    /// The hooks of a request, or `None` if there are none.
    fn new(
        options: &WorkerOptions,
        worker: &Middlewares,
        host_typed: Option<Typed<M>>,
        id: u64,
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
            started: Instant::now(),
        })
    }

    /// Passes the request in; on a refusal, passes the refusal back out
    /// through the middleware it passed, and returns it.
    fn request(&self, message: &mut M) -> Result<(), WorkerError> {
        let refused = self
            .untyped(&self.host, Side::Host, Direction::Outgoing, message)
            .map_err(|r| (Stage::Host(r.at), WorkerError::Rejected(r.error)))
            .and_then(|()| {
                self.untyped(&self.worker, Side::Worker, Direction::Incoming, message)
                    .map_err(|r| (Stage::Worker(r.at), WorkerError::Remote(r.error)))
            })
            .and_then(|()| match &self.worker_typed {
                Some(typed) => typed
                    .request(message)
                    .map_err(|r| (Stage::WorkerTyped(r.at), WorkerError::Remote(r.error))),
                None => Ok(()),
            });
        let Err((stage, error)) = refused else {
            return Ok(());
        };
        let mut outcome = Err(error);
        self.back(stage, &mut outcome);
        outcome.map(|_| ())
    }

    /// An outcome passing a chain.
    fn outcome(
        side: Side,
        direction: Direction,
        id: u64,
        outcome: &mut Result<M::Reply, WorkerError>,
    ) -> Passage<'_> {
        let body = match outcome {
            Ok(reply) => Body::Value(reply),
            Err(error) => Body::Failed(error),
        };
        Passage::new(side, direction, M::NAME, id, body)
    }

    fn untyped(
        &self,
        chain: &Middlewares,
        side: Side,
        direction: Direction,
        message: &mut M,
    ) -> Result<(), crate::middleware::Refused> {
        let body = Body::Value(message);
        chain.request(&mut Passage::new(side, direction, M::NAME, self.id, body))
    }

    /// Passes an outcome back out through the middleware the request
    /// passed on its way in (up to `stage`).
    fn back(&self, stage: Stage, outcome: &mut Result<M::Reply, WorkerError>) {
        if let Some(typed) = &self.worker_typed {
            match stage {
                Stage::WorkerTyped(at) => typed.reply_before(at, outcome),
                Stage::Handled => typed.reply(outcome),
                Stage::Host(_) | Stage::Worker(_) => {}
            }
        }
        let elapsed = self.started.elapsed();
        let (worker, host) = (&self.worker, &self.host);
        let out = |outcome| Self::outcome(Side::Worker, Direction::Outgoing, self.id, outcome);
        match stage {
            Stage::Worker(at) => worker.response_before(at, &mut out(outcome).after(elapsed)),
            Stage::WorkerTyped(_) | Stage::Handled => {
                worker.response(&mut out(outcome).after(elapsed))
            }
            Stage::Host(_) => {}
        }
        let mut back_in =
            Self::outcome(Side::Host, Direction::Incoming, self.id, outcome).after(elapsed);
        match stage {
            Stage::Host(at) => host.response_before(at, &mut back_in),
            _ => host.response(&mut back_in),
        }
        if let Some(typed) = &self.host_typed {
            typed.reply(outcome);
        }
    }
}

/// Where a request waits to be handed to the worker.
enum Slot {
    InFlight(OwnedSemaphorePermit),
    Queued,
}

impl Shared {
    /// The panic message of the worker's thread, taken once and shared by
    /// every request that reports the crash.
    fn crash_message(&self, thread: ThreadId) -> Option<String> {
        self.crash
            .get_or_init(|| panic::take_message(thread))
            .clone()
    }
}
