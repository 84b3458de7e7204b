//! `examples/actix_web.rs`, run as a service: loaded with concurrent
//! requests while a pool member is `kill -9`ed, stopped by Ctrl-C (SIGINT
//! to its process group, as a terminal sends it) and by `POST /shutdown`;
//! and `worker_entry` called inside a running runtime, which must fail at
//! once with a message naming the fix.
//!
//! The example's source is compiled into this binary (a `#[path]` module),
//! so that what runs is the example's own code without a cargo inside the
//! test: started with [`SERVICE_MODE_ENV`], this binary runs the example's
//! `main` (its workers, this binary again, inherit the variable and reach
//! the example's `worker_entry` the same way).

#[path = "../examples/actix_web.rs"]
mod example;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};

/// Set: this binary runs the example's `main` (service and workers).
const SERVICE_MODE_ENV: &str = "ISOLATED_WORKERS_TEST_ACTIX_WEB_SERVICE";
/// Set to `actix` or `tokio`: this binary runs the example's `main`
/// inside a running runtime of that kind, the mistake the entry refuses.
const ENTRY_IN_RUNTIME_ENV: &str = "ISOLATED_WORKERS_TEST_ENTRY_IN_RUNTIME";

/// The longest a service may take to start, answer or stop.
const WAIT: Duration = Duration::from_secs(60);

/// The `n` of each request under load: a count that takes a debug build
/// about a fifth of a second, so that the kill finds work in flight.
const LOAD_N: u64 = 300_000;
/// Clients sending at once, and the requests each sends in turn.
const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 8;

fn main() {
    if std::env::var_os(SERVICE_MODE_ENV).is_some() {
        match example::main() {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("the example failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Ok(runtime) = std::env::var(ENTRY_IN_RUNTIME_ENV) {
        entry_in_runtime(&runtime);
    }
    let trials = vec![
        Trial::test(
            "every_request_is_answered_while_a_member_is_killed_and_ctrl_c_stops_the_service",
            killed_under_load_then_ctrl_c,
        ),
        Trial::test(
            "post_shutdown_stops_the_service_and_bad_input_is_a_400",
            shutdown_endpoint_and_bad_input,
        ),
        Trial::test(
            "worker_entry_inside_an_actix_system_panics_naming_the_fix",
            || entry_refused("actix"),
        ),
        Trial::test(
            "worker_entry_inside_a_tokio_runtime_panics_naming_the_fix",
            || entry_refused("tokio"),
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

/// Loads the service with [`CLIENTS`] concurrent clients, `kill -9`s the
/// pid of a member with a request in flight once some requests have been
/// answered, and checks every request got a 200 with the right count (the
/// example's crash policy is `Retry`); then sends SIGINT to the service's
/// process group and checks it exits 0 with no worker left.
fn killed_under_load_then_ctrl_c() -> Result<(), Failed> {
    let service = Service::start()?;
    let expected = primes_below(LOAD_N).to_string();
    let address = service.address;
    let clients: Vec<JoinHandle<Result<Vec<Response>, Failed>>> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                (0..REQUESTS_PER_CLIENT)
                    .map(|_| http(address, "GET", &format!("/primes?n={LOAD_N}")))
                    .collect()
            })
        })
        .collect();

    let mut seen = BTreeSet::new();
    let busy = service.wait_for_status("a member busy after 2 answers", |status| {
        seen.extend(status.members.iter().map(|member| member.pid));
        (status.answered >= 2)
            .then(|| status.members.iter().find(|member| member.in_flight > 0))
            .flatten()
            .map(|member| member.pid)
    })?;
    kill_process(process(busy).map_err(fail)?, Signal::KILL).map_err(fail)?;

    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.join().map_err(|_| "a client panicked")??);
    }
    let total = CLIENTS * REQUESTS_PER_CLIENT;
    let right = answers
        .iter()
        .filter(|(status, body)| *status == 200 && body.trim() == expected)
        .count();
    if right != total {
        let wrong: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
        return Err(
            format!("{right} of {total} requests answered {expected}; others: {wrong:?}").into(),
        );
    }
    let status = service.status()?;
    seen.extend(status.members.iter().map(|member| member.pid));
    let crashes: u64 = status.members.iter().map(|member| member.crashes).sum();
    if crashes == 0 || status.members.iter().any(|member| member.pid == busy) {
        return Err(format!("the kill of {busy} went unseen: {}", status.text).into());
    }

    kill_process_group(service.group()?, Signal::INT).map_err(fail)?;
    service.stopped_cleanly(&seen)
}

/// Checks one answer, a 400 for an `n` over the limit and for one that is
/// not a number, then `POST /shutdown`: a 202, and the service exits 0
/// with no worker left.
fn shutdown_endpoint_and_bad_input() -> Result<(), Failed> {
    let service = Service::start()?;
    let address = service.address;
    expect(http(address, "GET", "/primes?n=100")?, 200, "25")?;
    expect(
        http(address, "GET", "/primes?n=10000001")?,
        400,
        "n must be at most 10000000",
    )?;
    let (status, _) = http(address, "GET", "/primes?n=lots")?;
    if status != 400 {
        return Err(format!("`n=lots` answered {status}, not 400").into());
    }
    let pids = service.status()?.members.iter().map(|m| m.pid).collect();
    expect(http(address, "POST", "/shutdown")?, 202, "stopping")?;
    service.stopped_cleanly(&pids)
}

/// Runs the example's `main` inside a running runtime of kind `runtime`
/// (what `#[actix_web::main]` / `#[actix::main]` or `#[tokio::main]`
/// make of an `async fn main`). Only returns if the entry let it pass.
fn entry_in_runtime(runtime: &str) {
    let ran = match runtime {
        "actix" => actix_web::rt::System::new().block_on(async { example::main() }),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async { example::main() }),
    };
    eprintln!("worker_entry returned inside a runtime: {ran:?}");
    std::process::exit(0);
}

/// Runs this binary in [`ENTRY_IN_RUNTIME_ENV`] mode `runtime` and checks
/// that it panicked (exit 101) at once, naming the fix on stderr.
fn entry_refused(runtime: &str) -> Result<(), Failed> {
    let output = Command::new(std::env::current_exe().map_err(fail)?)
        .env(ENTRY_IN_RUNTIME_ENV, runtime)
        .stdin(Stdio::null())
        .output()
        .map_err(fail)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() != Some(101) {
        return Err(format!("exited {:?}, not 101 (a panic): {stderr}", output.status).into());
    }
    for needed in [
        "worker_entry(\"primes\") was called inside a running async runtime",
        "#[actix_web::main]",
        "plain `fn main`",
        "actix_web::rt::System::new().block_on(",
    ] {
        if !stderr.contains(needed) {
            return Err(format!("stderr does not say {needed:?}: {stderr}").into());
        }
    }
    if !output.stdout.is_empty() {
        return Err("the example started serving".into());
    }
    Ok(())
}

/// The example running as a service in a process group of its own, killed
/// with its group if a test fails before it stops.
struct Service {
    child: Option<Child>,
    address: SocketAddr,
    /// What it wrote to stderr so far, for failure messages.
    stderr: Arc<Mutex<String>>,
}

impl Service {
    /// Starts the example on a free port and reads the address it prints.
    fn start() -> Result<Self, Failed> {
        let mut child = Command::new(std::env::current_exe().map_err(fail)?)
            .args(["--port", "0"])
            .env(SERVICE_MODE_ENV, "1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(fail)?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped");
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut chunk = [0u8; 4096];
            while let Ok(read @ 1..) = pipe.read(&mut chunk) {
                text.push_str(&String::from_utf8_lossy(&chunk[..read]));
                *collected.lock().unwrap() = text.clone();
            }
        });
        let stdout = child.stdout.take().expect("piped");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = line_tx.send(lines.next());
            // Drained to its end, so that the service never blocks on it.
            lines.for_each(drop);
        });
        let mut service = Service {
            child: Some(child),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let line = line_rx
            .recv_timeout(WAIT)
            .map_err(|_| service.failure(&format!("no address printed within {WAIT:?}")))?;
        let line = match line {
            Some(Ok(line)) => line,
            _ => return Err(service.failure("it exited before printing its address")),
        };
        service.address = line
            .strip_prefix("listening on http://")
            .and_then(|address| address.parse().ok())
            .ok_or_else(|| service.failure(&format!("not an address: {line:?}")))?;
        Ok(service)
    }

    /// The service's process group (its pid).
    fn group(&self) -> Result<Pid, Failed> {
        process(self.child.as_ref().expect("running").id()).map_err(fail)
    }

    /// `GET /status`, read.
    fn status(&self) -> Result<PoolStatus, Failed> {
        let (code, text) = http(self.address, "GET", "/status")?;
        if code != 200 {
            return Err(format!("/status answered {code}: {text}").into());
        }
        PoolStatus::parse(&text)
    }

    /// Asks `/status` until `found` finds something in it.
    fn wait_for_status<T>(
        &self,
        what: &str,
        mut found: impl FnMut(&PoolStatus) -> Option<T>,
    ) -> Result<T, Failed> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let status = self.status()?;
            if let Some(found) = found(&status) {
                return Ok(found);
            }
            last = status.text;
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!("never saw {what}; last status: {last}").into())
    }

    /// Waits for the service to exit; checks it exited 0 and that none of
    /// `workers`, nor any other process of its group, is left running.
    fn stopped_cleanly(mut self, workers: &BTreeSet<u32>) -> Result<(), Failed> {
        let group = self.group();
        let status = self.wait()?;
        if !status.success() {
            return Err(self.failure(&format!("it exited {status}, not 0")));
        }
        let left: Vec<u32> = workers
            .iter()
            .copied()
            .filter(|&pid| running(pid))
            .collect();
        let in_group = running_in_group(group?);
        if !left.is_empty() || !in_group.is_empty() {
            return Err(
                format!("workers left running: {left:?}, in its group: {in_group:?}").into(),
            );
        }
        Ok(())
    }

    /// Waits (at most [`WAIT`]) for the service to exit.
    fn wait(&mut self) -> Result<ExitStatus, Failed> {
        let mut child = self.child.take().expect("running");
        let (done_tx, done_rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        match done_rx.recv_timeout(WAIT) {
            Ok(status) => status.map_err(fail),
            Err(_) => {
                if let Ok(group) = process(pid) {
                    let _ = kill_process_group(group, Signal::KILL);
                }
                Err(self.failure(&format!("it did not exit within {WAIT:?}")))
            }
        }
    }

    /// A failure saying `what`, with the service's stderr.
    fn failure(&self, what: &str) -> Failed {
        format!("{what}; its stderr:\n{}", self.stderr.lock().unwrap()).into()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(group) = process(child.id()) {
                let _ = kill_process_group(group, Signal::KILL);
            }
            let _ = child.wait();
        }
    }
}

/// What the test reads of the example's `/status` (JSON).
#[derive(Debug)]
struct PoolStatus {
    answered: u64,
    members: Vec<MemberStatus>,
    text: String,
}

/// One member of `/status`.
#[derive(Debug)]
struct MemberStatus {
    pid: u32,
    in_flight: usize,
    crashes: u64,
}

impl PoolStatus {
    /// Reads the JSON `PoolReport`: the answered count, and each member
    /// with a process.
    fn parse(text: &str) -> Result<Self, Failed> {
        let unreadable = || Failed::from(format!("unreadable status: {text}"));
        let report: serde_json::Value = serde_json::from_str(text).map_err(|_| unreadable())?;
        let answered = report["counters"]["answered"]
            .as_u64()
            .ok_or_else(unreadable)?;
        let mut members = Vec::new();
        for member in report["members"].as_array().ok_or_else(unreadable)? {
            // A member without a process (yet) is skipped.
            let Some(pid) = member["status"]["pid"].as_u64() else {
                continue;
            };
            members.push(MemberStatus {
                pid: pid as u32,
                in_flight: member["in_flight"].as_u64().ok_or_else(unreadable)? as usize,
                crashes: member["status"]["counters"]["crashes"]
                    .as_u64()
                    .ok_or_else(unreadable)?,
            });
        }
        Ok(PoolStatus {
            answered,
            members,
            text: text.to_owned(),
        })
    }
}

/// An HTTP response's status and body.
type Response = (u16, String);

/// One HTTP/1.1 request, `Connection: close`: the status and the body.
fn http(address: SocketAddr, method: &str, path: &str) -> Result<Response, Failed> {
    let mut stream = TcpStream::connect(address).map_err(fail)?;
    stream.set_read_timeout(Some(WAIT)).map_err(fail)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(fail)?;
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{method} {path}: not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

/// Checks a response's status and that its body, trimmed, is `body`.
fn expect(response: Response, status: u16, body: &str) -> Result<(), Failed> {
    if response.0 != status || response.1.trim() != body {
        return Err(format!("answered {response:?}, not {status} {body:?}").into());
    }
    Ok(())
}

/// The number of primes below `n`, by a sieve.
fn primes_below(n: u64) -> usize {
    let n = n as usize;
    let mut composite = vec![false; n];
    let mut count = 0;
    for i in 2..n {
        if !composite[i] {
            count += 1;
            (i * i..n)
                .step_by(i)
                .for_each(|multiple| composite[multiple] = true);
        }
    }
    count
}

/// Whether process `pid` runs: it exists and is not a zombie (an orphan
/// is reaped by an init that may reap late).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| is_running(&stat))
}

/// Whether a `/proc/<pid>/stat` line is of a live process: its state,
/// after the last `)` (the command name before it may hold anything), is
/// not `Z` or `X`.
fn is_running(stat: &str) -> bool {
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
}

/// The running processes of process group `group`.
fn running_in_group(group: Pid) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // After the `)`: state, ppid, pgrp.
                let pgrp = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok());
                pgrp == Some(Pid::as_raw(Some(group))) && is_running(&stat)
            })
        })
        .collect()
}

/// Turns any error into a test failure with its message.
/// Process (or process group) `pid`, as rustix takes it.
fn process(pid: u32) -> std::io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("no process has pid {pid}")))
}

fn fail(e: impl std::fmt::Display) -> Failed {
    e.to_string().into()
}
