//! Disconnect and Reconnect on a child-process worker: the worker keeps
//! running and keeps its actor's state while no connection is open.

mod support;

use isolated_workers::proxy::{Disconnect, Reconnect};
use isolated_workers::{WorkerError, WorkerState};
use libtest_mimic::Failed;
use support::*;

fn main() {
    enter_workers();
    run(vec![actix_test(
        "a_disconnected_worker_fails_sends_at_once_and_keeps_its_state_for_reconnect",
        a_disconnected_worker_fails_sends_at_once_and_keeps_its_state_for_reconnect,
    )]);
}

async fn a_disconnected_worker_fails_sends_at_once_and_keeps_its_state_for_reconnect(
) -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    for expected in 1..=3u64 {
        let counted = ask(&worker, Increment { by: 1 }).await?;
        if counted != expected {
            return Err(format!("counter at {counted}, expected {expected}").into());
        }
    }
    worker.send(Disconnect).await.map_err(fail)?.map_err(fail)?;
    let state = status(&worker).await?.state;
    if state != WorkerState::Disconnected {
        return Err(format!("state {state:?} after Disconnect").into());
    }
    match refused(&worker, Increment { by: 1 }).await? {
        WorkerError::Disconnected => {}
        other => return Err(format!("expected Disconnected, got {other}").into()),
    }
    if !process_exists(pid) {
        return Err("the worker process should keep running".into());
    }
    worker.send(Reconnect).await.map_err(fail)?.map_err(fail)?;
    let counted = ask(&worker, Increment { by: 1 }).await?;
    if counted != 4 {
        return Err(format!("counter at {counted} after reconnect, expected 4").into());
    }
    if pid_of(&worker).await? != pid {
        return Err("reconnected to another process".into());
    }
    close(&worker).await
}
