//! One suite of behaviour, run against every driver: what a user may rely
//! on whichever driver carries their worker. A new driver gets the whole
//! suite with one line in `main`.

mod support;

#[path = "../examples/custom_driver/in_memory.rs"]
mod in_memory;

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use in_memory::InMemory;
use isolated_workers::{
    Batch, ChildProcess, Close, CrashReason, Drain, Driver, Status, Thread, WithTimeout, Worker,
    WorkerError, WorkerOptions, WorkerState,
};
use libtest_mimic::{Failed, Trial};
use support::*;

fn main() {
    enter_workers();
    #[cfg(feature = "nats")]
    nats_support::enter_agent();
    let mut trials = suite("child_process", || ChildProcess::current_exe("calc"));
    trials.extend(suite("thread", || Thread::new(CalcWorker::default)));
    trials.extend(suite("in_memory", || InMemory::new(CalcWorker::default)));
    #[cfg(feature = "nats")]
    {
        // One server and one agent for the whole NATS run, stopped when
        // the run ends (and, should it crash, with it).
        let nats = over_nats::start();
        trials.extend(suite("nats", || over_nats::OverNats));
        let conclusion = libtest_mimic::run(&libtest_mimic::Arguments::from_args(), trials);
        drop(nats);
        conclusion.exit();
    }
    #[cfg(not(feature = "nats"))]
    run(trials);
}

#[cfg(feature = "nats")]
mod nats_support;

/// The suite over NATS: workers on an agent (a process of its own) of a
/// server of the run's own.
#[cfg(feature = "nats")]
mod over_nats {
    use std::sync::OnceLock;
    use std::time::Duration;

    use futures::future::LocalBoxFuture;
    use isolated_workers::nats::Nats;
    use isolated_workers::{Connection, Driver, SpawnError, WorkerOptions};

    use super::nats_support::{AgentProcess, NatsServer};
    use super::support::Calc;

    /// The server's URL, once started.
    static URL: OnceLock<String> = OnceLock::new();

    /// Starts the server and the agent (with room for every test at once).
    pub fn start() -> Option<(NatsServer, AgentProcess)> {
        let server =
            NatsServer::start().unwrap_or_else(|e| panic!("{}", e.message().unwrap_or("")));
        let agent = AgentProcess::start(&server.url(), 64)
            .unwrap_or_else(|e| panic!("{}", e.message().unwrap_or("")));
        URL.get_or_init(|| server.url());
        Some((server, agent))
    }

    /// A `Nats` driver that connects at each launch: the suite makes its
    /// drivers outside a runtime, and a client belongs to the runtime of
    /// its test.
    pub struct OverNats;

    impl Driver<Calc> for OverNats {
        fn launch(
            &self,
            options: &WorkerOptions,
        ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>> {
            let options = options.clone();
            Box::pin(async move {
                let url = URL.get().cloned().unwrap_or_default();
                let client = async_nats::connect(url).await.map_err(|e| SpawnError::Io {
                    what: "NATS connection",
                    source: std::io::Error::other(e),
                })?;
                let nats =
                    Nats::new(client).heartbeat(Duration::from_millis(200), Duration::from_secs(2));
                <Nats as Driver<Calc>>::launch(&nats, &options).await
            })
        }
    }
}

/// Every behaviour test, for the driver `make` builds; each test is named
/// `<driver>::<behaviour>`.
fn suite<D: Driver<Calc>>(driver: &str, make: fn() -> D) -> Vec<Trial> {
    macro_rules! cases {
        ($($behaviour:ident),* $(,)?) => {
            vec![$(case(driver, stringify!($behaviour), make, $behaviour)),*]
        };
    }
    cases![
        round_trip_returns_the_reply,
        a_thousand_concurrent_requests_get_their_own_replies,
        a_handler_error_arrives_as_a_remote_error,
        a_slow_request_times_out_and_the_worker_serves_on,
        a_panicking_handler_resolves_requests_in_flight_as_crashed,
        sends_after_close_are_closed,
        the_in_flight_bound_queues_then_overloads,
        a_queued_request_that_times_out_frees_its_place_in_the_queue,
        a_timed_out_request_stops_running_on_the_worker,
        a_dropped_request_stops_running_on_the_worker,
        a_message_type_can_have_its_own_timeout,
        a_request_with_its_own_timeout_times_out_and_stops_running_on_the_worker,
        a_request_with_its_own_longer_timeout_outlives_its_types,
        drain_lets_requests_in_flight_finish_then_closes,
        drain_fails_what_is_left_at_its_deadline,
        a_crash_while_idle_is_noticed_and_a_fresh_worker_serves_on,
        status_counts_requests_per_message,
        host_middleware_sees_each_request_and_its_reply_and_can_refuse,
        a_batch_answers_every_item_in_order,
        an_empty_batch_answers_at_once,
        a_batch_item_whose_handler_fails_fails_alone,
        a_slow_batch_item_times_out_alone,
        a_crash_mid_batch_resolves_every_item_as_crashed,
        dropping_a_batch_cancels_its_pending_items_on_the_worker,
        a_batch_beyond_the_in_flight_bound_and_queue_overloads_the_rest,
        each_batch_item_passes_the_middleware_as_a_lone_request,
        a_batch_sent_with_do_send_runs_every_item,
    ]
}

fn case<D, Fut>(driver: &str, behaviour: &str, make: fn() -> D, test: fn(D) -> Fut) -> Trial
where
    D: Driver<Calc>,
    Fut: Future<Output = Result<(), Failed>> + 'static,
{
    actix_test(&format!("{driver}::{behaviour}"), move || test(make()))
}

async fn round_trip_returns_the_reply<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let pong = worker
        .send(Ping { text: "hi".into() })
        .await?
        .map_err(fail)?;
    assert_eq!(pong.text, "pong: hi");
    assert_eq!(worker.send(Increment { by: 2 }).await?.map_err(fail)?, 2);
    assert_eq!(
        worker.send(Increment { by: 3 }).await?.map_err(fail)?,
        5,
        "state is kept"
    );
    worker.send(Close).await?;
    Ok(())
}

async fn a_thousand_concurrent_requests_get_their_own_replies<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let requests = (0..1000).map(|i| {
        worker.send(Ping {
            text: i.to_string(),
        })
    });
    for (i, reply) in join_all(requests).await.into_iter().enumerate() {
        assert_eq!(reply?.map_err(fail)?.text, format!("pong: {i}"));
    }
    worker.send(Close).await?;
    Ok(())
}

async fn a_handler_error_arrives_as_a_remote_error<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    match worker.send(Divide { a: 1.0, b: 0.0 }).await? {
        Err(WorkerError::Remote(error)) => {
            assert_eq!(error.name, "DivideByZero");
            assert_eq!(error.message, "cannot divide 1 by zero");
            assert_eq!(error.code, Some(22));
        }
        other => return Err(format!("expected a remote error, got {other:?}").into()),
    }
    assert_eq!(
        worker
            .send(Divide { a: 9.0, b: 3.0 })
            .await?
            .map_err(fail)?,
        3.0
    );
    worker.send(Close).await?;
    Ok(())
}

async fn a_slow_request_times_out_and_the_worker_serves_on<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let options = WorkerOptions::default().request_timeout(Duration::from_millis(200));
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    match worker.send(Sleep { ms: 30_000 }).await? {
        Err(WorkerError::Timeout {
            after,
            message,
            queued,
        }) => {
            assert_eq!(after, Duration::from_millis(200));
            assert_eq!(message, "Sleep");
            assert!(!queued, "it reached the worker");
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    let pong = worker
        .send(Ping {
            text: "still".into(),
        })
        .await?
        .map_err(fail)?;
    assert_eq!(pong.text, "pong: still");
    worker.send(Close).await?;
    Ok(())
}

async fn a_panicking_handler_resolves_requests_in_flight_as_crashed<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let sleeping = worker.send(Sleep { ms: 30_000 });
    let exploding = worker.send(Explode {
        message: "kaboom".into(),
    });
    let (sleeping, exploding) = futures::join!(sleeping, exploding);
    for outcome in [sleeping?.map(|_| ()), exploding?] {
        match outcome {
            Err(WorkerError::Crashed {
                reason, message, ..
            }) => {
                let message = message.unwrap_or_default();
                assert!(
                    message.contains("kaboom"),
                    "panic message reported: {message:?}"
                );
                assert!(
                    matches!(reason, CrashReason::Exit(101) | CrashReason::Panic),
                    "reason: {reason}"
                );
            }
            other => return Err(format!("expected a crash, got {other:?}").into()),
        }
    }
    let status = worker.send(Status).await?;
    assert!(
        matches!(status.state, WorkerState::Crashed { .. }),
        "{status:?}"
    );
    // The crash does not poison later requests: a fresh worker serves them.
    let later = worker.send(Increment { by: 1 }).await?.map_err(fail)?;
    assert_eq!(later, 1, "served by a fresh worker, with fresh state");
    assert_eq!(worker.send(Status).await?.state, WorkerState::Running);
    worker.send(Close).await?;
    Ok(())
}

async fn sends_after_close_are_closed<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let in_flight = worker.send(Sleep { ms: 30_000 });
    let closing = worker.send(Close);
    let (in_flight, closed) = futures::join!(in_flight, closing);
    closed?;
    assert!(
        matches!(in_flight?, Err(WorkerError::Closed)),
        "in flight at close"
    );
    let after = worker
        .send(Ping {
            text: "late".into(),
        })
        .await?;
    assert!(matches!(after, Err(WorkerError::Closed)), "{after:?}");
    assert_eq!(worker.send(Status).await?.state, WorkerState::Closed);
    worker.send(Close).await?; // closing twice is harmless
    Ok(())
}

async fn the_in_flight_bound_queues_then_overloads<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let options = WorkerOptions::default().max_in_flight(1).max_queued(1);
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let first = worker.send(Sleep { ms: 200 });
    let second = worker.send(Sleep { ms: 1 });
    let third = worker.send(Sleep { ms: 1 });
    let status = worker.send(Status);
    let (first, second, third, status) = futures::join!(first, second, third, status);
    first?.map_err(fail)?;
    second?.map_err(fail)?;
    assert!(
        matches!(third?, Err(WorkerError::Overloaded { limit: 1 })),
        "the third request found the queue full"
    );
    let status = status?;
    assert_eq!((status.in_flight, status.queued), (1, 1), "{status:?}");
    worker.send(Close).await?;
    Ok(())
}

async fn a_queued_request_that_times_out_frees_its_place_in_the_queue<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let options = WorkerOptions::default()
        .max_in_flight(1)
        .max_queued(1)
        .timeout_for::<Ping>(Duration::from_millis(50));
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let stuck = worker.send(Sleep { ms: 30_000 });
    // Each waits behind `stuck` in the only place in the queue, and times
    // out there: the next one finds the place free again.
    for _ in 0..2 {
        let ping = Ping {
            text: "waits".into(),
        };
        let waited = worker.send(ping).await?;
        let timed_out = matches!(&waited, Err(WorkerError::Timeout { message, queued: true, .. }) if *message == "Ping");
        assert!(timed_out, "{waited:?}");
        let said = waited.unwrap_err().to_string();
        assert!(said.contains("waiting in the queue"), "{said}");
    }
    let status = worker.send(Status).await?;
    assert_eq!((status.in_flight, status.queued), (1, 0), "{status:?}");
    worker.send(Close).await?;
    assert!(matches!(stuck.await?, Err(WorkerError::Closed)));
    Ok(())
}

/// Whether the worker's `Spin` counter stands still over a short while
/// (it moves once a millisecond while a `Spin` runs).
async fn spinning_stopped(
    worker: &actix::Addr<Worker<Calc, impl Driver<Calc>>>,
) -> Result<bool, Failed> {
    let before = worker.send(Spins).await?.map_err(fail)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = worker.send(Spins).await?.map_err(fail)?;
    Ok(before == after)
}

async fn a_timed_out_request_stops_running_on_the_worker<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let options = WorkerOptions::default().request_timeout(Duration::from_millis(100));
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let spun = worker.send(Spin).await?;
    assert!(matches!(spun, Err(WorkerError::Timeout { .. })), "{spun:?}");
    assert!(
        worker.send(Spins).await?.map_err(fail)? > 0,
        "the work had started"
    );
    assert!(
        spinning_stopped(&worker).await?,
        "the cancelled handler kept working"
    );
    worker.send(Close).await?;
    Ok(())
}

async fn a_dropped_request_stops_running_on_the_worker<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    // The caller gives up on its own (its future is dropped), long before
    // the worker's 30 s request timeout.
    let given_up = tokio::time::timeout(Duration::from_millis(50), worker.send(Spin)).await;
    assert!(given_up.is_err(), "Spin never answers");
    // Abandoned requests are noticed within a sweep (100 ms).
    let stopped = async {
        while !spinning_stopped(&worker).await? {}
        Ok::<_, Failed>(())
    };
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .map_err(|_| "the abandoned handler kept working")??;
    worker.send(Close).await?;
    Ok(())
}

async fn a_message_type_can_have_its_own_timeout<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let options = WorkerOptions::default().timeout_for::<Sleep>(Duration::from_millis(100));
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let slept = worker.send(Sleep { ms: 30_000 }).await?;
    assert!(
        matches!(slept, Err(WorkerError::Timeout { after, message: "Sleep", .. }) if after == Duration::from_millis(100)),
        "{slept:?}"
    );
    // Other messages keep the default (30 s): a 300 ms request succeeds.
    let options_default = worker
        .send(Ping { text: "ok".into() })
        .await?
        .map_err(fail)?;
    assert_eq!(options_default.text, "pong: ok");
    worker.send(Close).await?;
    Ok(())
}

async fn a_request_with_its_own_timeout_times_out_and_stops_running_on_the_worker<
    D: Driver<Calc>,
>(
    driver: D,
) -> Result<(), Failed> {
    // The worker's timeouts are the defaults (30 s): only the request's
    // own can end it this soon.
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let own = Duration::from_millis(100);
    match worker.send(WithTimeout::new(Spin, own)).await? {
        Err(WorkerError::Timeout {
            after,
            message: "Spin",
            queued: false,
        }) if after == own => {}
        other => {
            return Err(format!("expected Spin to time out after {own:?}, got {other:?}").into())
        }
    }
    assert!(
        worker.send(Spins).await?.map_err(fail)? > 0,
        "the work had started"
    );
    assert!(
        spinning_stopped(&worker).await?,
        "the worker was not told to cancel"
    );
    let status = worker.send(Status).await?;
    let spin = status.counters.by_message.get("Spin").copied();
    assert_eq!(spin.map(|c| (c.sent, c.failed)), Some((1, 1)), "{status:?}");
    worker.send(Close).await?;
    Ok(())
}

async fn a_request_with_its_own_longer_timeout_outlives_its_types<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let options = WorkerOptions::default().timeout_for::<Sleep>(Duration::from_millis(50));
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let nap = || Sleep { ms: 300 };
    let slept = worker.send(nap()).await?;
    assert!(
        matches!(slept, Err(WorkerError::Timeout { after, .. }) if after == Duration::from_millis(50)),
        "without its own timeout, the type's: {slept:?}"
    );
    let own = WithTimeout::new(nap(), Duration::from_secs(30));
    assert_eq!(own.timeout(), Duration::from_secs(30));
    worker.send(own).await?.map_err(fail)?;
    // One too long to add to a clock means none, not a panic.
    let endless = WithTimeout::new(nap(), Duration::MAX);
    worker.send(endless).await?.map_err(fail)?;
    worker.send(Close).await?;
    Ok(())
}

async fn drain_lets_requests_in_flight_finish_then_closes<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let in_flight = worker.send(Sleep { ms: 200 });
    let draining = worker.send(Drain {
        within: Duration::from_secs(20),
    });
    let late = worker.send(Ping {
        text: "late".into(),
    });
    let (in_flight, drained, late) = futures::join!(in_flight, draining, late);
    drained?;
    in_flight?.map_err(fail)?;
    assert!(
        matches!(late?, Err(WorkerError::Closed)),
        "no new requests while draining"
    );
    assert_eq!(worker.send(Status).await?.state, WorkerState::Closed);
    Ok(())
}

async fn drain_fails_what_is_left_at_its_deadline<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let stuck = worker.send(Sleep { ms: 30_000 });
    let draining = worker.send(Drain {
        within: Duration::from_millis(200),
    });
    let (stuck, drained) = futures::join!(stuck, draining);
    drained?;
    assert!(
        matches!(stuck?, Err(WorkerError::Closed)),
        "failed at the deadline"
    );
    Ok(())
}

async fn a_crash_while_idle_is_noticed_and_a_fresh_worker_serves_on<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    worker.send(Increment { by: 5 }).await?.map_err(fail)?;
    worker
        .send(ExplodeSoon {
            message: "bored to death".into(),
        })
        .await?
        .map_err(fail)?;
    // No request is in flight when it dies; Status must still tell. (No
    // event reaches the test, so it asks until the state changes.)
    let crashed = loop {
        match worker.send(Status).await?.state {
            WorkerState::Running => tokio::time::sleep(Duration::from_millis(5)).await,
            other => break other,
        }
    };
    match crashed {
        WorkerState::Crashed { message, .. } => {
            let message = message.unwrap_or_default();
            assert!(message.contains("bored to death"), "{message:?}");
        }
        other => return Err(format!("expected Crashed, got {other:?}").into()),
    }
    let fresh = worker.send(Increment { by: 1 }).await?.map_err(fail)?;
    assert_eq!(fresh, 1, "a fresh worker, with fresh state");
    worker.send(Close).await?;
    Ok(())
}

async fn status_counts_requests_per_message<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    for _ in 0..2 {
        worker.send(Increment { by: 1 }).await?.map_err(fail)?;
    }
    let divided = worker.send(Divide { a: 1.0, b: 0.0 }).await?;
    assert!(divided.is_err(), "dividing by zero fails: {divided:?}");
    let counters = worker.send(Status).await?.counters;
    let counts = |name: &str| {
        let c = counters.by_message.get(name).copied().unwrap_or_default();
        (c.sent, c.answered, c.failed)
    };
    assert_eq!(counts("Increment"), (2, 2, 0));
    assert_eq!(counts("Divide"), (1, 0, 1));
    assert_eq!(counts("Ping"), (0, 0, 0));
    assert_eq!((counters.crashes, counters.restarts), (0, 0));
    worker.send(Close).await?;
    Ok(())
}

/// Records what passes it, and refuses `Divide`.
struct Watch(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl isolated_workers::middleware::Middleware for Watch {
    fn on_request(
        &self,
        request: &mut isolated_workers::middleware::Passage<'_>,
    ) -> Result<(), isolated_workers::RemoteError> {
        self.record(request);
        if request.name() == "Divide" {
            return Err(isolated_workers::RemoteError::new("NoDivision", "not here"));
        }
        Ok(())
    }

    fn on_response(&self, response: &mut isolated_workers::middleware::Passage<'_>) {
        self.record(response);
    }
}

impl Watch {
    fn record(&self, passage: &mut isolated_workers::middleware::Passage<'_>) {
        use isolated_workers::middleware::Body;
        let body = match passage.body() {
            Body::Bytes(_) | Body::Value(_) => "ok",
            Body::Failed(_) => "failed",
        };
        let line = format!(
            "{:?} {} #{} {body}",
            passage.direction(),
            passage.name(),
            passage.id()
        );
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

async fn host_middleware_sees_each_request_and_its_reply_and_can_refuse<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let chain = isolated_workers::middleware::Middlewares::new().layer(Watch(seen.clone()));
    let options = WorkerOptions::default().middleware(chain);
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    worker.send(Increment { by: 1 }).await?.map_err(fail)?;
    match worker.send(Divide { a: 1.0, b: 2.0 }).await? {
        Err(WorkerError::Rejected(refusal)) => assert_eq!(refusal.name, "NoDivision"),
        other => return Err(format!("Divide should be refused on the host: {other:?}").into()),
    }
    assert_eq!(
        worker.send(Increment { by: 1 }).await?.map_err(fail)?,
        2,
        "the refused request never reached the worker"
    );
    worker.send(Close).await?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let expected = [
        "Outgoing Increment #1 ok",
        "Incoming Increment #1 ok",
        "Outgoing Divide #2 ok",
        "Outgoing Increment #3 ok",
        "Incoming Increment #3 ok",
    ];
    assert_eq!(seen, expected);
    Ok(())
}

async fn a_batch_answers_every_item_in_order<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let batch: Batch<Ping> = (0..300).map(|i| ping(&i.to_string())).collect();
    let replies = worker.send(batch).await?;
    assert_eq!(replies.len(), 300);
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.map_err(fail)?.text, format!("pong: {i}"));
    }
    // Handled in order, too: each sees the state the one before left.
    let counts = worker
        .send(Batch::new(vec![Increment { by: 1 }; 5]))
        .await?;
    let counts: Vec<u64> = counts.into_iter().collect::<Result<_, _>>().map_err(fail)?;
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    let status = worker.send(Status).await?;
    assert_eq!(
        status.counters.by_message["Ping"].answered, 300,
        "{status:?}"
    );
    worker.send(Close).await?;
    Ok(())
}

async fn an_empty_batch_answers_at_once<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let replies = worker.send(Batch::<Ping>::new(Vec::new())).await?;
    assert!(replies.is_empty(), "{replies:?}");
    worker.send(Close).await?;
    let closed = worker.send(Batch::new(vec![ping("late")])).await?;
    assert!(
        matches!(closed[..], [Err(WorkerError::Closed)]),
        "{closed:?}"
    );
    Ok(())
}

async fn a_batch_item_whose_handler_fails_fails_alone<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let divisions = [(6.0, 3.0), (1.0, 0.0), (9.0, 3.0)].map(|(a, b)| Divide { a, b });
    let replies = worker.send(Batch::new(divisions.to_vec())).await?;
    match &replies[..] {
        [Ok(two), Err(WorkerError::Remote(error)), Ok(three)] => {
            assert_eq!((*two, *three), (2.0, 3.0));
            assert_eq!(error.name, "DivideByZero");
        }
        other => return Err(format!("expected only the second to fail, got {other:?}").into()),
    }
    worker.send(Close).await?;
    Ok(())
}

async fn a_slow_batch_item_times_out_alone<D: Driver<Calc>>(driver: D) -> Result<(), Failed> {
    let options = WorkerOptions::default().timeout_for::<Sleep>(Duration::from_millis(200));
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let naps = [1, 30_000, 1].map(|ms| Sleep { ms });
    let replies = worker.send(Batch::new(naps.to_vec())).await?;
    match &replies[..] {
        [Ok(()), Err(WorkerError::Timeout { after, message, .. }), Ok(())] => {
            assert_eq!((*after, *message), (Duration::from_millis(200), "Sleep"));
        }
        other => return Err(format!("expected only the second to time out, got {other:?}").into()),
    }
    worker.send(Close).await?;
    Ok(())
}

async fn a_crash_mid_batch_resolves_every_item_as_crashed<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    let naps = worker.send(Batch::new(vec![Sleep { ms: 30_000 }; 10]));
    let explode = worker.send(Explode {
        message: "mid-batch".into(),
    });
    let (naps, exploded) = futures::join!(naps, explode);
    assert!(
        matches!(exploded?, Err(WorkerError::Crashed { .. })),
        "the panic crashed the worker"
    );
    let naps = naps?;
    assert_eq!(naps.len(), 10);
    for nap in naps {
        match nap {
            Err(WorkerError::Crashed { message, .. }) => {
                let message = message.unwrap_or_default();
                assert!(message.contains("mid-batch"), "{message:?}");
            }
            other => return Err(format!("expected a crash, got {other:?}").into()),
        }
    }
    // A fresh worker serves the next batch.
    let later = worker.send(Batch::new(vec![Increment { by: 1 }])).await?;
    assert!(matches!(later[..], [Ok(1)]), "{later:?}");
    worker.send(Close).await?;
    Ok(())
}

async fn dropping_a_batch_cancels_its_pending_items_on_the_worker<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    // The caller gives up on the batch (its future is dropped) while both
    // items spin.
    let spins = worker.send(Batch::new(vec![Spin, Spin]));
    let given_up = tokio::time::timeout(Duration::from_millis(50), spins).await;
    assert!(given_up.is_err(), "Spin never answers");
    // Abandoned requests are noticed within a sweep (100 ms).
    let stopped = async {
        while !spinning_stopped(&worker).await? {}
        Ok::<_, Failed>(())
    };
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .map_err(|_| "an abandoned item kept working")??;
    let status = worker.send(Status).await?;
    assert_eq!((status.in_flight, status.queued), (0, 0), "{status:?}");
    worker.send(Close).await?;
    Ok(())
}

async fn a_batch_beyond_the_in_flight_bound_and_queue_overloads_the_rest<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let options = WorkerOptions::default().max_in_flight(2).max_queued(3);
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let naps = worker.send(Batch::new(vec![Sleep { ms: 20 }; 8])).await?;
    let (fit, rest) = naps.split_at(5);
    for nap in fit {
        assert!(
            nap.is_ok(),
            "the first five fit (two in flight, three queued): {nap:?}"
        );
    }
    for nap in rest {
        let overloaded = matches!(nap, Err(WorkerError::Overloaded { limit: 3 }));
        assert!(overloaded, "the rest found the queue full: {nap:?}");
    }
    worker.send(Close).await?;
    Ok(())
}

async fn each_batch_item_passes_the_middleware_as_a_lone_request<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let chain = isolated_workers::middleware::Middlewares::new().layer(Watch(seen.clone()));
    let options = WorkerOptions::default().middleware(chain);
    let worker = Worker::<Calc, D>::spawn_with(driver, options)
        .await
        .map_err(fail)?;
    let counts = worker
        .send(Batch::new(vec![Increment { by: 1 }; 2]))
        .await?;
    assert!(matches!(counts[..], [Ok(1), Ok(2)]), "{counts:?}");
    let divisions = worker
        .send(Batch::new(vec![Divide { a: 1.0, b: 2.0 }]))
        .await?;
    match &divisions[..] {
        [Err(WorkerError::Rejected(refusal))] => assert_eq!(refusal.name, "NoDivision"),
        other => return Err(format!("Divide should be refused on the host: {other:?}").into()),
    }
    worker.send(Close).await?;
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The replies of one batch may come back in any order.
    seen[2..4].sort();
    let expected = [
        "Outgoing Increment #1 ok",
        "Outgoing Increment #2 ok",
        "Incoming Increment #1 ok",
        "Incoming Increment #2 ok",
        "Outgoing Divide #3 ok",
    ];
    assert_eq!(seen, expected);
    Ok(())
}

async fn a_batch_sent_with_do_send_runs_every_item<D: Driver<Calc>>(
    driver: D,
) -> Result<(), Failed> {
    let worker = Worker::<Calc, D>::spawn(driver).await.map_err(fail)?;
    // Nobody waits for the batch: its items run all the same, before the
    // request sent after it.
    worker.do_send(Batch::new(vec![Increment { by: 1 }; 3]));
    let after = worker.send(Increment { by: 10 }).await?.map_err(fail)?;
    assert_eq!(after, 13, "the three ran first");
    worker.send(Close).await?;
    Ok(())
}
