//! A crash is not silent for an application that logs with `log` (say
//! `env_logger`) and sets no `tracing` subscriber: with the default `log`
//! feature, the crate's events reach the `log` logger. Its own binary, as
//! a logger is global to the process.

mod support;

use std::sync::Mutex;

use isolated_workers::{Close, Status, WorkerState};
use libtest_mimic::Failed;
use rustix::process::Signal;
use support::*;

/// Every record logged at INFO or above: level and text.
static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

/// Keeps what it is given in [`RECORDS`].
struct Keeper;

impl log::Log for Keeper {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let text = record.args().to_string();
            RECORDS
                .lock()
                .expect("not poisoned")
                .push((record.level(), text));
        }
    }

    fn flush(&self) {}
}

fn main() {
    enter_workers();
    log::set_logger(&Keeper).expect("the only logger");
    log::set_max_level(log::LevelFilter::Info);
    run(vec![actix_test(
        "child_process::a_killed_worker_is_logged_as_a_warning_through_log",
        a_killed_worker_is_logged_as_a_warning_through_log,
    )]);
}

async fn a_killed_worker_is_logged_as_a_warning_through_log() -> Result<(), Failed> {
    let worker = spawn_calc().await?;
    let pid = pid_of(&worker).await?;
    kill(pid, Signal::KILL).map_err(fail)?;
    let noticed = async {
        while !matches!(
            worker.send(Status).await?.state,
            WorkerState::Crashed { .. }
        ) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok::<_, Failed>(())
    };
    noticed.await?;
    // Logged before the proxy's state turned `Crashed`.
    let records = RECORDS.lock().expect("not poisoned").clone();
    let crash = records
        .iter()
        .find(|(level, text)| *level == log::Level::Warn && text.contains("worker crashed"));
    let (_, text) = crash.ok_or(format!("no WARN about the crash in {records:#?}"))?;
    assert!(text.contains("SIGKILL"), "the reason is in it: {text}");
    worker.send(Close).await?;
    Ok(())
}
