//! The proxy's request table, one for both links: ids, deadlines, the
//! in-flight bound and the queue behind it, abandoned callers, drain
//! waiters, crashes, counting and each request's span. It is plain data,
//! with no actix and no I/O in it: each operation says what the transport
//! must do (write these requests now, cancel those, resolve these callers
//! with this error) and the transport does it. A transport keeps what it
//! needs per request in `T` ([`Held`]): the byte-stream link its encoded
//! payload and caller, the in-process link the signals that end or start
//! the request's future.
//!
//! What a request goes through in the table:
//!
//! ```text
//!   admit ──(queue full)──► refused: Overloaded
//!     │
//!  register ──(a slot free)──────────────► in flight ──► resolved
//!     │                                       ▲    (answered, or failed)
//!     └──(no slot free)──► queued ─start_next─┘
//!
//!   queued or in flight ──► expired (deadline passed, or caller gone)
//!                       ──► withdrawn (the transport saw the caller go)
//!                       ──► failed (fail_all: close, disconnect)
//!                       ──► crashed: failed, or carried over to a fresh
//!                           worker's table (resubmit)
//! ```
//!
//! | from | operation | to | the transport then |
//! |---|---|---|---|
//! | — | `admit`, every slot taken and the queue full | refused | answers `Overloaded` at once |
//! | — | `register`, a slot free | in flight | writes (or hands over) the request |
//! | — | `register`, no slot free | queued | nothing yet |
//! | queued | `start_next`, once a slot freed | in flight | writes it |
//! | in flight | `resolve` | gone | hands its caller the outcome |
//! | either | `expire`: deadline passed, or caller gone | gone | cancels it if in flight; resolves `Timeout` |
//! | either | `withdraw`: the caller went | gone | nothing (nobody waits) |
//! | either | `fail_all` (close, disconnect) | gone | resolves each with the error |
//! | either | `crashed` | gone | resolves the failed `Crashed`; resubmits the carried to a fresh worker |
//!
//! Once the table is empty, whoever waits for it to drain is told.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::counters::{CountsIndex, SharedTally};
use crate::config::{CrashPolicy, WorkerOptions};
use crate::error::{CrashReason, WorkerError};
use crate::ids::IdMap;
use crate::waiters::Waiters;

/// How often, while requests are pending, the table looks for requests
/// whose caller went away (for transports that need it, see
/// [`Held::SWEPT`]).
const ABANDONED_SWEEP: Duration = Duration::from_millis(100);

/// The caller of one request over a byte stream, with the type knowledge
/// to decode its reply.
pub(super) trait Caller {
    /// Hands the caller the outcome: the reply's payload, or the error.
    fn resolve(self: Box<Self>, outcome: Result<Bytes, WorkerError>);
    /// Whether the caller dropped its future, so nobody waits any more.
    fn hung_up(&self) -> bool;
}

/// Where a request's caller is attached once actix hands over its reply
/// channel (just after the proxy registered the request; see `Reply`).
pub(super) trait Attach {
    /// Attaches the caller that waits for request `id`, if it is pending.
    fn attach(&self, id: u64, caller: Box<dyn Caller>);
}

/// What a transport keeps in the table per request.
pub(super) trait Held {
    /// Whether the table must look for requests whose caller went away:
    /// true where a caller can leave without the transport hearing of it.
    const SWEPT: bool;

    /// Whether nobody waits for the request's outcome any more.
    fn abandoned(&self) -> bool;
}

/// The limits a table keeps to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Requests handed to the worker and not yet answered.
    pub(super) max_in_flight: usize,
    /// Requests waiting for one of those slots.
    pub(super) max_queued: usize,
}

impl Limits {
    /// The limits `options` set.
    pub(super) fn of(options: &WorkerOptions) -> Self {
        Self {
            max_in_flight: options.max_in_flight,
            max_queued: options.max_queued,
        }
    }
}

/// The deadline `timeout` from now. A timeout too long to add (say a
/// `WithTimeout` of `Duration::MAX`) means none: a century from now,
/// rather than a panic.
pub(super) fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A request as its transport hands it to the table.
pub(super) struct Request<T> {
    /// The message's wire name.
    pub(super) message: &'static str,
    /// The timeout its deadline was made from.
    pub(super) timeout: Duration,
    pub(super) deadline: Instant,
    /// Which try this is; 1 for the first.
    pub(super) attempt: u32,
    /// What the transport keeps for it.
    pub(super) held: T,
}

/// A request in the table.
struct Pending<T> {
    request: Request<T>,
    /// Where its message's counts are.
    counted: CountsIndex,
    /// Its number among the requests this table put in flight, from 1; 0
    /// while it waits in the queue. (Over a byte stream, this is the
    /// number of its frame, which the worker's read mark counts.)
    started: u64,
    /// `request{message, id, attempt}`, at DEBUG: what is logged about the
    /// request happens in it.
    span: RequestSpan,
}

/// A request that left the table past its deadline, or whose caller went
/// away.
pub(super) struct Expired<T> {
    pub(super) id: u64,
    /// Whether it was in flight, so that the worker must be told to cancel
    /// it.
    pub(super) in_flight: bool,
    /// What its caller gets: `Timeout`.
    pub(super) error: WorkerError,
    pub(super) held: T,
}

/// What a crash did to the requests: those to send to a fresh worker, and
/// those to resolve with their error.
pub(super) struct CrashOutcome<T> {
    pub(super) carried: Vec<Carried<T>>,
    pub(super) failed: Vec<(T, WorkerError)>,
}

/// A request whose worker crashed, carried over to a fresh one (see
/// [`Requests::resubmit`]).
pub(super) struct Carried<T> {
    /// Its attempt is the one it makes on the fresh worker; its deadline
    /// is the first try's: retries do not extend it.
    pub(super) request: Request<T>,
    counted: CountsIndex,
    /// Counts it should it never be sent again.
    tally: SharedTally,
}

impl<T> Carried<T> {
    /// Gives up on it (no fresh worker will take it): counted as failed,
    /// it is handed back for the transport to resolve.
    pub(super) fn give_up(self) -> Request<T> {
        self.tally.borrow_mut().ended_at(self.counted, false, 0);
        self.request
    }
}

/// The requests a proxy accepted and has not resolved, in flight or
/// queued; see the module doc.
pub(super) struct Requests<T> {
    pending: IdMap<Pending<T>>,
    deadlines: Deadlines,
    /// Ids of the queued requests, oldest first.
    queue: VecDeque<u64>,
    /// The id the next request gets.
    next_id: u64,
    in_flight: usize,
    /// How many requests this table put in flight.
    started: u64,
    limits: Limits,
    /// When abandoned requests were last looked for.
    last_sweep: Instant,
    /// Told when no request is pending any more.
    drain_waiters: Waiters,
    tally: SharedTally,
}

impl<T: Held> Requests<T> {
    /// An empty table; what it counts goes to `tally`.
    pub(super) fn new(limits: Limits, tally: SharedTally) -> Self {
        Self {
            pending: IdMap::default(),
            deadlines: Deadlines::default(),
            queue: VecDeque::new(),
            next_id: 1,
            in_flight: 0,
            started: 0,
            limits,
            last_sweep: Instant::now(),
            drain_waiters: Waiters::default(),
            tally,
        }
    }

    /// Whether one more request may enter: `Overloaded` when every slot in
    /// flight is taken and the queue is full.
    pub(super) fn admit(&self) -> Result<(), WorkerError> {
        if self.in_flight >= self.limits.max_in_flight && self.queue.len() >= self.limits.max_queued
        {
            return Err(WorkerError::Overloaded {
                limit: self.limits.max_queued,
            });
        }
        Ok(())
    }

    /// The id the next registered request gets (what middleware sees of a
    /// request before it is registered).
    pub(super) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The next id was seen (by middleware that refused its request): it
    /// is never given.
    pub(super) fn skip_id(&mut self) {
        self.next_id += 1;
    }

    /// Adds an admitted request, counted as sent with `bytes` of payload;
    /// returns its id, and whether it went in flight (the transport sends
    /// it now) rather than into the queue.
    pub(super) fn register(&mut self, request: Request<T>, bytes: usize) -> (u64, bool) {
        let counted = self.tally.borrow_mut().sent(request.message, bytes);
        self.insert(request, counted)
    }

    /// Adds a request carried over from a crashed worker under a fresh id,
    /// counted as `bytes` sent again; returns as [`register`](Self::register).
    pub(super) fn resubmit(&mut self, carried: Carried<T>, bytes: usize) -> (u64, bool) {
        let Carried {
            request, counted, ..
        } = carried;
        tracing::debug!(
            message = request.message,
            attempt = request.attempt,
            "retrying a request on a fresh worker"
        );
        self.tally.borrow_mut().resent(bytes);
        self.insert(request, counted)
    }

    fn insert(&mut self, request: Request<T>, counted: CountsIndex) -> (u64, bool) {
        let id = self.next_id;
        self.next_id += 1;
        let send = self.in_flight < self.limits.max_in_flight;
        let started = if send {
            self.in_flight += 1;
            self.started += 1;
            self.started
        } else {
            self.queue.push_back(id);
            0
        };
        let span = RequestSpan::of(tracing::debug_span!(
            "request",
            message = request.message,
            id,
            attempt = request.attempt
        ));
        tracing::trace!(parent: span.get(), queued = !send, "sent");
        self.deadlines.insert(request.deadline, id);
        self.pending.insert(
            id,
            Pending {
                request,
                counted,
                started,
                span,
            },
        );
        (id, send)
    }

    /// What the transport keeps for request `id`, while it is pending.
    pub(super) fn held_mut(&mut self, id: u64) -> Option<&mut T> {
        self.pending.get_mut(&id).map(|p| &mut p.request.held)
    }

    /// The span of request `id`, while it is pending.
    pub(super) fn span_of(&self, id: u64) -> Option<&tracing::Span> {
        self.pending.get(&id).map(|p| p.span.get())
    }

    /// Takes request `id` out of the table with its outcome: answered with
    /// `Ok(bytes)` of payload, or failed. Returns what the transport kept
    /// for it, to hand the caller the outcome; `None` for a request no
    /// longer pending (a reply to one given up on). Its slot in flight is
    /// then free: see [`start_next`](Self::start_next).
    pub(super) fn resolve(&mut self, id: u64, outcome: Result<usize, &WorkerError>) -> Option<T> {
        let pending = self.remove(id)?;
        let span = pending.span.get();
        match outcome {
            Ok(bytes) => tracing::debug!(parent: span, bytes, "answered"),
            Err(error) => tracing::debug!(parent: span, %error, "failed"),
        }
        let (answered, bytes) = outcome.map_or((false, 0), |bytes| (true, bytes));
        self.tally
            .borrow_mut()
            .ended_at(pending.counted, answered, bytes);
        self.notify_if_drained();
        Some(pending.request.held)
    }

    /// The caller of request `id` went away, and the transport heard of it
    /// (see [`Held::SWEPT`]): it leaves the table, counted as failed.
    pub(super) fn withdraw(&mut self, id: u64) -> Option<T> {
        let pending = self.remove(id)?;
        tracing::debug!(parent: pending.span.get(), "withdrawn: its caller went away");
        self.tally.borrow_mut().ended_at(pending.counted, false, 0);
        self.notify_if_drained();
        Some(pending.request.held)
    }

    /// Takes request `id` out of the table, its deadline and its slot (in
    /// flight or in the queue).
    fn remove(&mut self, id: u64) -> Option<Pending<T>> {
        let pending = self.pending.remove(&id)?;
        self.deadlines.remove(pending.request.deadline, id);
        if pending.started > 0 {
            self.in_flight -= 1;
        } else if self.queue.front() == Some(&id) {
            self.queue.pop_front();
        } else if let Ok(at) = self.queue.binary_search(&id) {
            // Queued ids are in order: each was the newest when queued.
            self.queue.remove(at);
        }
        Some(pending)
    }

    /// Puts the oldest queued request in flight, if a slot is free; the
    /// transport sends it. Call until `None` after anything that frees a
    /// slot (`resolve`, `withdraw`, `expire`).
    pub(super) fn start_next(&mut self) -> Option<(u64, &mut Request<T>)> {
        if self.in_flight >= self.limits.max_in_flight {
            return None;
        }
        let id = self.queue.pop_front()?;
        let pending = self.pending.get_mut(&id)?;
        self.in_flight += 1;
        self.started += 1;
        pending.started = self.started;
        Some((id, &mut pending.request))
    }

    /// When the table next needs looking at, while anything is pending:
    /// the earliest deadline, or the next look for abandoned requests.
    pub(super) fn next_check(&self) -> Option<Instant> {
        let earliest = self.deadlines.first()?;
        if T::SWEPT {
            return Some(earliest.min(self.last_sweep + ABANDONED_SWEEP));
        }
        Some(earliest)
    }

    /// Takes out the requests past their deadline at `now` and, when it is
    /// time to look, those whose caller went away; each fails `Timeout`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Expired<T>> {
        let mut expired = Vec::new();
        while let Some(id) = self.deadlines.due(now) {
            expired.extend(self.expired(id, true));
        }
        if T::SWEPT && now >= self.last_sweep + ABANDONED_SWEEP {
            self.last_sweep = now;
            let abandoned: Vec<u64> = (self.pending.iter())
                .filter(|(_, p)| p.request.held.abandoned())
                .map(|(id, _)| *id)
                .collect();
            for id in abandoned {
                expired.extend(self.expired(id, false));
            }
        }
        expired
    }

    /// Takes out request `id`, given up on (`timed_out`, or abandoned).
    fn expired(&mut self, id: u64, timed_out: bool) -> Option<Expired<T>> {
        let pending = self.pending.get(&id)?;
        tracing::debug!(
            parent: pending.span.get(),
            timed_out,
            "giving up on the request; cancelling it"
        );
        let in_flight = pending.started > 0;
        let error = WorkerError::Timeout {
            after: pending.request.timeout,
            message: pending.request.message,
            queued: !in_flight,
        };
        let held = self.resolve(id, Err(&error))?;
        Some(Expired {
            id,
            in_flight,
            error,
            held,
        })
    }

    /// Takes out every request with `error` (the worker will answer none
    /// of them), counted as failed; the transport resolves each.
    pub(super) fn fail_all(&mut self, error: &WorkerError) -> Vec<T> {
        let failed = self
            .take_all()
            .map(|pending| {
                tracing::debug!(parent: pending.span.get(), %error, "failed");
                self.tally.borrow_mut().ended_at(pending.counted, false, 0);
                pending.request.held
            })
            .collect();
        self.notify_if_drained();
        failed
    }

    /// The worker died, having read the first `read_through` requests this
    /// table put in flight, if that is known. Every request leaves the
    /// table: carried over to a fresh worker if the worker never read it
    /// (queued, or numbered past `read_through`: no handler started it, so
    /// it is safe to run anew, as the same attempt), or if its message's
    /// `policy` retries it (as its next attempt); otherwise failed
    /// `Crashed`.
    pub(super) fn crashed(
        &mut self,
        reason: &CrashReason,
        message: &Option<String>,
        policy: impl Fn(&'static str) -> CrashPolicy,
        read_through: Option<u64>,
    ) -> CrashOutcome<T> {
        let mut crash = CrashOutcome {
            carried: Vec::new(),
            failed: Vec::new(),
        };
        let taken: Vec<Pending<T>> = self.take_all().collect();
        for mut pending in taken {
            let span = pending.span.take();
            let attempt = pending.request.attempt;
            let unread =
                read_through.is_some_and(|read| pending.started == 0 || pending.started > read);
            let next = match policy(pending.request.message) {
                _ if unread => Some(attempt), // not a try: it never ran
                CrashPolicy::Retry { attempts } if attempt <= attempts => Some(attempt + 1),
                CrashPolicy::Retry { .. } | CrashPolicy::Reject => None,
            };
            let Some(next) = next else {
                tracing::debug!(parent: &span, %reason, "the worker crashed");
                self.tally.borrow_mut().ended_at(pending.counted, false, 0);
                let error = WorkerError::Crashed {
                    reason: reason.clone(),
                    message: message.clone(),
                    attempt,
                };
                crash.failed.push((pending.request.held, error));
                continue;
            };
            if unread {
                tracing::debug!(parent: &span, "the worker crashed before reading it");
            }
            pending.request.attempt = next;
            crash.carried.push(Carried {
                request: pending.request,
                counted: pending.counted,
                tally: self.tally.clone(),
            });
        }
        self.notify_if_drained();
        crash
    }

    /// Empties the table, handing out what was in it.
    fn take_all(&mut self) -> impl Iterator<Item = Pending<T>> {
        self.queue.clear();
        self.deadlines = Deadlines::default();
        self.in_flight = 0;
        std::mem::take(&mut self.pending).into_values()
    }

    /// Resolves once no request is pending (at once if none is). Dropping
    /// the table counts as drained too.
    pub(super) fn drained(&mut self) -> impl Future<Output = ()> + 'static {
        let drained = self.drain_waiters.wait();
        self.notify_if_drained();
        drained
    }

    fn notify_if_drained(&mut self) {
        if self.pending.is_empty() {
            self.drain_waiters.tell_all();
        }
    }

    /// Requests handed to the worker and not yet answered.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests waiting for a slot in flight.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How many requests this table put in flight (the number of the last
    /// one).
    pub(super) fn started(&self) -> u64 {
        self.started
    }
}

/// Each pending request's deadline and id, earliest first.
///
/// A sorted deque rather than a tree: requests mostly come in deadline
/// order (now plus their message's timeout) and end in the order they
/// came, so an insertion is a push at the back and a removal a pop at the
/// front, with neither allocating; the others are found by binary search.
#[derive(Default)]
struct Deadlines(VecDeque<(Instant, u64)>);

impl Deadlines {
    fn insert(&mut self, deadline: Instant, id: u64) {
        let key = (deadline, id);
        if self.0.back().is_none_or(|last| *last < key) {
            self.0.push_back(key);
        } else {
            let at = self.0.partition_point(|other| *other < key);
            self.0.insert(at, key);
        }
    }

    fn remove(&mut self, deadline: Instant, id: u64) {
        let key = (deadline, id);
        if self.0.front() == Some(&key) {
            self.0.pop_front();
        } else if self.0.back() == Some(&key) {
            self.0.pop_back();
        } else if let Ok(at) = self.0.binary_search(&key) {
            self.0.remove(at);
        }
    }

    /// The earliest deadline.
    fn first(&self) -> Option<Instant> {
        self.0.front().map(|(deadline, _)| *deadline)
    }

    /// The id of a request whose deadline is at or before `now`, if any,
    /// taken out of the index.
    fn due(&mut self, now: Instant) -> Option<u64> {
        let &(deadline, id) = self.0.front()?;
        (deadline <= now).then(|| {
            self.0.pop_front();
            id
        })
    }
}

/// A request's span, boxed, and absent when disabled: a `Span` is five
/// words, and carried inline it made every pending request too big to move
/// cheaply (measured: four more `memcpy` calls per request).
#[derive(Default)]
struct RequestSpan(Option<Box<tracing::Span>>);

impl RequestSpan {
    /// The span, or a disabled one.
    fn get(&self) -> &tracing::Span {
        static NONE: tracing::Span = tracing::Span::none();
        self.0.as_deref().unwrap_or(&NONE)
    }

    /// Keeps `span` if anyone listens to it.
    fn of(span: tracing::Span) -> Self {
        RequestSpan((!span.is_disabled()).then(|| Box::new(span)))
    }

    fn take(&mut self) -> tracing::Span {
        self.0.take().map_or_else(tracing::Span::none, |span| *span)
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// What a test keeps per request: whether its caller went away.
    #[derive(Default)]
    struct Probe {
        gone: bool,
    }

    impl Held for Probe {
        const SWEPT: bool = true;

        fn abandoned(&self) -> bool {
            self.gone
        }
    }

    /// As `Probe`, for a transport that hears of callers going away.
    #[derive(Default)]
    struct Heard;

    impl Held for Heard {
        const SWEPT: bool = false;

        fn abandoned(&self) -> bool {
            unreachable!("never asked: not swept")
        }
    }

    fn table<T: Held>(max_in_flight: usize, max_queued: usize) -> Requests<T> {
        let limits = Limits {
            max_in_flight,
            max_queued,
        };
        Requests::new(limits, SharedTally::default())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A request of `message`, timing out `timeout` after `at`.
    fn request<T: Default>(message: &'static str, at: Instant, timeout: Duration) -> Request<T> {
        Request {
            message,
            timeout,
            deadline: at + timeout,
            attempt: 1,
            held: T::default(),
        }
    }

    /// `(sent, answered, failed)` of `message`, and the bytes each way.
    fn counts<T: Held>(table: &Requests<T>, message: &str) -> ((u64, u64, u64), (u64, u64)) {
        let counters = table.tally.borrow().snapshot();
        let c = counters
            .by_message
            .get(message)
            .copied()
            .unwrap_or_default();
        (
            (c.sent, c.answered, c.failed),
            (counters.bytes_out, counters.bytes_in),
        )
    }

    #[test]
    fn ids_count_from_1_and_a_skipped_id_is_never_given() {
        let mut table = table::<Probe>(4, 4);
        let now = Instant::now();
        assert_eq!(table.next_id(), 1);
        assert_eq!(table.register(request("Ping", now, ms(10)), 0), (1, true));
        table.skip_id();
        assert_eq!(table.register(request("Ping", now, ms(10)), 0), (3, true));
    }

    #[test]
    fn requests_expire_earliest_deadline_first_and_only_once_due() {
        let mut table = table::<Heard>(4, 4);
        let now = Instant::now();
        let (slow, _) = table.register(request("Slow", now, ms(30)), 0);
        let (fast, _) = table.register(request("Fast", now, ms(10)), 0);
        let (middle, _) = table.register(request("Middle", now, ms(20)), 0);
        assert_eq!(table.next_check(), Some(now + ms(10)));
        assert!(table.expire(now + ms(9)).is_empty());
        let first: Vec<u64> = table.expire(now + ms(15)).iter().map(|e| e.id).collect();
        assert_eq!(first, [fast]);
        assert_eq!(table.next_check(), Some(now + ms(20)));
        let rest = table.expire(now + ms(40));
        let ids: Vec<u64> = rest.iter().map(|e| e.id).collect();
        assert_eq!(ids, [middle, slow]);
        assert!(rest.iter().all(|e| e.in_flight));
        assert!(matches!(
            rest[0].error,
            WorkerError::Timeout { after, message: "Middle", queued: false } if after == ms(20)
        ));
        assert_eq!(table.next_check(), None, "nothing left to look at");
        assert_eq!(counts(&table, "Slow").0, (1, 0, 1));
    }

    #[test]
    fn a_request_past_the_in_flight_bound_queues_and_past_the_queue_is_refused() {
        let mut table = table::<Probe>(2, 1);
        let now = Instant::now();
        for _ in 0..2 {
            assert!(table.admit().is_ok());
            assert!(table.register(request("Ping", now, ms(10)), 0).1, "sent");
        }
        assert!(table.admit().is_ok(), "the queue has room");
        assert!(!table.register(request("Ping", now, ms(10)), 0).1, "queued");
        assert!(matches!(
            table.admit(),
            Err(WorkerError::Overloaded { limit: 1 })
        ));
        assert_eq!((table.in_flight(), table.queued()), (2, 1));
    }

    #[test]
    fn queued_requests_go_in_flight_in_order_as_slots_free() {
        let mut table = table::<Probe>(1, 8);
        let now = Instant::now();
        let (first, _) = table.register(request("Ping", now, ms(10)), 0);
        let (second, _) = table.register(request("Ping", now, ms(10)), 0);
        let (third, _) = table.register(request("Ping", now, ms(10)), 0);
        assert!(table.start_next().is_none(), "no slot free");
        assert!(table.resolve(first, Ok(0)).is_some());
        assert_eq!(table.start_next().map(|(id, _)| id), Some(second));
        assert!(table.start_next().is_none(), "its slot is taken again");
        assert!(table.resolve(second, Ok(0)).is_some());
        assert_eq!(table.start_next().map(|(id, _)| id), Some(third));
        assert_eq!(table.pending[&third].started, 3, "the third put in flight");
        assert_eq!(table.started(), 3);
    }

    #[test]
    fn a_queued_request_that_times_out_leaves_the_queue() {
        let mut table = table::<Heard>(1, 8);
        let now = Instant::now();
        let (running, _) = table.register(request("Slow", now, ms(50)), 0);
        let (waiting, _) = table.register(request("Fast", now, ms(10)), 0);
        let expired = table.expire(now + ms(20));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, waiting);
        assert!(!expired[0].in_flight, "never sent: nothing to cancel");
        assert!(
            matches!(expired[0].error, WorkerError::Timeout { queued: true, .. }),
            "the caller hears it expired in the queue: {}",
            expired[0].error
        );
        assert_eq!(table.queued(), 0);
        assert!(table.resolve(running, Ok(0)).is_some());
        assert!(table.start_next().is_none(), "nothing left to start");
    }

    #[test]
    fn a_reply_to_a_request_no_longer_pending_is_ignored() {
        let mut table = table::<Probe>(1, 1);
        let now = Instant::now();
        let (id, _) = table.register(request("Ping", now, ms(10)), 0);
        assert!(table.resolve(id, Ok(0)).is_some());
        assert!(table.resolve(id, Ok(0)).is_none());
        assert!(table.resolve(99, Ok(0)).is_none());
        assert_eq!(counts(&table, "Ping").0, (1, 1, 0));
    }

    #[test]
    fn drain_waiters_are_told_at_once_when_nothing_is_pending() {
        let mut table = table::<Probe>(1, 1);
        assert!(table.drained().now_or_never().is_some());
    }

    #[test]
    fn drain_waiters_are_told_when_the_last_request_resolves() {
        let mut table = table::<Probe>(1, 1);
        let now = Instant::now();
        let (first, _) = table.register(request("Ping", now, ms(10)), 0);
        let (queued, _) = table.register(request("Ping", now, ms(10)), 0);
        let mut drained = Box::pin(table.drained());
        assert!((&mut drained).now_or_never().is_none());
        table.resolve(first, Ok(0));
        assert!(table.start_next().is_some());
        assert!((&mut drained).now_or_never().is_none(), "one is left");
        table.resolve(queued, Err(&WorkerError::Closed));
        assert!(drained.now_or_never().is_some());
    }

    #[test]
    fn abandoned_requests_are_looked_for_every_100_ms_while_any_is_pending() {
        let mut table = table::<Probe>(1, 1);
        let swept = table.last_sweep;
        let (sent, _) = table.register(request("Ping", swept, ms(1000)), 0);
        let (queued, _) = table.register(request("Ping", swept, ms(1000)), 0);
        assert_eq!(table.next_check(), Some(swept + ABANDONED_SWEEP));
        for id in [sent, queued] {
            table.held_mut(id).unwrap().gone = true;
        }
        assert!(table.expire(swept + ms(99)).is_empty(), "not time to look");
        let mut abandoned = table.expire(swept + ms(100));
        abandoned.sort_by_key(|expired| expired.id);
        let found: Vec<(u64, bool)> = abandoned.iter().map(|e| (e.id, e.in_flight)).collect();
        assert_eq!(found, [(sent, true), (queued, false)]);
        assert_eq!(table.last_sweep, swept + ms(100));
        assert_eq!(counts(&table, "Ping").0, (2, 0, 2));
    }

    #[test]
    fn a_transport_that_hears_callers_leave_is_not_swept_and_withdraws_them() {
        let mut table = table::<Heard>(1, 1);
        let now = Instant::now();
        let (sent, _) = table.register(request("Ping", now, ms(1000)), 0);
        let (queued, _) = table.register(request("Ping", now, ms(1000)), 0);
        assert_eq!(table.next_check(), Some(now + ms(1000)), "only deadlines");
        assert!(table.expire(now + ms(500)).is_empty());
        assert!(table.withdraw(sent).is_some());
        assert_eq!(table.start_next().map(|(id, _)| id), Some(queued));
        assert!(table.withdraw(sent).is_none(), "gone already");
        assert_eq!(counts(&table, "Ping").0, (2, 0, 1));
    }

    #[test]
    fn fail_all_empties_the_table_counting_each_failed() {
        let mut table = table::<Probe>(2, 4);
        let now = Instant::now();
        for _ in 0..3 {
            table.register(request("Ping", now, ms(10)), 0);
        }
        let mut drained = Box::pin(table.drained());
        assert_eq!(table.fail_all(&WorkerError::Closed).len(), 3);
        assert!((&mut drained).now_or_never().is_some());
        assert_eq!((table.in_flight(), table.queued()), (0, 0));
        assert_eq!(table.next_check(), None);
        assert!(table.start_next().is_none());
        assert_eq!(counts(&table, "Ping").0, (3, 0, 3));
    }

    #[test]
    fn requests_are_counted_with_their_bytes() {
        let mut table = table::<Probe>(2, 4);
        let now = Instant::now();
        let (answered, _) = table.register(request("Ping", now, ms(10)), 16);
        let (failed, _) = table.register(request("Ping", now, ms(10)), 16);
        table.resolve(answered, Ok(5));
        table.resolve(failed, Err(&WorkerError::Closed));
        assert_eq!(counts(&table, "Ping"), ((2, 1, 1), (32, 5)));
    }

    /// Five requests, three in flight (numbered 1 to 3) and two queued,
    /// of `message`, each at `attempt`.
    fn five(message: &'static str, attempt: u32) -> Requests<Probe> {
        let mut table = table::<Probe>(3, 8);
        let now = Instant::now();
        for _ in 0..5 {
            let mut request = request(message, now, ms(10));
            request.attempt = attempt;
            table.register(request, 4);
        }
        table
    }

    /// What `crashed` did to each request: its next attempt if carried,
    /// else the attempt its `Crashed` error names (negated).
    fn crash(table: &mut Requests<Probe>, read_through: Option<u64>) -> Vec<i64> {
        let retry_once = |message: &str| match message {
            "Retried" => CrashPolicy::Retry { attempts: 1 },
            _ => CrashPolicy::Reject,
        };
        let reason = CrashReason::Panic;
        let crash = table.crashed(&reason, &Some("boom".into()), retry_once, read_through);
        let mut fates: Vec<i64> = (crash.carried.iter())
            .map(|carried| i64::from(carried.request.attempt))
            .collect();
        for (_, error) in &crash.failed {
            let WorkerError::Crashed { attempt, .. } = error else {
                panic!("not a crash: {error:?}");
            };
            fates.push(-i64::from(*attempt));
        }
        fates.sort();
        fates
    }

    #[test]
    fn a_crash_carries_over_what_the_worker_never_read_and_fails_the_rest() {
        let mut table = five("Rejected", 1);
        // Read: the first two. Unread: the third, and the two queued.
        assert_eq!(crash(&mut table, Some(2)), [-1, -1, 1, 1, 1]);
        assert_eq!((table.in_flight(), table.queued()), (0, 0));
        assert_eq!(counts(&table, "Rejected").0, (5, 0, 2));
    }

    #[test]
    fn without_a_read_mark_nothing_counts_as_unread() {
        let mut table = five("Rejected", 1);
        assert_eq!(crash(&mut table, None), [-1, -1, -1, -1, -1]);
    }

    #[test]
    fn a_crash_retries_what_its_policy_retries_up_to_its_attempts() {
        let mut first = five("Retried", 1);
        assert_eq!(crash(&mut first, None), [2, 2, 2, 2, 2], "a second attempt");
        let mut second = five("Retried", 2);
        assert_eq!(crash(&mut second, None), [-2, -2, -2, -2, -2], "spent");
        let mut unread = five("Retried", 2);
        assert_eq!(
            crash(&mut unread, Some(0)),
            [2, 2, 2, 2, 2],
            "unread is not a try"
        );
    }

    #[test]
    fn a_carried_request_keeps_its_deadline_and_counts_on_where_it_went() {
        let mut crashed = five("Retried", 1);
        let retry = |_: &str| CrashPolicy::Retry { attempts: 1 };
        let mut carried = crashed
            .crashed(&CrashReason::Panic, &None, retry, None)
            .carried;
        // The fresh worker's table shares the proxy's tally.
        let limits = Limits {
            max_in_flight: 8,
            max_queued: 8,
        };
        let mut fresh = Requests::<Probe>::new(limits, crashed.tally.clone());
        let given_up = carried.pop().unwrap().give_up();
        assert_eq!(given_up.attempt, 2);
        for carried in carried {
            let deadline = carried.request.deadline;
            let (id, sent) = fresh.resubmit(carried, 4);
            assert!(sent);
            assert_eq!(fresh.pending[&id].request.deadline, deadline);
            assert_eq!(fresh.pending[&id].request.attempt, 2);
        }
        assert_eq!(fresh.next_id(), 5, "fresh ids, from 1");
        // Each counted sent once: a retry sends its bytes again, not a
        // request; the one given up on counts as failed.
        assert_eq!(counts(&fresh, "Retried"), ((5, 0, 1), (5 * 4 + 4 * 4, 0)));
    }

    #[test]
    fn the_deadline_index_stays_in_order_whatever_the_order_of_change() {
        let now = Instant::now();
        let mut index = Deadlines::default();
        for (id, at) in [(1, 30), (2, 10), (3, 20), (4, 40), (5, 20)] {
            index.insert(now + ms(at), id);
        }
        index.remove(now + ms(20), 3);
        index.remove(now + ms(40), 4);
        index.remove(now + ms(99), 9); // not there: nothing happens
        let order: Vec<u64> = index.0.iter().map(|(_, id)| *id).collect();
        assert_eq!(order, [2, 5, 1]);
        assert_eq!(index.first(), Some(now + ms(10)));
        assert_eq!(index.due(now + ms(20)), Some(2));
        assert_eq!(index.due(now + ms(20)), Some(5));
        assert_eq!(index.due(now + ms(20)), None);
    }
}
