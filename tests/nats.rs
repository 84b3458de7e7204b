//! Workers on "other machines" through a real NATS server: the `Nats`
//! driver on the test's host, agents as separate processes (this binary
//! again, see `nats_support::enter_agent`), each session's worker a child
//! of its agent. Each test starts its own `nats-server`.

mod nats_support;
mod support;

use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use isolated_workers::nats::Nats;
use isolated_workers::{
    Close, CrashPolicy, CrashReason, PoolOptions, SpawnError, Status, Worker, WorkerError,
    WorkerOptions, WorkerPool,
};
use libtest_mimic::Failed;
use nats_support::{enter_agent, parent_of, AgentProcess, NatsServer};
use rustix::process::Signal;
use support::*;

/// Set when this binary runs as a host that spawns one worker over NATS
/// (at the URL it holds), prints its pid, and waits to be killed.
const HOST_ENV: &str = "ISOLATED_WORKERS_TEST_NATS_HOST";
/// The heartbeat of the tests' sessions, and its bound.
const HEARTBEAT: Duration = Duration::from_millis(100);
const MISSED_AFTER: Duration = Duration::from_millis(1000);
/// What a loss may take past its bound to be reported (scheduling, the
/// proxy's wait for an exit status).
const SLACK: Duration = Duration::from_secs(3);

fn main() {
    enter_workers();
    enter_agent();
    enter_host();
    run(vec![
        actix_test("round_trip_through_an_agent", round_trip_through_an_agent),
        actix_test(
            "a_killed_worker_reports_its_signal",
            a_killed_worker_reports_its_signal,
        ),
        actix_test(
            "an_exiting_worker_reports_its_exit_code",
            an_exiting_worker_reports_its_exit_code,
        ),
        actix_test("no_agent_is_a_spawn_error", no_agent_is_a_spawn_error),
        actix_test(
            "full_agents_are_a_spawn_error",
            full_agents_are_a_spawn_error,
        ),
        actix_test(
            "a_killed_agent_fails_requests_in_flight_within_the_bound",
            a_killed_agent_fails_requests_in_flight_within_the_bound,
        ),
        actix_test(
            "a_pool_over_two_agents_serves_on_when_one_dies",
            a_pool_over_two_agents_serves_on_when_one_dies,
        ),
        actix_test(
            "a_server_restart_mid_load_completes_or_fails_every_request",
            a_server_restart_mid_load_completes_or_fails_every_request,
        ),
        actix_test(
            "a_killed_host_has_its_worker_ended",
            a_killed_host_has_its_worker_ended,
        ),
        actix_test(
            "frames_larger_than_max_payload_are_chunked",
            frames_larger_than_max_payload_are_chunked,
        ),
        actix_test(
            "an_agent_in_its_own_namespaces_is_reached_only_through_nats",
            an_agent_in_its_own_namespaces_is_reached_only_through_nats,
        ),
    ]);
}

/// A `Nats` driver on `server`, with the tests' heartbeat.
async fn driver(server: &NatsServer) -> Result<Nats, Failed> {
    let client = async_nats::connect(server.url()).await.map_err(fail)?;
    Ok(Nats::new(client).heartbeat(HEARTBEAT, MISSED_AFTER))
}

/// A worker on an agent of `server`.
async fn remote_worker(server: &NatsServer) -> Result<Addr<Worker<Calc, Nats>>, Failed> {
    remote_worker_with(server, WorkerOptions::default()).await
}

async fn remote_worker_with(
    server: &NatsServer,
    options: WorkerOptions,
) -> Result<Addr<Worker<Calc, Nats>>, Failed> {
    let driver = driver(server).await?;
    Worker::<Calc, _>::spawn_with(driver, options)
        .await
        .map_err(fail)
}

/// The worker's pid (on the agent's machine, here this one).
async fn remote_pid(worker: &Addr<Worker<Calc, Nats>>) -> Result<u32, Failed> {
    worker
        .send(Status)
        .await
        .map_err(fail)?
        .pid
        .ok_or_else(|| "a remote worker reports its pid".into())
}

async fn round_trip_through_an_agent() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let agent = AgentProcess::start(&server.url(), 2)?;
    let worker = remote_worker(&server).await?;
    let pong = ask(&worker, ping("over nats")).await?;
    assert_eq!(pong.text, "pong: over nats");
    let error = refused(&worker, Divide { a: 1.0, b: 0.0 }).await?;
    assert!(matches!(error, WorkerError::Remote(_)), "{error:?}");
    assert_eq!(ask(&worker, Increment { by: 2 }).await?, 2);
    assert_eq!(
        ask(&worker, Increment { by: 3 }).await?,
        5,
        "one worker keeps its state"
    );
    // The worker runs as a child of the agent.
    let pid = remote_pid(&worker).await?;
    assert_eq!(parent_of(pid), Some(agent.pid()));
    assert_eq!(ask(&worker, WhoAmI).await?, pid);
    worker.send(Close).await.map_err(fail)?;
    let gone = eventually(Duration::from_secs(10), || !running(pid)).await;
    assert!(gone, "a closed worker exits");
    Ok(())
}

async fn a_killed_worker_reports_its_signal() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let _agent = AgentProcess::start(&server.url(), 2)?;
    let worker = remote_worker(&server).await?;
    let pid = remote_pid(&worker).await?;
    let sleeping = enqueue(&worker, Sleep { ms: 60_000 });
    // The request is at the worker once an answer sent after it returns.
    ask(&worker, ping("after sleep")).await?;
    kill(pid, Signal::KILL).map_err(fail)?;
    match outcome(sleeping).await? {
        Err(WorkerError::Crashed { reason, .. }) => {
            assert_eq!(reason, CrashReason::Signal(9), "the remote exit status")
        }
        other => return Err(format!("expected Crashed, got {other:?}").into()),
    }
    Ok(())
}

async fn an_exiting_worker_reports_its_exit_code() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let _agent = AgentProcess::start(&server.url(), 2)?;
    let worker = remote_worker(&server).await?;
    let error = refused(
        &worker,
        Explode {
            message: "far away".into(),
        },
    )
    .await?;
    match error {
        WorkerError::Crashed {
            reason, message, ..
        } => {
            assert_eq!(reason, CrashReason::Panic);
            assert!(message.unwrap_or_default().contains("far away"));
        }
        other => return Err(format!("expected Crashed, got {other:?}").into()),
    }
    Ok(())
}

async fn no_agent_is_a_spawn_error() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let options = WorkerOptions::default().startup_timeout(Duration::from_secs(40));
    let error = Worker::<Calc, _>::spawn_with(driver(&server).await?, options)
        .await
        .err()
        .ok_or("a worker started without an agent")?;
    // Not a timeout: no agent is known at once.
    assert!(matches!(error, SpawnError::NoAgent { .. }), "{error}");
    assert!(error.to_string().contains("no agent"), "{error}");
    Ok(())
}

async fn full_agents_are_a_spawn_error() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let _agent = AgentProcess::start(&server.url(), 1)?;
    let first = remote_worker(&server).await?;
    let options = WorkerOptions::default().startup_timeout(Duration::from_secs(40));
    let error = Worker::<Calc, _>::spawn_with(driver(&server).await?, options)
        .await
        .err()
        .ok_or("a full agent took a second session")?;
    assert!(matches!(error, SpawnError::NoAgent { .. }), "{error}");
    // The first still serves, and once it is closed there is room again.
    ask(&first, ping("still here")).await?;
    first.send(Close).await.map_err(fail)?;
    let second = async {
        loop {
            match remote_worker(&server).await {
                Ok(worker) => return worker,
                // The agent listens again once its session has ended.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let second = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .map_err(|_| "no room after the first session closed")?;
    ask(&second, ping("room again")).await?;
    Ok(())
}

async fn a_killed_agent_fails_requests_in_flight_within_the_bound() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let mut agent = AgentProcess::start(&server.url(), 2)?;
    let worker = remote_worker(&server).await?;
    let pid = remote_pid(&worker).await?;
    let requests: Vec<_> = (0..5)
        .map(|_| enqueue(&worker, Sleep { ms: 60_000 }))
        .collect();
    ask(&worker, ping("all sent")).await?;
    let killed = Instant::now();
    agent.kill();
    let outcomes = join_all(requests).await;
    let took = killed.elapsed();
    for outcome in outcomes {
        match outcome.map_err(fail)? {
            Err(WorkerError::Crashed {
                reason: CrashReason::RemoteLost(why),
                ..
            }) => {
                assert!(!why.is_empty())
            }
            other => return Err(format!("expected Crashed (remote lost), got {other:?}").into()),
        }
    }
    assert!(took < MISSED_AFTER + SLACK, "failed after {took:?}");
    // The agent's worker died with it (its parent-death signal).
    let gone = eventually(Duration::from_secs(10), || !running(pid)).await;
    assert!(gone, "the dead agent's worker is gone");
    Ok(())
}

async fn a_pool_over_two_agents_serves_on_when_one_dies() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let mut first = AgentProcess::start(&server.url(), 2)?;
    let second = AgentProcess::start(&server.url(), 2)?;
    let members = WorkerOptions::default()
        .on_crash::<Ping>(CrashPolicy::Retry { attempts: 3 })
        .restart_backoff(Duration::from_millis(10), Duration::from_millis(100));
    let options = PoolOptions::default().members(4).member_options(members);
    let pool = WorkerPool::<Calc, _>::spawn_with(driver(&server).await?, options)
        .await
        .map_err(fail)?;
    // Four members fill both agents.
    let pids = join_all((0..40).map(|_| pool.send(WhoAmI))).await;
    let mut agents = std::collections::BTreeSet::new();
    for pid in pids {
        let pid = pid.map_err(fail)?.map_err(fail)?;
        agents.insert(parent_of(pid).ok_or("a member's parent")?);
    }
    assert_eq!(
        agents,
        [first.pid(), second.pid()].into_iter().collect(),
        "members on both agents"
    );
    first.kill();
    let answers = join_all((0..40).map(|i| pool.send(ping(&format!("{i}"))))).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let pong = answer.map_err(fail)?.map_err(fail)?;
        assert_eq!(pong.text, format!("pong: {i}"));
    }
    Ok(())
}

async fn a_server_restart_mid_load_completes_or_fails_every_request() -> Result<(), Failed> {
    let mut server = NatsServer::start()?;
    let _agent = AgentProcess::start(&server.url(), 4)?;
    let options = WorkerOptions::default()
        .request_timeout(Duration::from_secs(20))
        .restart_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let worker = remote_worker_with(&server, options).await?;
    let load: Vec<_> = (0..200u64)
        .map(|i| enqueue(&worker, Sleep { ms: i % 50 }))
        .collect();
    server.restart()?;
    let settled = tokio::time::timeout(Duration::from_secs(40), join_all(load))
        .await
        .map_err(|_| "a request hung across the server's restart")?;
    let (mut done, mut failed) = (0, 0);
    for outcome in settled {
        match outcome.map_err(fail)? {
            Ok(()) => done += 1,
            Err(
                WorkerError::Crashed { .. }
                | WorkerError::GaveUp { .. }
                | WorkerError::Timeout { .. },
            ) => failed += 1,
            Err(other) => return Err(format!("an untyped failure: {other:?}").into()),
        }
    }
    assert_eq!(done + failed, 200);
    // After the restart, a fresh session serves (the worker restarted, or
    // a new one is claimed once the agent is back).
    let served = async {
        loop {
            if let Ok(Ok(pong)) = worker.send(ping("back")).await {
                return pong;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .map_err(|_| "no worker served after the server came back")?;
    Ok(())
}

async fn a_killed_host_has_its_worker_ended() -> Result<(), Failed> {
    use tokio::io::AsyncBufReadExt;
    let server = NatsServer::start()?;
    let agent = AgentProcess::start(&server.url(), 2)?;
    let mut host = tokio::process::Command::new(std::env::current_exe().map_err(fail)?)
        .env(HOST_ENV, server.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    let stdout = host.stdout.take().ok_or("no host stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines
        .next_line()
        .await
        .map_err(fail)?
        .ok_or("the host said nothing")?;
    let pid: u32 = line.parse().map_err(|e| format!("{line:?}: {e}"))?;
    assert_eq!(parent_of(pid), Some(agent.pid()));
    host.start_kill().map_err(fail)?;
    host.wait().await.map_err(fail)?;
    let killed = Instant::now();
    let gone = eventually(MISSED_AFTER + SLACK, || !running(pid)).await;
    assert!(
        gone,
        "the worker still runs {:?} after its host died",
        killed.elapsed()
    );
    assert!(running(agent.pid()), "the agent serves on");
    Ok(())
}

async fn frames_larger_than_max_payload_are_chunked() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let _agent = AgentProcess::start(&server.url(), 2)?;
    let worker = remote_worker(&server).await?;
    // The server's default max_payload is 1 MiB.
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let echoed = ask(&worker, Echo { data: data.clone() }).await?;
    assert!(echoed == data, "3 MiB came back intact");
    Ok(())
}

/// An agent in PID and mount namespaces of its own, with its own `/tmp`,
/// stands for another machine: no pid, socket or file is shared with the
/// host, which reaches it only through nats-server (the network namespace
/// is shared, loopback being the one way in).
async fn an_agent_in_its_own_namespaces_is_reached_only_through_nats() -> Result<(), Failed> {
    let server = NatsServer::start()?;
    let agent = AgentProcess::start_in_namespaces(&server.url(), 2)?;
    let worker = remote_worker(&server).await?;
    assert_eq!(ask(&worker, ping("far")).await?.text, "pong: far");
    // The pid the host is told is the worker's pid in the agent's
    // namespace, as the worker itself sees it ...
    let pid = remote_pid(&worker).await?;
    assert_eq!(ask(&worker, WhoAmI).await?, pid);
    // ... which is not the pid of that process on the host: the host
    // knows it only by looking into the namespace through /proc.
    let host_pid = agent
        .host_pid_of(pid)
        .ok_or_else(|| format!("no process is {pid} in the agent's PID namespace"))?;
    assert_ne!(host_pid, pid, "the worker has a pid of its own namespace");
    // The agent is the namespace's init, and the worker's parent.
    assert_eq!(parent_of(host_pid), agent.host_pid_of(1));
    // Its /tmp is a file system of its own, not the host's.
    use std::os::unix::fs::MetadataExt;
    let device = |path: &str| std::fs::metadata(path).map(|m| m.dev()).map_err(fail);
    assert_ne!(
        device(&format!("/proc/{host_pid}/root/tmp"))?,
        device("/tmp")?,
        "the agent has its own /tmp"
    );
    // A crash inside the namespace reaches the host with its signal.
    let sleeping = enqueue(&worker, Sleep { ms: 60_000 });
    ask(&worker, ping("after sleep")).await?;
    kill(host_pid, Signal::KILL).map_err(fail)?;
    match outcome(sleeping).await? {
        Err(WorkerError::Crashed { reason, .. }) => {
            assert_eq!(reason, CrashReason::Signal(9), "the remote exit status")
        }
        other => return Err(format!("expected Crashed, got {other:?}").into()),
    }
    // A session ends cleanly: its worker process exits.
    let worker = remote_worker(&server).await?;
    assert_eq!(ask(&worker, Increment { by: 7 }).await?, 7);
    let host_pid = agent
        .host_pid_of(remote_pid(&worker).await?)
        .ok_or("the second worker is not in the agent's namespace")?;
    worker.send(Close).await.map_err(fail)?;
    let gone = eventually(Duration::from_secs(10), || !running(host_pid)).await;
    assert!(gone, "a closed worker exits");
    assert!(running(agent.pid()), "the agent serves on");
    Ok(())
}

/// In a host process (see [`HOST_ENV`]): spawns one worker over NATS,
/// prints its pid, and waits to be killed.
fn enter_host() {
    let Some(url) = std::env::var_os(HOST_ENV) else {
        return;
    };
    let url = url.to_string_lossy().into_owned();
    System::new().block_on(async move {
        let client = async_nats::connect(url).await.expect("connect");
        let driver = Nats::new(client).heartbeat(HEARTBEAT, MISSED_AFTER);
        let worker = Worker::<Calc, _>::spawn(driver).await.expect("spawn");
        let pid = worker.send(Status).await.expect("status").pid.expect("pid");
        println!("{pid}");
        std::future::pending::<()>().await;
    });
}
