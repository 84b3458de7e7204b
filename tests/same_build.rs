//! A worker is always its host's build, also after the executable was
//! rebuilt in place (issue 17, item 5). Linux: the worker runs the host's
//! own image.
//!
//! The test copies this test binary, runs the copy as a host (the
//! `host_role` test, which does nothing unless `SAME_BUILD_ROLE` says so)
//! that starts a supervised worker, then replaces the copy on disk with
//! another build (the same bytes and more: a different file whose code
//! would serve the same contract, so a mixed build would answer). The host
//! then has its worker SIGKILLed and restarted, and spawns a second one:
//! each must run the host's image (device and inode of `/proc/self/exe`),
//! and answer. A worker started from the replaced file would either
//! report another image or be refused by the handshake (`OtherBuild`).
//!
//! Standard harness, with `test_support!`, like a user's test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use actix::prelude::*;
use isolated_workers::{
    ChildProcess, Close, CrashPolicy, Status, Worker, WorkerError, WorkerOptions,
};
use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};

/// Set to `host` in the copy that plays the host.
const ROLE: &str = "SAME_BUILD_ROLE";

/// Asks a worker which image it runs.
#[derive(Debug, Serialize, Deserialize)]
struct WhichImage;

isolated_workers::contract! {
    Build {
        WhichImage => (u64, u64),
    }
}

/// The device and inode of this process's running image.
fn own_image() -> (u64, u64) {
    let meta = std::fs::metadata("/proc/self/exe").expect("procfs is mounted");
    (meta.dev(), meta.ino())
}

/// Reports the image it runs.
struct Reporter;

impl Actor for Reporter {
    type Context = Context<Self>;
}

impl Handler<WhichImage> for Reporter {
    type Result = Result<(u64, u64), WorkerError>;
    fn handle(&mut self, _: WhichImage, _: &mut Context<Self>) -> Self::Result {
        Ok(own_image())
    }
}

fn workers() {
    isolated_workers::worker_entry::<Build, _>("build", || Reporter);
}

isolated_workers::test_support!(workers);

#[test]
fn a_worker_restarted_after_a_rebuild_runs_the_hosts_build() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("host");
    let original = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    std::fs::write(&copy, &original).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let mut host = Command::new(&copy)
        .args(["--exact", "host_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, "host")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push(line.clone());
        if line == "ready" {
            break;
        }
    }
    assert_eq!(
        said.last().map(String::as_str),
        Some("ready"),
        "the host said: {said:?}"
    );

    // Another build at the same path: a new file put in place, as a linker does.
    let mut rebuilt = original;
    rebuilt.extend_from_slice(b"another build");
    let staged = dir.path().join("host.new");
    std::fs::write(&staged, &rebuilt).unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &copy).unwrap();
    writeln!(host.stdin.take().unwrap(), "replaced").unwrap();

    said.extend(lines.map(Result::unwrap));
    let status = host.wait().unwrap();
    assert!(
        status.success(),
        "the host failed ({status}); it said: {said:#?}"
    );
    assert!(
        said.iter().any(|line| line == "same build"),
        "the host said: {said:#?}"
    );
}

/// The host, in the copy: see the module doc. Prints `ready` once its first
/// worker runs, waits for a line on stdin, and prints `same build` if every
/// worker after the rebuild runs its image.
#[test]
fn host_role() {
    if std::env::var_os(ROLE).is_none() {
        return;
    }
    System::new().block_on(async {
        let ours = own_image();
        let options =
            WorkerOptions::default().on_crash::<WhichImage>(CrashPolicy::Retry { attempts: 3 });
        let worker =
            Worker::<Build, ChildProcess>::supervise(ChildProcess::current_exe("build"), options)
                .await
                .unwrap();
        assert_eq!(worker.send(WhichImage).await.unwrap().unwrap(), ours);
        let first = worker.send(Status).await.unwrap().pid.unwrap();
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "replaced");

        // Restarted after a crash: the path now holds another build.
        let first_pid = Pid::from_raw(i32::try_from(first).unwrap()).unwrap();
        kill_process(first_pid, Signal::KILL).unwrap();
        assert_eq!(worker.send(WhichImage).await.unwrap().unwrap(), ours);
        let restarted = worker.send(Status).await.unwrap();
        assert_ne!(restarted.pid, Some(first));
        assert!(restarted.restarts >= 1, "{restarted:?}");

        // And a worker spawned afresh.
        let fresh = Worker::<Build, ChildProcess>::spawn(ChildProcess::current_exe("build"))
            .await
            .unwrap();
        assert_eq!(fresh.send(WhichImage).await.unwrap().unwrap(), ours);

        fresh.send(Close).await.unwrap();
        worker.send(Close).await.unwrap();
        println!("same build");
    });
}
