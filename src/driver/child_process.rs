//! The default driver: the worker runs in a child process that connects back
//! to the host over a local socket in a private directory.
//!
//! Start-up, in order: make a 0700 directory with a random name; listen on a
//! socket in it; spawn the child with the socket path, a fresh random token
//! and the worker name in its environment; accept connections until one
//! presents the token (and, where the OS tells, comes from the spawned child
//! and the host's user). Everything else that connects is dropped. The whole
//! start-up is bounded by [`WorkerOptions::startup_timeout`].

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use interprocess::local_socket::tokio::{prelude::*, Stream as LocalStream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;

use super::process::ProcessHandle;
use super::{Connection, Driver};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::error::{CrashReason, SpawnError};
use crate::wire::envelope::{Header, Hello};
use crate::wire::stream::SharedStream;
use crate::wire::{Serializer, PROTOCOL_VERSION};

/// Environment variables the host sets for a child worker.
pub(crate) mod env {
    /// Path of the socket to connect to.
    pub(crate) const SOCKET: &str = "ISOLATED_WORKERS_SOCKET";
    /// The per-spawn secret to present in the handshake.
    pub(crate) const TOKEN: &str = "ISOLATED_WORKERS_TOKEN";
    /// Which of the binary's workers to run.
    pub(crate) const NAME: &str = "ISOLATED_WORKERS_NAME";
    /// Largest frame either side accepts.
    pub(crate) const MAX_FRAME: &str = "ISOLATED_WORKERS_MAX_FRAME";
}

/// Longest Hello frame accepted before the peer is authenticated.
const MAX_HELLO_LEN: usize = 4096;

/// Runs the worker in a child process: by default the current executable
/// again, which hands over to the worker in
/// [`worker_entry`](crate::worker_entry).
///
/// ```no_run
/// use isolated_workers::ChildProcess;
/// let driver = ChildProcess::current_exe("calc").env("RUST_LOG", "debug");
/// ```
#[derive(Debug, Clone)]
pub struct ChildProcess {
    program: Result<PathBuf, String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    clear_env: bool,
    worker_name: String,
}

impl ChildProcess {
    /// Re-runs the current executable as worker `worker_name`.
    pub fn current_exe(worker_name: impl Into<String>) -> Self {
        let program = std::env::current_exe().map_err(|e| e.to_string());
        Self::with_program(program, worker_name.into())
    }

    /// Runs `program` as worker `worker_name`; the program must call
    /// [`worker_entry`](crate::worker_entry) with that name.
    pub fn program(program: impl Into<PathBuf>, worker_name: impl Into<String>) -> Self {
        Self::with_program(Ok(program.into()), worker_name.into())
    }

    fn with_program(program: Result<PathBuf, String>, worker_name: String) -> Self {
        Self {
            program,
            args: Vec::new(),
            envs: Vec::new(),
            clear_env: false,
            worker_name,
        }
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the child with an empty environment (plus what [`env`](Self::env)
    /// sets and what the worker needs to connect back).
    pub fn env_clear(mut self) -> Self {
        self.clear_env = true;
        self
    }

    /// The worker name the child is started as.
    pub fn worker_name(&self) -> &str {
        &self.worker_name
    }
}

impl<C: Contract> Driver<C> for ChildProcess {
    fn launch(
        self,
        options: &WorkerOptions,
    ) -> LocalBoxFuture<'static, Result<Connection, SpawnError>> {
        Box::pin(self.spawn_and_handshake::<C>(options.clone()))
    }
}

impl ChildProcess {
    async fn spawn_and_handshake<C: Contract>(
        self,
        options: WorkerOptions,
    ) -> Result<Connection, SpawnError> {
        let deadline = tokio::time::Instant::now() + options.startup_timeout;
        let dir = tempfile::Builder::new()
            .prefix("isolated-workers-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|source| SpawnError::Io {
                what: "socket directory",
                source,
            })?;
        let socket_path = dir.path().join("worker.sock");
        let listener = socket_path
            .as_os_str()
            .to_fs_name::<GenericFilePath>()
            .and_then(|name| ListenerOptions::new().name(name).create_tokio())
            .map_err(|source| SpawnError::Io {
                what: "socket",
                source,
            })?;
        let token = random_token().map_err(|source| SpawnError::Io {
            what: "token",
            source,
        })?;

        if let Some(name) = std::env::var_os(env::NAME) {
            // This process was started as a worker but never entered it:
            // spawning again would start the same mistake once more.
            return Err(SpawnError::Launch {
                program: "<this process>".into(),
                source: io::Error::other(format!(
                    "this process was started as worker {name:?} but did not call \
                     `worker_entry` with that name; refusing to spawn workers from it"
                )),
            });
        }
        let program = self.program.map_err(|e| SpawnError::Launch {
            program: "<current executable>".into(),
            source: io::Error::other(e),
        })?;
        let mut command = tokio::process::Command::new(&program);
        if self.clear_env {
            command.env_clear();
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(env::SOCKET, &socket_path)
            .env(env::TOKEN, &token)
            .env(env::NAME, &self.worker_name)
            .env(env::MAX_FRAME, options.max_frame_len.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| SpawnError::Launch {
            program: program.display().to_string(),
            source,
        })?;
        let mut process = ProcessHandle::watch(child);
        tracing::debug!(pid = process.pid(), worker = %self.worker_name, "spawned worker");

        let expected = Expected {
            token,
            pid: process.pid(),
            contract: C::NAME,
            contract_version: C::VERSION,
            serializer: <C::Serializer as Serializer>::NAME,
        };
        let mut handshakes = FuturesUnordered::new();
        let exited = process.exited_within(options.startup_timeout);
        tokio::pin!(exited);
        let failure = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(stream) => handshakes.push(read_hello(stream)),
                    Err(e) => tracing::debug!("accept failed: {e}"),
                },
                Some(greeted) = handshakes.next() => match greeted {
                    Ok((stream, hello)) => match expected.check(&stream, &hello) {
                        Ok(()) => {
                            tracing::debug!(pid = process.pid(), "worker handshake complete");
                            let (reader, writer) = SharedStream::split(stream);
                            let connection = Connection::halves(Box::new(reader), Box::new(writer), true);
                            return Ok(connection.with_process(process).keep(dir));
                        }
                        Err(Verdict::Impostor(why)) => tracing::warn!("dropped a peer on the worker socket: {why}"),
                        Err(Verdict::Mismatch(why)) => break SpawnError::Handshake(why),
                    },
                    Err(why) => tracing::warn!("dropped a peer on the worker socket: {why}"),
                },
                status = &mut exited => match status {
                    Some(status) => {
                        let reason = CrashReason::from_exit_status(status);
                        let stderr = process.stderr_tail(Duration::from_secs(1)).await;
                        return Err(SpawnError::Exited { reason, stderr });
                    }
                    // Still running at the deadline.
                    None => break SpawnError::Timeout {
                        after: options.startup_timeout,
                        stderr: String::new(),
                    },
                },
                _ = tokio::time::sleep_until(deadline) => {
                    break SpawnError::Timeout {
                        after: options.startup_timeout,
                        stderr: String::new(),
                    };
                }
            }
        };
        process.kill();
        let _ = process.exited_within(Duration::from_secs(5)).await;
        let stderr = process.stderr_tail(Duration::from_secs(1)).await;
        Err(match failure {
            SpawnError::Timeout { after, .. } => SpawnError::Timeout { after, stderr },
            other => other,
        })
    }
}

/// What a genuine worker's Hello must say.
struct Expected {
    token: String,
    pid: u32,
    contract: &'static str,
    contract_version: u32,
    serializer: &'static str,
}

enum Verdict {
    /// Not our worker: drop the connection and keep waiting.
    Impostor(String),
    /// Our worker (it knows the token), but it speaks something else.
    Mismatch(String),
}

impl Expected {
    fn check(&self, stream: &LocalStream, hello: &Hello) -> Result<(), Verdict> {
        let token_ok: bool = hello.token.as_bytes().ct_eq(self.token.as_bytes()).into();
        if !token_ok {
            return Err(Verdict::Impostor("wrong token".into()));
        }
        if let Ok(creds) = stream.peer_creds() {
            if let Some(uid) = creds.euid() {
                let ours = nix::unistd::geteuid().as_raw();
                if uid != ours {
                    return Err(Verdict::Impostor(format!(
                        "peer runs as uid {uid}, not {ours}"
                    )));
                }
            }
            if let Some(pid) = creds.pid() {
                if u32::try_from(pid).ok() != Some(self.pid) {
                    return Err(Verdict::Impostor(format!(
                        "peer is process {pid}, not the spawned worker {}",
                        self.pid
                    )));
                }
            }
        }
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Verdict::Mismatch(format!(
                "the worker speaks protocol version {}, the host {PROTOCOL_VERSION}",
                hello.protocol
            )));
        }
        if hello.contract != self.contract || hello.contract_version != self.contract_version {
            return Err(Verdict::Mismatch(format!(
                "the worker serves contract `{}` v{}, the host expects `{}` v{}",
                hello.contract, hello.contract_version, self.contract, self.contract_version
            )));
        }
        if hello.serializer != self.serializer {
            return Err(Verdict::Mismatch(format!(
                "the worker encodes with `{}`, the host with `{}`",
                hello.serializer, self.serializer
            )));
        }
        Ok(())
    }
}

/// Reads exactly one frame, which must be a Hello of bounded size. Reads
/// nothing past it, so the stream can be handed on intact.
async fn read_hello(mut stream: LocalStream) -> Result<(LocalStream, Hello), String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| format!("no hello: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HELLO_LEN {
        return Err(format!(
            "hello of {len} bytes is over the limit of {MAX_HELLO_LEN}"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("truncated hello: {e}"))?;
    let mut prefixed = bytes::BytesMut::with_capacity(4 + len);
    prefixed.extend_from_slice(&(len as u32).to_le_bytes());
    prefixed.extend_from_slice(&body);
    let frame = crate::wire::frame::decode_one(prefixed, MAX_HELLO_LEN)
        .map_err(|e| format!("bad hello: {e}"))?;
    match frame.header {
        Header::Hello(hello) => Ok((stream, hello)),
        other => Err(format!("expected a hello, got {other:?}")),
    }
}

fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(bytes))
}
