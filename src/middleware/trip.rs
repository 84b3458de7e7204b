//! One request's trip through the middleware chains: which chains it met,
//! in which order, where one refused it, and since when it has been on its
//! way. The module doc of [`middleware`](super) promises an order; this is
//! the one place that keeps it.
//!
//! # The legs
//!
//! A request meets at most four chains, always in this order ([`Leg`]):
//!
//! ```text
//!   host typed → host untyped → ‖ wire ‖ → worker untyped → worker typed → handler
//!   host typed ← host untyped ← ‖ wire ‖ ← worker untyped ← worker typed ←
//! ```
//!
//! Typed middleware sits farther from the wire than the untyped: it sees
//! the message before it is encoded and after it is decoded. A host chain
//! `[a, b]` and a worker chain `[c, d]` thus see a round trip as
//! `a b | c d | handler | d c | b a`.
//!
//! # Going in, coming out
//!
//! [`Trip::pass_in`] runs one leg's request hooks, first to last, and
//! records how far the request got: through the leg, or refused at a
//! position of it. [`Trip::pass_out`] runs the response hooks of the
//! middleware that leg's request hooks passed, last to first: all of them
//! for a leg the request went through, those outside the refusing one for
//! the leg that refused it, none for a leg it never reached. Every place
//! that hands an outcome back can thus pass it out through every leg it
//! knows, innermost first, whatever became of the request.
//!
//! Legs are passed one call each because a request changes form between
//! them: over a byte stream the typed and the untyped legs of a side are
//! run in different places, with the encoding (or decoding) in between. A
//! thread worker's request keeps its form: there one place passes all four.
//!
//! # Cost
//!
//! A trip is plain data (no allocation). It reads the clock once, when the
//! request enters its first non-empty untyped chain (the time a reply's
//! [`Passage::elapsed`] counts from); a trip whose chains are all empty
//! reads nothing and runs nothing.

use std::any::Any;
use std::time::Instant;

use bytes::Bytes;

use super::{Body, Direction, Middlewares, Passage, Refused, Side, Typed};
use crate::contract::WorkerMessage;
use crate::error::{RemoteError, WorkerError};

/// One of the four chains a request can meet, in the order it meets them
/// (the derived `Ord` is that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Leg {
    /// The host's typed middleware, on the message before it is encoded.
    HostTyped,
    /// The host's untyped middleware.
    HostUntyped,
    /// The worker's untyped middleware.
    WorkerUntyped,
    /// The worker's typed middleware, on the message after it is decoded.
    WorkerTyped,
}

impl Leg {
    /// Where this leg's middleware runs.
    pub(crate) fn side(self) -> Side {
        match self {
            Leg::HostTyped | Leg::HostUntyped => Side::Host,
            Leg::WorkerUntyped | Leg::WorkerTyped => Side::Worker,
        }
    }

    /// Which way a request goes on this leg (its outcome goes the other).
    pub(crate) fn inward(self) -> Direction {
        match self.side() {
            Side::Host => Direction::Outgoing,
            Side::Worker => Direction::Incoming,
        }
    }

    /// Which way an outcome goes on this leg.
    pub(crate) fn outward(self) -> Direction {
        match self.inward() {
            Direction::Outgoing => Direction::Incoming,
            Direction::Incoming => Direction::Outgoing,
        }
    }

    /// How a caller sees a refusal on this leg: [`WorkerError::Rejected`]
    /// from the host's middleware, [`WorkerError::Remote`] from the
    /// worker's.
    pub(crate) fn refusal(self, error: RemoteError) -> WorkerError {
        match self.side() {
            Side::Host => WorkerError::Rejected(error),
            Side::Worker => WorkerError::Remote(error),
        }
    }

    /// Whether the request is timed from this leg: only the untyped
    /// middleware sees how long a request took.
    fn timed(self) -> bool {
        matches!(self, Leg::HostUntyped | Leg::WorkerUntyped)
    }
}

/// How far a request got through its chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reached {
    /// It has met no middleware yet.
    Nowhere,
    /// It passed every middleware it met; this leg's last.
    Through(Leg),
    /// The middleware at position `at` of this leg's chain refused it.
    Refused { leg: Leg, at: usize },
}

/// One request's way through the middleware chains: how far it got, and
/// when it set out. See the [module doc](self).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trip {
    reached: Reached,
    /// When the request entered its first untyped chain.
    started: Option<Instant>,
}

impl Default for Trip {
    fn default() -> Self {
        Self::new()
    }
}

impl Trip {
    /// A request that has met no middleware yet.
    pub(crate) const fn new() -> Self {
        Self {
            reached: Reached::Nowhere,
            started: None,
        }
    }

    /// A request that went through every leg up to `leg`, timed from
    /// `started` (if an untyped leg timed it): for an outcome whose request
    /// was passed in elsewhere.
    pub(crate) const fn through(leg: Leg, started: Option<Instant>) -> Self {
        Self {
            reached: Reached::Through(leg),
            started,
        }
    }

    /// How far the request got.
    #[cfg(test)]
    pub(crate) fn reached(&self) -> Reached {
        self.reached
    }

    /// Passes the request through the chain of `leg`, first to last, until
    /// one refuses it. Legs are passed in their order, each at most once,
    /// and none after a refusal.
    ///
    /// # Errors
    /// The refusal: which middleware of the chain refused it, and why.
    pub(crate) fn pass_in<C: Chain + ?Sized>(
        &mut self,
        leg: Leg,
        chain: &C,
        request: C::Request<'_>,
    ) -> Result<(), Refused> {
        debug_assert!(
            match self.reached {
                Reached::Nowhere => true,
                Reached::Through(last) => last < leg,
                Reached::Refused { .. } => false,
            },
            "{leg:?} passed in after {:?}",
            self.reached
        );
        if chain.len() == 0 {
            return Ok(());
        }
        if leg.timed() && self.started.is_none() {
            self.started = Some(Instant::now());
        }
        match chain.requests(leg, self, request) {
            Ok(()) => {
                self.reached = Reached::Through(leg);
                Ok(())
            }
            Err(refused) => {
                self.reached = Reached::Refused {
                    leg,
                    at: refused.at,
                };
                Err(refused)
            }
        }
    }

    /// Passes an outcome back through the middleware of `leg` whose
    /// request hooks the request passed, last to first: all of them if it
    /// went through, those outside the one that refused it, or none if it
    /// never reached this leg.
    pub(crate) fn pass_out<C: Chain + ?Sized>(&self, leg: Leg, chain: &C, outcome: C::Outcome<'_>) {
        let passed = match self.reached {
            Reached::Through(last) if leg <= last => chain.len(),
            Reached::Refused { leg: refused, at } if leg == refused => at,
            Reached::Refused { leg: refused, .. } if leg < refused => chain.len(),
            _ => return,
        };
        if passed > 0 {
            chain.responses(passed, leg, self, outcome);
        }
    }

    /// How long since the request entered its first untyped chain.
    fn elapsed(&self) -> Option<std::time::Duration> {
        self.started.map(|started| started.elapsed())
    }
}

/// A chain of middleware, as a [`Trip`] passes it.
pub(crate) trait Chain {
    /// What a request is to this chain.
    type Request<'a>;
    /// What an outcome is to this chain.
    type Outcome<'a>;

    /// How many middleware it holds.
    fn len(&self) -> usize;

    /// Runs the request hooks, first to last, until one refuses.
    fn requests(&self, leg: Leg, trip: &Trip, request: Self::Request<'_>) -> Result<(), Refused>;

    /// Runs the response hooks of the first `passed` middleware, last to
    /// first.
    fn responses(&self, passed: usize, leg: Leg, trip: &Trip, outcome: Self::Outcome<'_>);
}

/// A request or an outcome as the untyped middleware sees it.
#[derive(Debug)]
pub(crate) struct Untyped<'a> {
    /// The message's wire name.
    pub(crate) name: &'a str,
    /// The request's id on this side.
    pub(crate) id: u64,
    pub(crate) body: Body<'a>,
}

impl<'a> Untyped<'a> {
    /// A request or outcome of message `name`, request `id`.
    pub(crate) fn new(name: &'a str, id: u64, body: Body<'a>) -> Self {
        Self { name, id, body }
    }

    /// An outcome carried as bytes (a byte-stream driver's).
    pub(crate) fn bytes(
        name: &'a str,
        id: u64,
        outcome: &'a mut Result<Bytes, WorkerError>,
    ) -> Self {
        let body = match outcome {
            Ok(payload) => Body::Bytes(payload),
            Err(error) => Body::Failed(error),
        };
        Self::new(name, id, body)
    }

    /// An outcome carried as a value (the thread driver's).
    pub(crate) fn value<R: Any + Send>(
        name: &'a str,
        id: u64,
        outcome: &'a mut Result<R, WorkerError>,
    ) -> Self {
        let body = match outcome {
            Ok(reply) => Body::Value(reply),
            Err(error) => Body::Failed(error),
        };
        Self::new(name, id, body)
    }
}

impl Chain for Middlewares {
    type Request<'a> = Untyped<'a>;
    type Outcome<'a> = Untyped<'a>;

    fn len(&self) -> usize {
        self.untyped.len()
    }

    fn requests(&self, leg: Leg, _: &Trip, request: Untyped<'_>) -> Result<(), Refused> {
        let Untyped { name, id, body } = request;
        self.request(&mut Passage::new(leg.side(), leg.inward(), name, id, body))
    }

    fn responses(&self, passed: usize, leg: Leg, trip: &Trip, outcome: Untyped<'_>) {
        let Untyped { name, id, body } = outcome;
        let mut passage = Passage::new(leg.side(), leg.outward(), name, id, body);
        passage.elapsed = trip.elapsed();
        self.response_before(passed, &mut passage);
    }
}

impl<M: WorkerMessage> Chain for Typed<M> {
    type Request<'a> = &'a mut M;
    type Outcome<'a> = &'a mut Result<M::Reply, WorkerError>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn requests(&self, _: Leg, _: &Trip, message: &mut M) -> Result<(), Refused> {
        self.request(message)
    }

    fn responses(&self, passed: usize, _: Leg, _: &Trip, outcome: Self::Outcome<'_>) {
        self.reply_before(passed, outcome);
    }
}

/// No chain at all (no typed middleware for this message).
impl<C: Chain> Chain for Option<C> {
    type Request<'a> = C::Request<'a>;
    type Outcome<'a> = C::Outcome<'a>;

    fn len(&self) -> usize {
        self.as_ref().map_or(0, C::len)
    }

    fn requests(&self, leg: Leg, trip: &Trip, request: C::Request<'_>) -> Result<(), Refused> {
        match self {
            Some(chain) => chain.requests(leg, trip, request),
            None => Ok(()),
        }
    }

    fn responses(&self, passed: usize, leg: Leg, trip: &Trip, outcome: C::Outcome<'_>) {
        if let Some(chain) = self {
            chain.responses(passed, leg, trip, outcome);
        }
    }
}

#[cfg(test)]
// `contract!`'s defaults are parenthesized types (one token each); the lint
// fires only where the macro is expanded inside this crate.
#[allow(unused_parens)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::middleware::{MessageMiddleware, Middleware};

    #[derive(Debug, Serialize, Deserialize)]
    struct Ping;
    crate::contract! { Pings { Ping => () } }

    /// What the middleware of a test saw, in order.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Log {
        fn push(&self, line: String) {
            self.0.lock().unwrap().push(line);
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// An untyped middleware that logs `"{label} in"`/`"{label} out"` (with
    /// whether the reply had an elapsed time), and refuses if told to.
    struct Recorder {
        label: String,
        log: Log,
        refuses: bool,
    }

    impl Middleware for Recorder {
        fn on_request(&self, _: &mut Passage<'_>) -> Result<(), RemoteError> {
            self.log.push(format!("{} in", self.label));
            match self.refuses {
                true => Err(RemoteError::new("No", &self.label)),
                false => Ok(()),
            }
        }

        fn on_response(&self, response: &mut Passage<'_>) {
            let timed = if response.elapsed().is_some() {
                ""
            } else {
                " untimed"
            };
            self.log.push(format!("{} out{timed}", self.label));
        }
    }

    /// The typed counterpart of [`Recorder`].
    struct TypedRecorder {
        label: String,
        log: Log,
        refuses: bool,
    }

    impl MessageMiddleware<Ping> for TypedRecorder {
        fn on_request(&self, _: &mut Ping) -> Result<(), RemoteError> {
            self.log.push(format!("{} in", self.label));
            match self.refuses {
                true => Err(RemoteError::new("No", &self.label)),
                false => Ok(()),
            }
        }

        fn on_reply(&self, _: &mut Result<(), WorkerError>) {
            self.log.push(format!("{} out", self.label));
        }
    }

    /// The chains of one side: untyped middleware labelled by `untyped`,
    /// typed ones (for `Ping`) by `typed`; the one labelled `refuser`, if
    /// any, refuses.
    fn side(log: &Log, untyped: &[&str], typed: &[&str], refuser: &str) -> Middlewares {
        let mut chain = Middlewares::new();
        for label in untyped {
            chain = chain.layer(Recorder {
                label: (*label).into(),
                log: log.clone(),
                refuses: *label == refuser,
            });
        }
        for label in typed {
            chain = chain.for_message::<Ping>(TypedRecorder {
                label: (*label).into(),
                log: log.clone(),
                refuses: *label == refuser,
            });
        }
        chain
    }

    /// Host chains `[T]` typed and `[a, b]` untyped, worker chains
    /// `[c, d]` untyped and `[W]` typed, all on a thread worker's values
    /// (as one place passes them).
    struct Rig {
        host: Middlewares,
        host_typed: Option<Typed<Ping>>,
        worker: Middlewares,
        worker_typed: Option<Typed<Ping>>,
    }

    impl Rig {
        fn new(log: &Log, refuser: &str) -> Self {
            let host = side(log, &["a", "b"], &["T"], refuser);
            let worker = side(log, &["c", "d"], &["W"], refuser);
            Self {
                host_typed: host.for_type::<Ping>(),
                worker_typed: worker.for_type::<Ping>(),
                host,
                worker,
            }
        }

        /// One round trip; the handler logs `handler` and answers `Ok`.
        fn round_trip(&self, log: &Log) -> (Trip, Result<(), WorkerError>) {
            let mut trip = Trip::new();
            let mut ping = Ping;
            let passed = trip
                .pass_in(Leg::HostTyped, &self.host_typed, &mut ping)
                .and_then(|()| {
                    let body = Body::Value(&mut ping);
                    let request = Untyped::new("Ping", 1, body);
                    trip.pass_in(Leg::HostUntyped, &self.host, request)
                })
                .and_then(|()| {
                    let request = Untyped::new("Ping", 1, Body::Value(&mut ping));
                    trip.pass_in(Leg::WorkerUntyped, &self.worker, request)
                })
                .and_then(|()| trip.pass_in(Leg::WorkerTyped, &self.worker_typed, &mut ping));
            let mut outcome = match passed {
                Ok(()) => {
                    log.push("handler".into());
                    Ok(())
                }
                Err(refused) => match trip.reached() {
                    Reached::Refused { leg, .. } => Err(leg.refusal(refused.error)),
                    other => panic!("refused, yet {other:?}"),
                },
            };
            trip.pass_out(Leg::WorkerTyped, &self.worker_typed, &mut outcome);
            let back = Untyped::value("Ping", 1, &mut outcome);
            trip.pass_out(Leg::WorkerUntyped, &self.worker, back);
            let back = Untyped::value("Ping", 1, &mut outcome);
            trip.pass_out(Leg::HostUntyped, &self.host, back);
            trip.pass_out(Leg::HostTyped, &self.host_typed, &mut outcome);
            (trip, outcome)
        }
    }

    fn words(text: &str) -> Vec<String> {
        text.split(", ").map(String::from).collect()
    }

    #[test]
    fn one_chain_is_passed_first_to_last_and_back_last_to_first() {
        let log = Log::default();
        let chain = side(&log, &["a", "b"], &[], "");
        let mut trip = Trip::new();
        let mut payload = Bytes::from_static(b"x");
        let request = Untyped::new("Ping", 7, Body::Bytes(&mut payload));
        assert!(trip.pass_in(Leg::HostUntyped, &chain, request).is_ok());
        assert_eq!(trip.reached(), Reached::Through(Leg::HostUntyped));
        let mut outcome = Ok(Bytes::from_static(b"y"));
        trip.pass_out(
            Leg::HostUntyped,
            &chain,
            Untyped::bytes("Ping", 7, &mut outcome),
        );
        assert_eq!(log.take(), words("a in, b in, b out, a out"));
    }

    #[test]
    fn two_chains_nest_host_outside_worker() {
        let log = Log::default();
        let rig = Rig::new(&log, "");
        let (trip, outcome) = rig.round_trip(&log);
        assert!(outcome.is_ok());
        assert_eq!(trip.reached(), Reached::Through(Leg::WorkerTyped));
        assert_eq!(
            log.take(),
            words("T in, a in, b in, c in, d in, W in, handler, W out, d out, c out, b out, a out, T out")
        );
    }

    #[test]
    fn typed_middleware_is_outside_the_untyped_on_both_sides() {
        // The same legs, each side alone (as over a byte stream, where the
        // encoding sits between a side's typed and untyped chains).
        let log = Log::default();
        let rig = Rig::new(&log, "");
        let mut ping = Ping;
        let mut host = Trip::new();
        assert!(host
            .pass_in(Leg::HostTyped, &rig.host_typed, &mut ping)
            .is_ok());
        let mut payload = Bytes::from_static(b"ping");
        let request = Untyped::new("Ping", 1, Body::Bytes(&mut payload));
        assert!(host.pass_in(Leg::HostUntyped, &rig.host, request).is_ok());
        let mut bytes = Ok(Bytes::from_static(b"reply"));
        host.pass_out(
            Leg::HostUntyped,
            &rig.host,
            Untyped::bytes("Ping", 1, &mut bytes),
        );
        host.pass_out(Leg::HostTyped, &rig.host_typed, &mut Ok(()));
        assert_eq!(log.take(), words("T in, a in, b in, b out, a out, T out"));

        let mut worker = Trip::new();
        let request = Untyped::new("Ping", 1, Body::Bytes(&mut payload));
        assert!(worker
            .pass_in(Leg::WorkerUntyped, &rig.worker, request)
            .is_ok());
        assert!(worker
            .pass_in(Leg::WorkerTyped, &rig.worker_typed, &mut ping)
            .is_ok());
        worker.pass_out(Leg::WorkerTyped, &rig.worker_typed, &mut Ok(()));
        let back = Untyped::bytes("Ping", 1, &mut bytes);
        worker.pass_out(Leg::WorkerUntyped, &rig.worker, back);
        assert_eq!(log.take(), words("c in, d in, W in, W out, d out, c out"));
    }

    #[test]
    fn a_refusal_unwinds_exactly_the_middleware_that_ran() {
        let everything = words("T, a, b, c, d, W");
        for (position, refuser) in everything.iter().enumerate() {
            let log = Log::default();
            let rig = Rig::new(&log, refuser);
            let (trip, outcome) = rig.round_trip(&log);
            let ran = &everything[..=position];
            let mut want: Vec<String> = ran.iter().map(|label| format!("{label} in")).collect();
            // The refuser's own response hook does not run.
            want.extend(
                ran[..position]
                    .iter()
                    .rev()
                    .map(|label| format!("{label} out")),
            );
            assert_eq!(log.take(), want, "refused by {refuser}");
            let (leg, at) = match trip.reached() {
                Reached::Refused { leg, at } => (leg, at),
                other => panic!("refused by {refuser}, yet {other:?}"),
            };
            let (want_leg, want_at) = match refuser.as_str() {
                "T" => (Leg::HostTyped, 0),
                "a" => (Leg::HostUntyped, 0),
                "b" => (Leg::HostUntyped, 1),
                "c" => (Leg::WorkerUntyped, 0),
                "d" => (Leg::WorkerUntyped, 1),
                _ => (Leg::WorkerTyped, 0),
            };
            assert_eq!((leg, at), (want_leg, want_at), "refused by {refuser}");
            let side = match leg.side() {
                Side::Host => "host",
                Side::Worker => "worker",
            };
            match (side, outcome) {
                ("host", Err(WorkerError::Rejected(error)))
                | ("worker", Err(WorkerError::Remote(error))) => {
                    assert_eq!(error.message, refuser.as_str())
                }
                (side, other) => panic!("refused on the {side} by {refuser}: {other:?}"),
            }
        }
    }

    #[test]
    fn directions_follow_the_side() {
        assert_eq!(Leg::HostUntyped.inward(), Direction::Outgoing);
        assert_eq!(Leg::HostUntyped.outward(), Direction::Incoming);
        assert_eq!(Leg::WorkerUntyped.inward(), Direction::Incoming);
        assert_eq!(Leg::WorkerUntyped.outward(), Direction::Outgoing);
    }

    #[test]
    fn every_outcome_on_its_way_out_carries_the_time_since_it_set_out() {
        let log = Log::default();
        let rig = Rig::new(&log, "");
        let _ = rig.round_trip(&log);
        let outs: Vec<String> = log
            .take()
            .into_iter()
            .filter(|l| l.contains("out"))
            .collect();
        assert!(outs.iter().all(|l| !l.contains("untimed")), "{outs:?}");

        // Refused, too: the middleware outside the refuser learns how long.
        let rig = Rig::new(&log, "d");
        let _ = rig.round_trip(&log);
        let outs: Vec<String> = log
            .take()
            .into_iter()
            .filter(|l| l.contains("out"))
            .collect();
        assert_eq!(outs, words("c out, b out, a out, T out"));

        // An outcome passed in elsewhere is timed from when it set out.
        let set_out = Instant::now() - Duration::from_secs(3);
        let trip = Trip::through(Leg::HostUntyped, Some(set_out));
        let elapsed = Arc::new(Mutex::new(None));
        struct Clock(Arc<Mutex<Option<Duration>>>);
        impl Middleware for Clock {
            fn on_response(&self, response: &mut Passage<'_>) {
                *self.0.lock().unwrap() = response.elapsed();
            }
        }
        let chain = Middlewares::new().layer(Clock(elapsed.clone()));
        trip.pass_out(
            Leg::HostUntyped,
            &chain,
            Untyped::bytes("Ping", 1, &mut Ok(Bytes::new())),
        );
        let took = elapsed.lock().unwrap().expect("timed");
        assert!(took >= Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn without_middleware_a_trip_reads_no_clock_and_goes_nowhere() {
        let none = Middlewares::new();
        let typed: Option<Typed<Ping>> = none.for_type::<Ping>();
        let mut trip = Trip::new();
        assert!(trip.pass_in(Leg::HostTyped, &typed, &mut Ping).is_ok());
        let mut ping = Ping;
        let request = Untyped::new("Ping", 1, Body::Value(&mut ping));
        assert!(trip.pass_in(Leg::HostUntyped, &none, request).is_ok());
        assert_eq!(trip.reached(), Reached::Nowhere);
        assert!(trip.started.is_none());
    }

    #[test]
    fn a_typed_chain_alone_reads_no_clock() {
        let log = Log::default();
        let chain = side(&log, &[], &["T"], "");
        let typed = chain.for_type::<Ping>();
        let mut trip = Trip::new();
        assert!(trip.pass_in(Leg::HostTyped, &typed, &mut Ping).is_ok());
        assert!(trip.started.is_none());
        trip.pass_out(Leg::HostTyped, &typed, &mut Ok(()));
        assert_eq!(log.take(), words("T in, T out"));
    }
}
