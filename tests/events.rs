//! Worker → host events, over every built-in driver: order (also against
//! the reply), delivery to a `Recipient` and to a stream, the end of the
//! streams at `Close`, subscriptions outliving a crashed worker, the
//! policy for slow subscribers, and emitting from outside the handler.

mod support;

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use futures::{FutureExt, StreamExt};
use isolated_workers::proxy::{EventStream, Subscribe, SubscribeStream, WorkerEvent};
use isolated_workers::worker::{EmitError, Events, EVENT_BACKLOG};
use isolated_workers::{
    ChildProcess, Close, Driver, RemoteError, Status, Thread, Worker, WorkerError, WorkerState,
};
use libtest_mimic::{Failed, Trial};
use serde::{Deserialize, Serialize};
use support::{actix_test, enter_workers, fail, kill, run, Calc};

/// One step of job `job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub job: u32,
    pub step: u32,
}

/// Emits steps `0..=steps` of `job` (waiting for room), then answers
/// their sum.
#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    pub job: u32,
    pub steps: u32,
}

/// As [`Run`], from a blocking thread (`spawn_blocking`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunBlocking {
    pub job: u32,
    pub steps: u32,
}

/// Answers at once; a spawned task then emits steps `0..=steps` of `job`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunAfterReply {
    pub job: u32,
    pub steps: u32,
}

/// Calls `try_emit` `count` times without yielding; answers how many
/// found the backlog full (and got their event back).
#[derive(Debug, Serialize, Deserialize)]
pub struct Burst {
    pub count: u32,
}

/// Panics in the handler.
#[derive(Debug, Serialize, Deserialize)]
pub struct Explode;

isolated_workers::contract! {
    /// A worker that reports its progress.
    pub Jobs (events = Step) {
        Run => u64,
        RunBlocking => u64,
        RunAfterReply => (),
        Burst => u32,
        Explode => (),
    }
}

#[derive(Debug, Default)]
pub struct JobWorker;

impl Actor for JobWorker {
    type Context = Context<Self>;
}

fn sum(steps: u32) -> u64 {
    (0..=u64::from(steps)).sum()
}

fn closed(e: EmitError<Step>) -> WorkerError {
    RemoteError::new("EmitFailed", e.to_string()).into()
}

impl Handler<Run> for JobWorker {
    type Result = ResponseFuture<Result<u64, WorkerError>>;
    fn handle(&mut self, Run { job, steps }: Run, _: &mut Context<Self>) -> Self::Result {
        let events = Events::<Jobs>::current();
        Box::pin(async move {
            for step in 0..=steps {
                events.emit(Step { job, step }).await.map_err(closed)?;
            }
            Ok(sum(steps))
        })
    }
}

impl Handler<RunBlocking> for JobWorker {
    type Result = ResponseFuture<Result<u64, WorkerError>>;
    fn handle(&mut self, run: RunBlocking, _: &mut Context<Self>) -> Self::Result {
        let events = Events::<Jobs>::current();
        Box::pin(async move {
            let (job, steps) = (run.job, run.steps);
            let emitted = actix_rt::task::spawn_blocking(move || {
                for step in 0..=steps {
                    events.blocking_emit(Step { job, step }).map_err(closed)?;
                }
                Ok(sum(steps))
            });
            emitted
                .await
                .map_err(|e| RemoteError::new("Join", e.to_string()))?
        })
    }
}

impl Handler<RunAfterReply> for JobWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, run: RunAfterReply, _: &mut Context<Self>) -> Self::Result {
        let events = Events::<Jobs>::current();
        actix_rt::spawn(async move {
            for step in 0..=run.steps {
                let next = Step { job: run.job, step };
                if events.emit(next).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        Ok(())
    }
}

impl Handler<Burst> for JobWorker {
    type Result = Result<u32, WorkerError>;
    fn handle(&mut self, burst: Burst, _: &mut Context<Self>) -> Self::Result {
        let events = Events::<Jobs>::current();
        let mut full = 0;
        for step in 0..burst.count {
            match events.try_emit(Step { job: 0, step }) {
                Ok(()) => {}
                Err(EmitError::Full(back)) if back.step == step => full += 1,
                Err(e) => return Err(closed(e)),
            }
        }
        Ok(full)
    }
}

impl Handler<Explode> for JobWorker {
    type Result = Result<(), WorkerError>;
    fn handle(&mut self, _: Explode, _: &mut Context<Self>) -> Self::Result {
        support::panic_on_purpose("exploding on purpose");
    }
}

fn main() {
    enter_workers();
    isolated_workers::worker_entry::<Jobs, _>("jobs", JobWorker::default);
    let mut trials = suite("child_process", || ChildProcess::current_exe("jobs"));
    trials.extend(suite("thread", || Thread::new(JobWorker::default)));
    trials.extend([
        actix_test(
            "child_process::subscriptions_survive_a_sigkilled_worker_and_its_restart",
            subscriptions_survive_a_sigkilled_worker_and_its_restart,
        ),
        actix_test(
            "child_process::try_emit_beyond_the_backlog_fails_full_and_hands_the_event_back",
            try_emit_beyond_the_backlog_fails_full_and_hands_the_event_back,
        ),
        actix_test(
            "child_process::a_contract_without_events_serves_and_its_stream_ends_at_close",
            a_contract_without_events_serves_and_its_stream_ends_at_close,
        ),
    ]);
    run(trials);
}

/// Every driver-independent test, for the driver `make` builds; each is
/// named `<driver>::<behaviour>`.
fn suite<D: Driver<Jobs>>(driver: &str, make: fn() -> D) -> Vec<Trial> {
    macro_rules! cases {
        ($($behaviour:ident),* $(,)?) => {
            vec![$(case(driver, stringify!($behaviour), make, $behaviour)),*]
        };
    }
    cases![
        events_arrive_in_order_and_before_the_reply,
        ten_thousand_events_arrive_in_order_with_none_lost,
        a_recipient_gets_every_event_in_order_before_the_reply,
        events_emitted_from_a_blocking_thread_arrive_before_the_reply,
        each_subscriber_gets_every_event_and_a_dropped_stream_unsubscribes,
        streams_end_after_the_last_event_at_close,
        subscriptions_survive_a_crashed_worker_and_its_restart,
        a_slow_stream_misses_events_and_learns_how_many,
        a_slow_recipient_misses_events_and_learns_how_many,
    ]
}

fn case<D, Fut>(driver: &str, behaviour: &str, make: fn() -> D, test: fn(D) -> Fut) -> Trial
where
    D: Driver<Jobs>,
    Fut: Future<Output = Result<(), Failed>> + 'static,
{
    actix_test(&format!("{driver}::{behaviour}"), move || test(make()))
}

/// The steps of `job`, `from..=to`, none missed.
fn steps(job: u32, from: u32, to: u32) -> Vec<(Step, u64)> {
    (from..=to).map(|step| (Step { job, step }, 0)).collect()
}

/// What `stream` holds right now, without waiting.
fn buffered(stream: &mut EventStream<Step>) -> Vec<(Step, u64)> {
    let mut seen = Vec::new();
    while let Some(Some(event)) = stream.next().now_or_never() {
        seen.push((event.event, event.missed));
    }
    seen
}

/// Everything `stream` yields until it ends.
async fn to_the_end(stream: EventStream<Step>) -> Vec<(Step, u64)> {
    stream.map(|e| (e.event, e.missed)).collect().await
}

/// Awaits `run`, a 100-step job `job`: its 101 events are all in `events`
/// by the time its reply resolves, in order.
async fn all_steps_before_the_reply(
    events: &mut EventStream<Step>,
    run: impl Future<Output = Result<Result<u64, WorkerError>, MailboxError>>,
    job: u32,
) -> Result<(), Failed> {
    assert_eq!(run.await?.map_err(fail)?, sum(100));
    assert_eq!(buffered(events), steps(job, 0, 100));
    Ok(())
}

async fn spawn<D: Driver<Jobs>>(driver: D) -> Result<Addr<Worker<Jobs, D>>, Failed> {
    Worker::<Jobs, D>::spawn(driver).await.map_err(fail)
}

async fn events_arrive_in_order_and_before_the_reply<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let mut events = worker.send(SubscribeStream::new()).await?;
    let run = worker.send(Run { job: 1, steps: 100 });
    all_steps_before_the_reply(&mut events, run, 1).await?;
    worker.send(Close).await?;
    assert!(to_the_end(events).await.is_empty(), "nothing after them");
    Ok(())
}

async fn ten_thousand_events_arrive_in_order_with_none_lost<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let events = worker.send(SubscribeStream::new().capacity(20_000)).await?;
    // Ten times the worker's backlog: `emit` waits for room.
    let (first, second) = futures::join!(
        worker.send(Run {
            job: 1,
            steps: 9_999
        }),
        worker.send(Run { job: 2, steps: 99 }),
    );
    first?.map_err(fail)?;
    second?.map_err(fail)?;
    worker.send(Close).await?;
    let seen = to_the_end(events).await;
    for job in [1, 2] {
        let of_job: Vec<_> = seen.iter().filter(|(e, _)| e.job == job).copied().collect();
        let last = if job == 1 { 9_999 } else { 99 };
        assert!(
            of_job == steps(job, 0, last),
            "job {job} in order, none lost"
        );
    }
    assert_eq!(seen.len(), 10_100);
    Ok(())
}

/// An actor that keeps what it is sent. With a gate, its handler blocks on
/// the first event until the test opens the gate: a slow subscriber, which
/// holds every event delivered meanwhile.
#[derive(Default)]
struct Collector {
    seen: Vec<(Step, u64)>,
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<WorkerEvent<Step>> for Collector {
    type Result = ();
    fn handle(&mut self, event: WorkerEvent<Step>, _: &mut Context<Self>) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv_timeout(Duration::from_secs(30));
        }
        self.seen.push((event.event, event.missed));
    }
}

/// Answers what a [`Collector`] has seen so far; queued
/// behind the events delivered before it.
struct Seen;

impl Message for Seen {
    type Result = Vec<(Step, u64)>;
}

impl Handler<Seen> for Collector {
    type Result = MessageResult<Seen>;
    fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.seen.clone())
    }
}

async fn a_recipient_gets_every_event_in_order_before_the_reply<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let collector = Collector::default().start();
    worker
        .send(Subscribe::new(collector.clone().recipient()))
        .await?;
    worker
        .send(Run { job: 7, steps: 100 })
        .await?
        .map_err(fail)?;
    // `Seen` is sent after the reply resolved, so it is handled after
    // every event that was in the mailbox by then.
    assert_eq!(collector.send(Seen).await?, steps(7, 0, 100));
    worker.send(Close).await?;
    Ok(())
}

async fn events_emitted_from_a_blocking_thread_arrive_before_the_reply<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let mut events = worker.send(SubscribeStream::new()).await?;
    let run = worker.send(RunBlocking { job: 3, steps: 100 });
    all_steps_before_the_reply(&mut events, run, 3).await?;
    worker.send(Close).await?;
    Ok(())
}

async fn each_subscriber_gets_every_event_and_a_dropped_stream_unsubscribes<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let mut first = worker.send(SubscribeStream::new()).await?;
    let mut second = worker.send(SubscribeStream::new()).await?;
    let dropped = worker.send(SubscribeStream::new()).await?;
    let collector = Collector::default().start();
    worker
        .send(Subscribe::new(collector.clone().recipient()))
        .await?;
    drop(dropped);
    worker
        .send(Run { job: 1, steps: 10 })
        .await?
        .map_err(fail)?;
    assert_eq!(buffered(&mut first), steps(1, 0, 10));
    assert_eq!(buffered(&mut second), steps(1, 0, 10));
    assert_eq!(collector.send(Seen).await?, steps(1, 0, 10));
    // A stopped recipient and a dropped stream are left out from then on.
    drop(first);
    collector.send(StopCollecting).await?;
    worker
        .send(Run { job: 2, steps: 10 })
        .await?
        .map_err(fail)?;
    assert_eq!(buffered(&mut second), steps(2, 0, 10));
    worker.send(Close).await?;
    Ok(())
}

/// Stops a [`Collector`].
#[derive(Message)]
#[rtype(result = "()")]
struct StopCollecting;

impl Handler<StopCollecting> for Collector {
    type Result = ();
    fn handle(&mut self, _: StopCollecting, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

async fn streams_end_after_the_last_event_at_close<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let events = worker.send(SubscribeStream::new().capacity(10_000)).await?;
    worker
        .send(Run { job: 1, steps: 10 })
        .await?
        .map_err(fail)?;
    // Still emitting when Close arrives.
    worker
        .send(RunAfterReply {
            job: 2,
            steps: 5_000,
        })
        .await?
        .map_err(fail)?;
    worker.send(Close).await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), to_the_end(events))
        .await
        .map_err(|_| "the stream did not end after Close")?;
    let (first, rest) = seen.split_at(11.min(seen.len()));
    assert_eq!(first, steps(1, 0, 10));
    // The second job's events up to where the worker stopped, in order.
    let last = rest.last().map(|(e, _)| e.step);
    assert_eq!(rest, last.map_or(Vec::new(), |last| steps(2, 0, last)));
    // A subscription after Close ends at once.
    let late = worker.send(SubscribeStream::new()).await?;
    assert!(to_the_end(late).await.is_empty());
    Ok(())
}

async fn subscriptions_survive_a_crashed_worker_and_its_restart<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let mut events = worker.send(SubscribeStream::new()).await?;
    let collector = Collector::default().start();
    worker
        .send(Subscribe::new(collector.clone().recipient()))
        .await?;
    worker.send(Run { job: 1, steps: 3 }).await?.map_err(fail)?;
    let crashed = worker.send(Explode).await?;
    assert!(
        matches!(crashed, Err(WorkerError::Crashed { .. })),
        "{crashed:?}"
    );
    until_crashed(&worker).await?;
    // The next request starts a fresh worker, whose events reach both.
    worker.send(Run { job: 2, steps: 3 }).await?.map_err(fail)?;
    let mut expected = steps(1, 0, 3);
    expected.extend(steps(2, 0, 3));
    assert_eq!(buffered(&mut events), expected);
    assert_eq!(collector.send(Seen).await?, expected);
    worker.send(Close).await?;
    Ok(())
}

async fn a_slow_stream_misses_events_and_learns_how_many<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let mut slow = worker.send(SubscribeStream::new().capacity(8)).await?;
    let mut keeping_up = worker.send(SubscribeStream::new()).await?;
    worker
        .send(Run { job: 1, steps: 99 })
        .await?
        .map_err(fail)?;
    // The slow stream holds 8 and no more; the other one has all 100.
    assert_eq!(buffered(&mut keeping_up), steps(1, 0, 99));
    assert_eq!(buffered(&mut slow), steps(1, 0, 7));
    // The next event it gets says how many it missed; order holds.
    worker.send(Run { job: 2, steps: 3 }).await?.map_err(fail)?;
    let mut expected = steps(2, 0, 3);
    expected[0].1 = 92;
    assert_eq!(buffered(&mut slow), expected);
    worker.send(Close).await?;
    Ok(())
}

async fn a_slow_recipient_misses_events_and_learns_how_many<D: Driver<Jobs>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = spawn(driver).await?;
    let (open, gate) = std::sync::mpsc::channel();
    let arbiter = Arbiter::new();
    let slow = Collector::start_in_arbiter(&arbiter.handle(), move |_| Collector {
        gate: Some(gate),
        ..Collector::default()
    });
    worker
        .send(Subscribe::new(slow.clone().recipient()).capacity(4))
        .await?;
    worker
        .send(Run { job: 1, steps: 99 })
        .await?
        .map_err(fail)?;
    open.send(()).map_err(fail)?;
    // Handled in order once the gate opened: the 4 it held, no more.
    assert_eq!(slow.send(Seen).await?, steps(1, 0, 3));
    worker.send(Run { job: 2, steps: 1 }).await?.map_err(fail)?;
    let mut expected = steps(1, 0, 3);
    expected.extend([
        (Step { job: 2, step: 0 }, 96),
        (Step { job: 2, step: 1 }, 0),
    ]);
    assert_eq!(slow.send(Seen).await?, expected);
    worker.send(Close).await?;
    arbiter.stop();
    Ok(())
}

/// Waits until the proxy has noticed its worker died (it does on its own;
/// the proxy offers no event to wait on, so this asks `Status`).
async fn until_crashed<D: Driver<Jobs>>(worker: &Addr<Worker<Jobs, D>>) -> Result<(), Failed> {
    for _ in 0..2000 {
        if matches!(
            worker.send(Status).await?.state,
            WorkerState::Crashed { .. }
        ) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("the proxy did not notice the crash".into())
}

async fn subscriptions_survive_a_sigkilled_worker_and_its_restart() -> Result<(), Failed> {
    use rustix::process::Signal;
    let worker = spawn(ChildProcess::current_exe("jobs")).await?;
    let mut events = worker.send(SubscribeStream::new()).await?;
    worker.send(Run { job: 1, steps: 3 }).await?.map_err(fail)?;
    let pid = worker.send(Status).await?.pid.ok_or("a child has a pid")?;
    kill(pid, Signal::KILL).map_err(fail)?;
    until_crashed(&worker).await?;
    worker.send(Run { job: 2, steps: 3 }).await?.map_err(fail)?;
    let new_pid = worker.send(Status).await?.pid;
    assert!(new_pid.is_some_and(|new| new != pid), "a fresh worker");
    let mut expected = steps(1, 0, 3);
    expected.extend(steps(2, 0, 3));
    assert_eq!(buffered(&mut events), expected);
    worker.send(Close).await?;
    Ok(())
}

async fn try_emit_beyond_the_backlog_fails_full_and_hands_the_event_back() -> Result<(), Failed> {
    let worker = spawn(ChildProcess::current_exe("jobs")).await?;
    let events = worker.send(SubscribeStream::new().capacity(2_000)).await?;
    // The handler runs on the worker's one thread, so nothing is written
    // while it emits: exactly the backlog fits.
    let count = EVENT_BACKLOG as u32 + 10;
    let full = worker.send(Burst { count }).await?.map_err(fail)?;
    assert_eq!(full, 10);
    worker.send(Close).await?;
    let seen = to_the_end(events).await;
    assert!(
        seen == steps(0, 0, EVENT_BACKLOG as u32 - 1),
        "the events that fitted, in order ({} of them)",
        seen.len()
    );
    Ok(())
}

async fn a_contract_without_events_serves_and_its_stream_ends_at_close() -> Result<(), Failed> {
    let worker = Worker::<Calc>::spawn(support::calc()).await.map_err(fail)?;
    let events = worker.send(SubscribeStream::new()).await?;
    let pong = support::ask(&worker, support::ping("still")).await?;
    assert_eq!(pong.text, "pong: still");
    worker.send(Close).await?;
    assert_eq!(events.count().await, 0);
    Ok(())
}
