//! `test_support!` under the standard harness (this file has no
//! `harness = false` entry): ordinary `#[test]` and `#[actix::test]` tests
//! spawn real child workers from this test binary, and no other test runs
//! inside a worker.
//!
//! The proof: every test, and the worker's registration, leaves a marker
//! file named `<pid>.<test>` in the directory `PROBE_MARKERS` names. Only a
//! worker has that variable (the spawning test sets it for its child
//! alone), so a marker exists only for what ran inside a worker. After the
//! worker exits, its pid must have the entry's marker and no other. The
//! plain tests are named `a_*` so that libtest, which runs tests in name
//! order, would run them before the entry test if a worker ran them at all:
//! their markers would then exist before the worker even said hello.

use std::path::Path;

use actix::prelude::*;
use isolated_workers::{ChildProcess, Close, SpawnError, Status, Worker, WorkerError};
use serde::{Deserialize, Serialize};

/// The variable naming the marker directory, set for a spawned worker only.
const MARKERS: &str = "PROBE_MARKERS";

/// Leaves a marker for `what`, if this process is a worker of a test that
/// watches (see the module doc).
fn ran(what: &str) {
    if let Some(dir) = std::env::var_os(MARKERS) {
        let marker = Path::new(&dir).join(format!("{}.{what}", std::process::id()));
        std::fs::write(marker, b"").expect("the marker directory is writable");
    }
}

/// The markers in `dir`, sorted.
fn markers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the marker directory is readable")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

isolated_workers::contract! {
    Probe {
        Add => i64,
    }
}

/// Adds; all the proof needs is a real child process that answers.
struct Adder;

impl Actor for Adder {
    type Context = Context<Self>;
}

impl Handler<Add> for Adder {
    type Result = Result<i64, WorkerError>;
    fn handle(&mut self, add: Add, _: &mut Context<Self>) -> Self::Result {
        Ok(add.a + add.b)
    }
}

/// Every worker this binary's tests spawn.
fn workers() {
    ran("entry");
    isolated_workers::worker_entry::<Probe, _>("probe", || Adder);
    isolated_workers::worker_entry::<Probe, _>("a-worker-with-a-long-name", || Adder);
}

isolated_workers::test_support!(workers);

#[test]
fn a_first_plain_test() {
    ran("a_first_plain_test");
}

#[test]
fn a_second_plain_test() {
    ran("a_second_plain_test");
}

/// Spawns worker `name` with a marker directory, checks that it answers and
/// that it is a process of its own, closes it, and returns the markers its
/// process left and its pid.
async fn spawn_and_collect(name: &str) -> (Vec<String>, u32) {
    let dir = tempfile::tempdir().unwrap();
    let driver = ChildProcess::current_exe(name).env(MARKERS, dir.path());
    let worker = Worker::<Probe, ChildProcess>::spawn(driver)
        .await
        .expect("the worker starts");
    let status = worker.send(Status).await.unwrap();
    let pid = status.pid.expect("a child process has a pid");
    assert_ne!(pid, std::process::id());
    for i in 0..10 {
        assert_eq!(
            worker.send(Add { a: i, b: 1 }).await.unwrap().unwrap(),
            i + 1
        );
    }
    worker.send(Close).await.unwrap();
    // Closed: the process has exited, and every marker it left is there.
    (markers(dir.path()), pid)
}

#[test]
fn a_plain_test_spawns_a_worker_that_runs_only_the_entry_test() {
    let (markers, pid) = actix::System::new().block_on(spawn_and_collect("probe"));
    assert_eq!(markers, [format!("{pid}.entry")]);
}

#[actix::test]
async fn an_actix_test_spawns_a_worker_that_runs_only_the_entry_test() {
    let (markers, pid) = spawn_and_collect("probe").await;
    assert_eq!(markers, [format!("{pid}.entry")]);
}

#[actix::test]
async fn a_worker_process_is_named_after_its_worker() {
    for (name, comm) in [
        ("probe", "iw:probe"),
        // The kernel keeps 15 bytes.
        ("a-worker-with-a-long-name", "iw:a-worker-wit"),
    ] {
        let worker = Worker::<Probe, ChildProcess>::spawn(ChildProcess::current_exe(name))
            .await
            .unwrap();
        let pid = worker.send(Status).await.unwrap().pid.unwrap();
        // The name is set before the worker says hello.
        let shown = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(shown.trim_end(), comm);
        worker.send(Close).await.unwrap();
    }
}

#[actix::test]
async fn a_worker_the_registrations_lack_is_a_clear_spawn_error() {
    let err = Worker::<Probe, ChildProcess>::spawn(ChildProcess::current_exe("nobody"))
        .await
        .unwrap_err();
    match &err {
        SpawnError::Exited { stderr, .. } => {
            assert!(stderr.contains("no `worker_entry` with that name"), "{err}")
        }
        other => panic!("expected the worker to exit, got {other:?}"),
    }
}

#[actix::test]
async fn arguments_for_a_worker_are_refused_in_a_test_binary() {
    let err =
        Worker::<Probe, ChildProcess>::spawn(ChildProcess::current_exe("probe").arg("--fast"))
            .await
            .unwrap_err();
    assert!(
        matches!(&err, SpawnError::Launch { source, .. } if source.to_string().contains("test filters")),
        "{err}"
    );
}
