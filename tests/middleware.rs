//! Middleware on both sides of a worker, for the child-process driver and
//! the thread driver: the order the chains run in, what each passage tells
//! (side, direction, id, elapsed, body), refusals on either side (untyped
//! and typed), changes to a request or a reply, and response hooks for
//! failures (timeouts, handler errors, overload).
//!
//! Every middleware records what it sees as a [`Seen`] in a [`Log`]. A
//! child worker's log lives in the child: the host reads it with the
//! `Trail` message. A thread worker's chain runs in this process, on the
//! log the test hands it (the same log as the host's when a test wants the
//! whole round trip in one order).

mod support;

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use isolated_workers::middleware::{
    Body, Direction, MessageMiddleware, Middleware, Middlewares, Passage, Side,
};
use isolated_workers::{
    ChildProcess, Close, CrashPolicy, Driver, RemoteError, Status, Thread, Worker, WorkerError,
    WorkerMessage, WorkerOptions,
};
use libtest_mimic::{Failed, Trial};
use serde::{Deserialize, Serialize};
use support::{actix_test, ask, enqueue, expect_error, fail, outcome, run};

/// The worker name this binary serves as.
const WORKER: &str = "middleware-scribe";

/// Answered with `"{text}:{n}"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    text: String,
    n: u64,
}

fn note(text: &str, n: u64) -> Note {
    Note {
        text: text.into(),
        n,
    }
}

/// Answered with its text; the worker's typed middleware upper-cases the
/// reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shout {
    text: String,
}

fn shout(text: &str) -> Shout {
    Shout { text: text.into() }
}

/// Refused by the worker's untyped middleware `d` (`UntypedNo`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Secret;

/// Refused by the worker's typed middleware (`TypedNo`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Guarded;

/// Answers after `ms` milliseconds (a plain actix `ResponseFuture`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Nap {
    ms: u64,
}

/// The handler fails with `Broken`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fail;

/// Panics (crashing a child worker) unless `marker` exists, which it
/// creates first: the first try crashes, a retry succeeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    marker: String,
}

/// Answers what the worker's middleware and handlers recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trail;

isolated_workers::contract! {
    /// What the middleware tests send.
    Mw {
        Note => String,
        Shout => String,
        Secret => (),
        Guarded => (),
        Nap => (),
        Fail => (),
        Flaky => (),
        Trail => Vec<Seen>,
    }
}

/// One thing a middleware (or a handler) saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    /// Which middleware, or `handler`.
    label: String,
    /// `host` or `worker`.
    side: String,
    /// `out`, `in`, or `-` for a handler.
    direction: String,
    name: String,
    id: u64,
    request: bool,
    elapsed: Option<Duration>,
    /// `bytes:<hex>`, `value:<Debug>`, `failed:<kind>`; for typed
    /// middleware and handlers the value's `Debug`.
    body: String,
}

impl Seen {
    fn passage(label: &str, passage: &mut Passage<'_>) -> Self {
        Self {
            label: label.into(),
            side: side_name(passage.side()).into(),
            direction: match passage.direction() {
                Direction::Outgoing => "out",
                Direction::Incoming => "in",
            }
            .into(),
            name: passage.name().into(),
            id: passage.id(),
            request: passage.is_request(),
            elapsed: passage.elapsed(),
            body: describe(passage.body()),
        }
    }

    /// What a typed middleware on `side` saw of message `M`.
    fn typed<M: WorkerMessage>(label: &str, side: Side, request: bool, body: String) -> Self {
        // A request leaves the host and enters the worker.
        let outgoing = (side == Side::Host) == request;
        Self {
            label: label.into(),
            side: side_name(side).into(),
            direction: if outgoing { "out" } else { "in" }.into(),
            name: M::NAME.into(),
            id: 0,
            request,
            elapsed: None,
            body,
        }
    }

    fn handler<M: WorkerMessage + Debug>(message: &M) -> Self {
        Self {
            label: "handler".into(),
            side: "worker".into(),
            direction: "-".into(),
            name: M::NAME.into(),
            id: 0,
            request: true,
            elapsed: None,
            body: format!("{message:?}"),
        }
    }

    /// `a host out`, `d worker in`, `handler`.
    fn step(&self) -> String {
        if self.label == "handler" {
            return "handler".into();
        }
        format!("{} {} {}", self.label, self.side, self.direction)
    }

    fn is_handler(&self) -> bool {
        self.label == "handler"
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Host => "host",
        Side::Worker => "worker",
    }
}

/// A body as a [`Seen`] records it.
fn describe(body: &mut Body<'_>) -> String {
    match body {
        Body::Bytes(bytes) => format!("bytes:{}", hex::encode(&bytes[..])),
        Body::Value(value) => {
            if let Some(note) = value.downcast_ref::<Note>() {
                format!("value:{note:?}")
            } else if let Some(shout) = value.downcast_ref::<Shout>() {
                format!("value:{shout:?}")
            } else if let Some(text) = value.downcast_ref::<String>() {
                format!("value:{text:?}")
            } else if let Some(nap) = value.downcast_ref::<Nap>() {
                format!("value:{nap:?}")
            } else if value.is::<()>() {
                "value:()".into()
            } else {
                "value:?".into()
            }
        }
        Body::Failed(error) => format!("failed:{}", kind(error)),
    }
}

/// `Remote(Name)`, `Rejected(Name)`, `Timeout`, `Overloaded`, ...
fn kind(error: &WorkerError) -> String {
    match error {
        WorkerError::Remote(remote) => format!("Remote({})", remote.name),
        WorkerError::Rejected(remote) => format!("Rejected({})", remote.name),
        WorkerError::Timeout { .. } => "Timeout".into(),
        WorkerError::Overloaded { .. } => "Overloaded".into(),
        other => format!("{other:?}"),
    }
}

fn outcome_text<R: Debug>(outcome: &Result<R, WorkerError>) -> String {
    match outcome {
        Ok(reply) => format!("{reply:?}"),
        Err(error) => format!("failed:{}", kind(error)),
    }
}

/// What one side's middleware saw, in order; waitable.
#[derive(Clone, Default)]
struct Log {
    seen: Arc<Mutex<Vec<Seen>>>,
    pushed: Arc<tokio::sync::Notify>,
}

impl Log {
    fn push(&self, seen: Seen) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen);
        self.pushed.notify_waiters();
    }

    /// Everything recorded, but for `Trail` (how the host reads a log).
    fn lines(&self) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|s| s.name != "Trail").cloned().collect()
    }

    /// Waits until `what` holds of the lines, for at most `limit`.
    async fn wait_for(&self, limit: Duration, what: impl Fn(&[Seen]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pushed = self.pushed.notified();
            if what(&self.lines()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, pushed).await.is_err() {
                return what(&self.lines());
            }
        }
    }
}

/// Records every passage as `label`; refuses requests of wire name
/// `refuse.0` with an error named `refuse.1`.
struct Recorder {
    label: &'static str,
    log: Log,
    refuse: Option<(&'static str, &'static str)>,
}

impl Recorder {
    fn new(label: &'static str, log: &Log) -> Self {
        Self {
            label,
            log: log.clone(),
            refuse: None,
        }
    }

    fn refusing(mut self, message: &'static str, error: &'static str) -> Self {
        self.refuse = Some((message, error));
        self
    }
}

impl Middleware for Recorder {
    fn on_request(&self, request: &mut Passage<'_>) -> Result<(), RemoteError> {
        self.log.push(Seen::passage(self.label, request));
        match self.refuse {
            Some((message, error)) if request.name() == message => Err(RemoteError::new(
                error,
                format!("{} refuses {message}", self.label),
            )),
            _ => Ok(()),
        }
    }

    fn on_response(&self, response: &mut Passage<'_>) {
        self.log.push(Seen::passage(self.label, response));
    }
}

/// Replaces every `Note` it sees going out with `with`: the bytes (over a
/// byte stream, encoded as the contract's MessagePack does: structs as
/// arrays) or the value (thread workers).
struct SwapNote {
    with: Note,
}

impl Middleware for SwapNote {
    fn on_request(&self, request: &mut Passage<'_>) -> Result<(), RemoteError> {
        if request.name() != "Note" {
            return Ok(());
        }
        match request.body() {
            Body::Bytes(bytes) => {
                let encoded = rmp_serde::to_vec(&self.with)
                    .map_err(|e| RemoteError::new("Encode", e.to_string()))?;
                **bytes = Bytes::from(encoded);
            }
            Body::Value(value) => match value.downcast_mut::<Note>() {
                Some(note) => *note = self.with.clone(),
                None => return Err(RemoteError::new("NotANote", "a Note that is not a Note")),
            },
            Body::Failed(_) => return Err(RemoteError::new("Failed", "a request that failed")),
        }
        Ok(())
    }
}

/// Records a message type's requests and outcomes on `side`.
struct TypedRecorder {
    label: &'static str,
    side: Side,
    log: Log,
}

impl TypedRecorder {
    fn new(label: &'static str, side: Side, log: &Log) -> Self {
        Self {
            label,
            side,
            log: log.clone(),
        }
    }
}

impl<M> MessageMiddleware<M> for TypedRecorder
where
    M: WorkerMessage + Debug,
    M::Reply: Debug,
{
    fn on_request(&self, message: &mut M) -> Result<(), RemoteError> {
        let body = format!("{message:?}");
        self.log
            .push(Seen::typed::<M>(self.label, self.side, true, body));
        Ok(())
    }

    fn on_reply(&self, reply: &mut Result<M::Reply, WorkerError>) {
        let body = outcome_text(reply);
        self.log
            .push(Seen::typed::<M>(self.label, self.side, false, body));
    }
}

/// Refuses every request of its message type with an error so named.
struct TypedRefuser(&'static str);

impl<M: WorkerMessage> MessageMiddleware<M> for TypedRefuser {
    fn on_request(&self, _: &mut M) -> Result<(), RemoteError> {
        Err(RemoteError::new(self.0, "refused by a typed middleware"))
    }
}

/// Sets a `Note`'s `n`.
struct SetN(u64);

impl MessageMiddleware<Note> for SetN {
    fn on_request(&self, note: &mut Note) -> Result<(), RemoteError> {
        note.n = self.0;
        Ok(())
    }
}

/// Upper-cases a `Shout`'s reply.
struct Uppercase;

impl MessageMiddleware<Shout> for Uppercase {
    fn on_reply(&self, reply: &mut Result<String, WorkerError>) {
        if let Ok(text) = reply {
            *text = text.to_uppercase();
        }
    }
}

/// The worker side's chain: untyped `[c, d]` (`d` refuses `Secret`), typed
/// `[U, Uppercase]` for `Shout` and `[G, refuse]` for `Guarded`.
fn worker_chain(log: &Log) -> Middlewares {
    Middlewares::new()
        .layer(Recorder::new("c", log))
        .layer(Recorder::new("d", log).refusing("Secret", "UntypedNo"))
        .for_message::<Shout>(TypedRecorder::new("U", Side::Worker, log))
        .for_message::<Shout>(Uppercase)
        .for_message::<Guarded>(TypedRecorder::new("G", Side::Worker, log))
        .for_message::<Guarded>(TypedRefuser("TypedNo"))
}

/// The worker actor: each handler records the message it got.
struct Scribe {
    log: Log,
}

impl Actor for Scribe {
    type Context = Context<Self>;
}

impl Handler<Note> for Scribe {
    type Result = Result<String, WorkerError>;
    fn handle(&mut self, note: Note, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&note));
        Ok(format!("{}:{}", note.text, note.n))
    }
}

impl Handler<Shout> for Scribe {
    type Result = Result<String, WorkerError>;
    fn handle(&mut self, shout: Shout, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&shout));
        Ok(shout.text)
    }
}

impl Handler<Secret> for Scribe {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, secret: Secret, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&secret));
        Ok(())
    }
}

impl Handler<Guarded> for Scribe {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, guarded: Guarded, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&guarded));
        Ok(())
    }
}

impl Handler<Nap> for Scribe {
    type Result = ResponseFuture<Result<(), WorkerError>>;
    fn handle(&mut self, nap: Nap, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&nap));
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(nap.ms)).await;
            Ok(())
        })
    }
}

impl Handler<Fail> for Scribe {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, fail: Fail, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&fail));
        Err(RemoteError::new("Broken", "the handler failed").into())
    }
}

impl Handler<Flaky> for Scribe {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, flaky: Flaky, _: &mut Context<Self>) -> Self::Result {
        self.log.push(Seen::handler(&flaky));
        let marker = Path::new(&flaky.marker);
        if marker.exists() {
            return Ok(());
        }
        std::fs::write(marker, "crashed once").map_err(|e| RemoteError::from_error(&e))?;
        support::panic_on_purpose("flaky: the first try crashes");
    }
}

impl Handler<Trail> for Scribe {
    type Result = Result<Vec<Seen>, WorkerError>;
    fn handle(&mut self, _: Trail, _: &mut Context<Self>) -> Self::Result {
        Ok(self.log.lines())
    }
}

/// A driver the suite runs against.
trait Rig: Driver<Mw> {
    const NAME: &'static str;
    /// Whether the worker's chain runs in this process.
    const THREAD: bool;
    /// The driver; a thread worker's chain and handlers record to `log`.
    fn make(log: &Log) -> Self;
}

impl Rig for ChildProcess {
    const NAME: &'static str = "child_process";
    const THREAD: bool = false;
    fn make(_: &Log) -> Self {
        ChildProcess::current_exe(WORKER)
    }
}

impl Rig for Thread<Scribe> {
    const NAME: &'static str = "thread";
    const THREAD: bool = true;
    fn make(log: &Log) -> Self {
        let for_actor = log.clone();
        Thread::new(move || Scribe {
            log: for_actor.clone(),
        })
        .middleware(worker_chain(log))
    }
}

type Proxy<D> = Addr<Worker<Mw, D>>;

async fn spawn<D: Rig>(worker_log: &Log, options: WorkerOptions) -> Result<Proxy<D>, Failed> {
    Worker::<Mw, D>::spawn_with(D::make(worker_log), options)
        .await
        .map_err(fail)
}

/// What the worker's middleware and handlers recorded (but for `Trail`).
async fn trail<D: Rig>(worker: &Proxy<D>) -> Result<Vec<Seen>, Failed> {
    ask(worker, Trail).await
}

async fn close<D: Rig>(worker: &Proxy<D>) -> Result<(), Failed> {
    worker.send(Close).await.map_err(fail)
}

fn steps<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> Vec<String> {
    seen.into_iter().map(Seen::step).collect()
}

/// What was recorded of message `name`.
fn of<'a>(seen: &'a [Seen], name: &'a str) -> impl Iterator<Item = &'a Seen> + 'a {
    seen.iter().filter(move |s| s.name == name)
}

fn same<T, U>(what: &str, got: T, want: U) -> Result<(), Failed>
where
    T: PartialEq<U> + Debug,
    U: Debug,
{
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}:\n   got {got:?}\n  want {want:?}").into())
    }
}

fn expect(what: &str, holds: bool) -> Result<(), Failed> {
    if holds {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// The body recorded of message `name` at `step` (e.g. `a host in`).
fn body_of(seen: &[Seen], name: &str, step: &str) -> Result<String, Failed> {
    of(seen, name)
        .find(|s| s.step() == step)
        .map(|s| s.body.clone())
        .ok_or_else(|| format!("nothing recorded as `{step}` for {name} in {seen:?}").into())
}

fn encoded<T: Serialize>(value: &T) -> Result<String, Failed> {
    Ok(format!(
        "bytes:{}",
        hex::encode(rmp_serde::to_vec(value).map_err(fail)?)
    ))
}

// 1. Order.

async fn a_round_trip_passes_the_chains_in_order<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    // A thread worker's chain runs here: it records into the host's log,
    // so the whole round trip is in one order.
    let worker_log = if D::THREAD {
        host.clone()
    } else {
        Log::default()
    };
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .layer(Recorder::new("b", &host));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    same("the reply", ask(&worker, note("hi", 1)).await?, "hi:1")?;
    let worker_saw = trail(&worker).await?;
    let host_saw = host.lines();
    if D::THREAD {
        same(
            "one round trip",
            steps(&host_saw),
            [
                "a host out",
                "b host out",
                "c worker in",
                "d worker in",
                "handler",
                "d worker out",
                "c worker out",
                "b host in",
                "a host in",
            ],
        )?;
    } else {
        same(
            "the host's chain",
            steps(&host_saw),
            ["a host out", "b host out", "b host in", "a host in"],
        )?;
        same(
            "the worker's chain",
            steps(&worker_saw),
            [
                "c worker in",
                "d worker in",
                "handler",
                "d worker out",
                "c worker out",
            ],
        )?;
    }
    close(&worker).await
}

// 2. Passages: side, direction, is_request, id, elapsed.

async fn passages_tell_side_direction_id_and_elapsed<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    ask(&worker, note("one", 1)).await?;
    ask(&worker, note("two", 2)).await?;
    ask(&worker, Nap { ms: 60 }).await?;
    let host_saw = host.lines();
    let worker_saw: Vec<Seen> = trail(&worker)
        .await?
        .into_iter()
        .filter(|s| !s.is_handler())
        .collect();

    for seen in host_saw.iter().chain(&worker_saw) {
        let outgoing = seen.direction == "out";
        let want_request = if seen.side == "host" {
            outgoing
        } else {
            !outgoing
        };
        same(
            &format!("is_request of {seen:?}"),
            seen.request,
            want_request,
        )?;
        same(
            &format!("elapsed is Some exactly for responses: {seen:?}"),
            seen.elapsed.is_some(),
            !seen.request,
        )?;
    }
    same(
        "the host's middleware sees each request go out, then its reply come in",
        steps(&host_saw),
        ["a host out", "a host in"].repeat(3),
    )?;
    let ids: Vec<u64> = host_saw.iter().map(|s| s.id).collect();
    same(
        "a request and its reply share an id on the host",
        [ids[0], ids[2], ids[4]],
        [ids[1], ids[3], ids[5]],
    )?;
    expect(
        &format!("each request has its own id: {ids:?}"),
        ids[0] != ids[2] && ids[2] != ids[4] && ids[0] != ids[4],
    )?;
    // The worker's chain: c and d see each request come in, then its
    // reply go out, under the id the host saw.
    let mut want = Vec::new();
    for id in [ids[0], ids[2], ids[4]] {
        for step in ["c worker in", "d worker in", "d worker out", "c worker out"] {
            want.push(format!("{step} #{id}"));
        }
    }
    let got: Vec<String> = worker_saw
        .iter()
        .map(|s| format!("{} #{}", s.step(), s.id))
        .collect();
    same("the worker's chain, with the host's ids", got, want)?;

    let nap = Duration::from_millis(60);
    for seen in host_saw.iter().chain(&worker_saw) {
        if seen.name == "Nap" && !seen.request {
            expect(
                &format!("a Nap of {nap:?} took at least that long: {seen:?}"),
                seen.elapsed.is_some_and(|took| took >= nap),
            )?;
        }
    }
    close(&worker).await
}

// Typed middleware sits outside the untyped on the host, inside on the
// worker.

async fn typed_middleware_is_outside_the_untyped_on_the_host_and_inside_on_the_worker<D: Rig>(
) -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = if D::THREAD {
        host.clone()
    } else {
        Log::default()
    };
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .for_message::<Shout>(TypedRecorder::new("T", Side::Host, &host));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    same("the reply", ask(&worker, shout("hey")).await?, "HEY")?;
    let worker_saw = trail(&worker).await?;
    let host_saw = host.lines();
    let worker_steps = [
        "c worker in",
        "d worker in",
        "U worker in",
        "handler",
        "U worker out",
        "d worker out",
        "c worker out",
    ];
    if D::THREAD {
        let mut want = vec!["T host out", "a host out"];
        want.extend(worker_steps);
        want.extend(["a host in", "T host in"]);
        same("one round trip", steps(&host_saw), want)?;
    } else {
        same(
            "the host's chain",
            steps(&host_saw),
            ["T host out", "a host out", "a host in", "T host in"],
        )?;
        same("the worker's chain", steps(&worker_saw), worker_steps)?;
    }
    let seen = if D::THREAD { &host_saw } else { &worker_saw };
    // U was added before Uppercase, so it is outside and sees the reply
    // Uppercase changed.
    same(
        "the worker's typed middleware saw",
        [
            body_of(seen, "Shout", "U worker in")?,
            body_of(seen, "Shout", "U worker out")?,
        ],
        ["Shout { text: \"hey\" }", "\"HEY\""],
    )?;
    same(
        "the host's typed middleware saw",
        [
            body_of(&host_saw, "Shout", "T host out")?,
            body_of(&host_saw, "Shout", "T host in")?,
        ],
        ["Shout { text: \"hey\" }", "\"HEY\""],
    )?;
    close(&worker).await
}

// 3. Body.

async fn untyped_middleware_sees_the_encoded_payload() -> Result<(), Failed> {
    let host = Log::default();
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let options = WorkerOptions::default().middleware(chain);
    let worker = spawn::<ChildProcess>(&Log::default(), options).await?;
    let sent = note("hi", 1);
    let reply = ask(&worker, sent.clone()).await?;
    same("the reply", &reply, &"hi:1".to_string())?;
    let host_saw = host.lines();
    let worker_saw = trail(&worker).await?;
    let request = encoded(&sent)?;
    let response = encoded(&reply)?;
    expect(
        "a message with data is not empty",
        request.len() > "bytes:".len() && response.len() > "bytes:".len(),
    )?;
    same(
        "the payloads, as bytes, on both sides",
        [
            body_of(&host_saw, "Note", "a host out")?,
            body_of(&worker_saw, "Note", "c worker in")?,
            body_of(&worker_saw, "Note", "c worker out")?,
            body_of(&host_saw, "Note", "a host in")?,
        ],
        [&*request, &request, &response, &response],
    )?;
    close(&worker).await
}

async fn untyped_middleware_sees_values() -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let options = WorkerOptions::default().middleware(chain);
    let worker = spawn::<Thread<Scribe>>(&worker_log, options).await?;
    same("the reply", ask(&worker, note("hi", 1)).await?, "hi:1")?;
    let host_saw = host.lines();
    let worker_saw = trail(&worker).await?;
    let request = "value:Note { text: \"hi\", n: 1 }";
    let response = "value:\"hi:1\"";
    same(
        "the message, then its reply, as values on both sides",
        [
            body_of(&host_saw, "Note", "a host out")?,
            body_of(&worker_saw, "Note", "c worker in")?,
            body_of(&worker_saw, "Note", "c worker out")?,
            body_of(&host_saw, "Note", "a host in")?,
        ],
        [request, request, response, response],
    )?;
    close(&worker).await
}

// 4. Refusals.

async fn a_host_refusal_never_reaches_the_worker_and_only_outer_middleware_sees_it<D: Rig>(
) -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .layer(Recorder::new("b", &host).refusing("Note", "HostNo"))
        .layer(Recorder::new("x", &host));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    match outcome(worker.send(note("no", 1))).await? {
        Err(WorkerError::Rejected(error)) if error.name == "HostNo" => {}
        other => return Err(format!("expected Rejected(HostNo), got {other:?}").into()),
    }
    let host_saw = host.lines();
    same(
        "the host's chain: b refused, only a (outside b) saw the refusal",
        steps(of(&host_saw, "Note")),
        ["a host out", "b host out", "a host in"],
    )?;
    same(
        "what a saw coming back",
        body_of(&host_saw, "Note", "a host in")?,
        "failed:Rejected(HostNo)",
    )?;
    // The worker serves on, and never saw the refused Note.
    same("the next reply", ask(&worker, shout("on")).await?, "ON")?;
    let worker_saw = trail(&worker).await?;
    same(
        "what the worker saw of the refused Note",
        steps(of(&worker_saw, "Note")),
        Vec::<String>::new(),
    )?;
    same(
        "the worker handled",
        steps(worker_saw.iter().filter(|s| s.is_handler())),
        ["handler"],
    )?;
    close(&worker).await
}

async fn a_worker_refusal_arrives_as_a_remote_error<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    match outcome(worker.send(Secret)).await? {
        Err(WorkerError::Remote(error)) if error.name == "UntypedNo" => {}
        other => return Err(format!("expected Remote(UntypedNo), got {other:?}").into()),
    }
    let worker_saw = trail(&worker).await?;
    same(
        "the worker's chain: d refused, only c (outside d) saw the refusal, the handler never ran",
        steps(of(&worker_saw, "Secret")),
        ["c worker in", "d worker in", "c worker out"],
    )?;
    same(
        "what c saw going back",
        body_of(&worker_saw, "Secret", "c worker out")?,
        "failed:Remote(UntypedNo)",
    )?;
    let host_saw = host.lines();
    same(
        "what the host's middleware saw coming back",
        body_of(&host_saw, "Secret", "a host in")?,
        "failed:Remote(UntypedNo)",
    )?;
    close(&worker).await
}

async fn typed_refusals_on_the_host_and_on_the_worker<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .for_message::<Note>(TypedRecorder::new("T", Side::Host, &host))
        .for_message::<Note>(TypedRefuser("HostTypedNo"));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;

    // On the host: refused before the untyped middleware and the worker.
    match outcome(worker.send(note("no", 1))).await? {
        Err(WorkerError::Rejected(error)) if error.name == "HostTypedNo" => {}
        other => return Err(format!("expected Rejected(HostTypedNo), got {other:?}").into()),
    }
    let host_saw = host.lines();
    same(
        "the host's middleware: T (outside the refuser) saw the refusal, the untyped none of it",
        steps(of(&host_saw, "Note")),
        ["T host out", "T host in"],
    )?;
    same(
        "what T saw coming back",
        body_of(&host_saw, "Note", "T host in")?,
        "failed:Rejected(HostTypedNo)",
    )?;

    // On the worker: refused after its untyped middleware, before the
    // handler.
    match outcome(worker.send(Guarded)).await? {
        Err(WorkerError::Remote(error)) if error.name == "TypedNo" => {}
        other => return Err(format!("expected Remote(TypedNo), got {other:?}").into()),
    }
    let worker_saw = trail(&worker).await?;
    same(
        "what the worker saw of the refused Note",
        steps(of(&worker_saw, "Note")),
        Vec::<String>::new(),
    )?;
    same(
        "the worker's chain for Guarded",
        steps(of(&worker_saw, "Guarded")),
        [
            "c worker in",
            "d worker in",
            "G worker in",
            "G worker out",
            "d worker out",
            "c worker out",
        ],
    )?;
    for step in ["G worker out", "c worker out"] {
        same(
            &format!("what {step} saw"),
            body_of(&worker_saw, "Guarded", step)?,
            "failed:Remote(TypedNo)",
        )?;
    }
    same(
        "what the host's untyped middleware saw coming back",
        body_of(&host.lines(), "Guarded", "a host in")?,
        "failed:Remote(TypedNo)",
    )?;
    close(&worker).await
}

// 5. Changes.

async fn a_host_typed_middleware_changes_the_message<D: Rig>() -> Result<(), Failed> {
    let worker_log = Log::default();
    let chain = Middlewares::new().for_message::<Note>(SetN(42));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    same(
        "the reply to the changed message",
        ask(&worker, note("hi", 1)).await?,
        "hi:42",
    )?;
    let worker_saw = trail(&worker).await?;
    same(
        "what the handler got",
        body_of(&worker_saw, "Note", "handler")?,
        format!("{:?}", note("hi", 42)),
    )?;
    close(&worker).await
}

async fn a_host_untyped_middleware_replaces_the_message<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let swapped = note("swapped", 9);
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .layer(SwapNote {
            with: swapped.clone(),
        });
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    same(
        "the reply to the replaced message",
        ask(&worker, note("hi", 1)).await?,
        "swapped:9",
    )?;
    let worker_saw = trail(&worker).await?;
    let want_in = if D::THREAD {
        format!("value:{swapped:?}")
    } else {
        encoded(&swapped)?
    };
    same(
        "what the worker's middleware got",
        body_of(&worker_saw, "Note", "c worker in")?,
        want_in,
    )?;
    same(
        "what the handler got",
        body_of(&worker_saw, "Note", "handler")?,
        format!("{swapped:?}"),
    )?;
    close(&worker).await
}

async fn a_worker_typed_middleware_changes_the_reply<D: Rig>() -> Result<(), Failed> {
    let worker = spawn::<D>(&Log::default(), WorkerOptions::default()).await?;
    same(
        "the changed reply",
        ask(&worker, shout("quiet")).await?,
        "QUIET",
    )?;
    let worker_saw = trail(&worker).await?;
    same(
        "what the handler got",
        body_of(&worker_saw, "Shout", "handler")?,
        format!("{:?}", shout("quiet")),
    )?;
    close(&worker).await
}

// 6. Failures reach the response hooks.

async fn a_timeout_reaches_the_response_hooks<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let timeout = Duration::from_millis(150);
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .for_message::<Nap>(TypedRecorder::new("T", Side::Host, &host));
    let options = WorkerOptions::default()
        .middleware(chain)
        .timeout_for::<Nap>(timeout);
    let worker = spawn::<D>(&Log::default(), options).await?;
    match outcome(worker.send(Nap { ms: 30_000 })).await? {
        Err(WorkerError::Timeout { after, message, .. })
            if after == timeout && message == "Nap" => {}
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    let host_saw = host.lines();
    same(
        "the host's middleware",
        steps(of(&host_saw, "Nap")),
        ["T host out", "a host out", "a host in", "T host in"],
    )?;
    same(
        "what came back",
        [
            body_of(&host_saw, "Nap", "a host in")?,
            body_of(&host_saw, "Nap", "T host in")?,
        ],
        ["failed:Timeout", "failed:Timeout"],
    )?;
    let back = of(&host_saw, "Nap").find(|s| s.step() == "a host in");
    expect(
        &format!("the timed-out reply's elapsed is about the timeout: {back:?}"),
        back.and_then(|s| s.elapsed)
            .is_some_and(|took| took >= timeout / 2),
    )?;
    same(
        "the worker serves on",
        ask(&worker, shout("on")).await?,
        "ON",
    )?;
    close(&worker).await
}

async fn a_handler_error_reaches_the_response_hooks<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let worker = spawn::<D>(&Log::default(), WorkerOptions::default().middleware(chain)).await?;
    match outcome(worker.send(Fail)).await? {
        Err(WorkerError::Remote(error)) if error.name == "Broken" => {}
        other => return Err(format!("expected Remote(Broken), got {other:?}").into()),
    }
    same(
        "what the host's middleware saw coming back",
        body_of(&host.lines(), "Fail", "a host in")?,
        "failed:Remote(Broken)",
    )?;
    let worker_saw = trail(&worker).await?;
    same(
        "the worker's chain",
        steps(of(&worker_saw, "Fail")),
        [
            "c worker in",
            "d worker in",
            "handler",
            "d worker out",
            "c worker out",
        ],
    )?;
    same(
        "what the worker's middleware saw going back",
        [
            body_of(&worker_saw, "Fail", "d worker out")?,
            body_of(&worker_saw, "Fail", "c worker out")?,
        ],
        ["failed:Remote(Broken)", "failed:Remote(Broken)"],
    )?;
    close(&worker).await
}

// Refusals and overload against the in-flight and queue bounds.

async fn a_refused_request_takes_no_place_in_the_queue<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let chain = Middlewares::new()
        .layer(Recorder::new("a", &host))
        .layer(Recorder::new("b", &host).refusing("Note", "HostNo"));
    let options = WorkerOptions::default()
        .middleware(chain)
        .max_in_flight(1)
        .max_queued(1);
    let worker = spawn::<D>(&Log::default(), options).await?;
    // Holds the only in-flight slot.
    let nap = enqueue(&worker, Nap { ms: 30_000 });
    match outcome(worker.send(note("no", 1))).await? {
        Err(WorkerError::Rejected(error)) if error.name == "HostNo" => {}
        other => return Err(format!("expected Rejected(HostNo), got {other:?}").into()),
    }
    let status = worker.send(Status).await.map_err(fail)?;
    same(
        "requests in flight and queued after the refusal",
        (status.in_flight, status.queued),
        (1, 0),
    )?;
    // The queue's one place is free: this request waits there, and runs
    // once the nap is withdrawn.
    let queued = enqueue(&worker, shout("queued"));
    drop(nap);
    same(
        "the queued request's reply",
        outcome(queued).await?.map_err(fail)?,
        "QUEUED",
    )?;
    close(&worker).await
}

async fn an_overloaded_request_passes_the_host_typed_reply_hook<D: Rig>() -> Result<(), Failed> {
    let host = Log::default();
    let chain = Middlewares::new().for_message::<Note>(TypedRecorder::new("T", Side::Host, &host));
    let options = WorkerOptions::default()
        .middleware(chain)
        .max_in_flight(1)
        .max_queued(0);
    let worker = spawn::<D>(&Log::default(), options).await?;
    let nap = enqueue(&worker, Nap { ms: 30_000 });
    let error = expect_error(outcome(worker.send(note("late", 1))).await?)?;
    same("the outcome", kind(&error), "Overloaded")?;
    let host_saw = host.lines();
    same(
        "the host's typed middleware",
        steps(of(&host_saw, "Note")),
        ["T host out", "T host in"],
    )?;
    same(
        "what it saw coming back",
        body_of(&host_saw, "Note", "T host in")?,
        "failed:Overloaded",
    )?;
    drop(nap);
    close(&worker).await
}

// do_send: nobody waits.

async fn do_send_runs_on_the_worker_and_passes_the_host_hooks_both_ways<D: Rig>(
) -> Result<(), Failed> {
    let host = Log::default();
    let worker_log = Log::default();
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let worker = spawn::<D>(&worker_log, WorkerOptions::default().middleware(chain)).await?;
    worker.do_send(note("fire", 7));
    let handled = |seen: &[Seen]| of(seen, "Note").any(Seen::is_handler);
    if D::THREAD {
        let limit = Duration::from_secs(5);
        expect(
            &format!("the worker handles a do_send within {limit:?}"),
            worker_log.wait_for(limit, handled).await,
        )?;
    } else {
        // Requests are handled in the order they were sent.
        let worker_saw = trail(&worker).await?;
        expect(
            &format!("the worker handled the do_send before Trail: {worker_saw:?}"),
            handled(&worker_saw),
        )?;
    }
    same(
        "a later reply",
        ask(&worker, shout("after")).await?,
        "AFTER",
    )?;
    // Nobody reads the reply, but the host's middleware sees it come back.
    let limit = Duration::from_secs(5);
    let both_ways = |seen: &[Seen]| steps(of(seen, "Note")) == ["a host out", "a host in"];
    expect(
        &format!(
            "the host's middleware sees the do_send go and come back within {limit:?}: {:?}",
            steps(of(&host.lines(), "Note"))
        ),
        host.wait_for(limit, both_ways).await,
    )?;
    close(&worker).await
}

// Ids over a byte stream.

async fn a_retried_request_keeps_its_id_on_the_host_and_gets_one_from_the_fresh_worker(
) -> Result<(), Failed> {
    let host = Log::default();
    let dir = tempfile::tempdir().map_err(fail)?;
    let marker = dir.path().join("flaky-crashed");
    let chain = Middlewares::new().layer(Recorder::new("a", &host));
    let options = WorkerOptions::default()
        .middleware(chain)
        .on_crash::<Flaky>(CrashPolicy::Retry { attempts: 1 });
    // The deliberate panic need not print a backtrace.
    let driver = ChildProcess::current_exe(WORKER).env("RUST_BACKTRACE", "0");
    let worker = Worker::<Mw>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    ask(&worker, note("first", 1)).await?;
    ask(
        &worker,
        Flaky {
            marker: marker.display().to_string(),
        },
    )
    .await?;
    let host_saw = host.lines();
    same(
        "the host's middleware saw one request and one reply",
        steps(of(&host_saw, "Flaky")),
        ["a host out", "a host in"],
    )?;
    let host_ids: Vec<u64> = of(&host_saw, "Flaky").map(|s| s.id).collect();
    // The fresh worker saw the retry.
    let worker_saw = trail(&worker).await?;
    let worker_ids: Vec<u64> = of(&worker_saw, "Flaky")
        .filter(|s| !s.is_handler())
        .map(|s| s.id)
        .collect();
    same(
        "the fresh worker's chain",
        steps(of(&worker_saw, "Flaky")),
        [
            "c worker in",
            "d worker in",
            "handler",
            "d worker out",
            "c worker out",
        ],
    )?;
    // The host keeps the first id throughout (documented on `Passage::id`);
    // the fresh worker numbers the retry anew, one id for its whole passage.
    expect(
        &format!("the host saw one id for the retried request: {host_ids:?}"),
        host_ids.windows(2).all(|w| w[0] == w[1]),
    )?;
    same(
        "the ids of the retry on the fresh worker",
        worker_ids.clone(),
        vec![worker_ids[0]; 4],
    )?;
    close(&worker).await
}

fn suite<D: Rig>() -> Vec<Trial> {
    macro_rules! cases {
        ($($behaviour:ident),* $(,)?) => {
            vec![$(case::<D, _>(stringify!($behaviour), $behaviour::<D>)),*]
        };
    }
    cases![
        a_round_trip_passes_the_chains_in_order,
        passages_tell_side_direction_id_and_elapsed,
        typed_middleware_is_outside_the_untyped_on_the_host_and_inside_on_the_worker,
        a_host_refusal_never_reaches_the_worker_and_only_outer_middleware_sees_it,
        a_worker_refusal_arrives_as_a_remote_error,
        typed_refusals_on_the_host_and_on_the_worker,
        a_host_typed_middleware_changes_the_message,
        a_host_untyped_middleware_replaces_the_message,
        a_worker_typed_middleware_changes_the_reply,
        a_timeout_reaches_the_response_hooks,
        a_handler_error_reaches_the_response_hooks,
        a_refused_request_takes_no_place_in_the_queue,
        an_overloaded_request_passes_the_host_typed_reply_hook,
        do_send_runs_on_the_worker_and_passes_the_host_hooks_both_ways,
    ]
}

fn case<D, Fut>(behaviour: &str, test: fn() -> Fut) -> Trial
where
    D: Rig,
    Fut: Future<Output = Result<(), Failed>> + 'static,
{
    actix_test(&format!("{}::{behaviour}", D::NAME), test)
}

fn main() {
    support::quiet_panics_on_purpose();
    let log = Log::default();
    let chain = worker_chain(&log);
    isolated_workers::worker_entry_with::<Mw, _>(WORKER, move || Scribe { log }, chain);

    let mut trials = suite::<ChildProcess>();
    trials.extend(suite::<Thread<Scribe>>());
    trials.push(actix_test(
        "child_process::untyped_middleware_sees_the_encoded_payload",
        untyped_middleware_sees_the_encoded_payload,
    ));
    trials.push(actix_test(
        "child_process::a_retried_request_keeps_its_id_on_the_host_and_gets_one_from_the_fresh_worker",
        a_retried_request_keeps_its_id_on_the_host_and_gets_one_from_the_fresh_worker,
    ));
    trials.push(actix_test(
        "thread::untyped_middleware_sees_values",
        untyped_middleware_sees_values,
    ));
    run(trials);
}
