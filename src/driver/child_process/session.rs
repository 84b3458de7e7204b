//! A child worker's session: what a host holds to reach the same worker
//! process again (its socket directory, token and pid) across connections,
//! and the [`DetachedWorker`] handle that carries it to another process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::tokio::{prelude::*, Stream as LocalStream};
use interprocess::local_socket::GenericFilePath;
use serde::{Deserialize, Serialize};

use super::read_mark::ReadMark;
use super::socket::{read_first_frame, write_bare, Expected, Verdict};
use super::DIR_PREFIX;
use crate::contract::Contract;
use crate::error::AttachError;
use crate::wire::envelope::{Header, Hello, Refusal};
use crate::wire::stream::{split, Halves};
use crate::wire::PROTOCOL_VERSION;

/// The socket a running worker accepts reconnects and attaches on, in its
/// private directory.
const ATTACH_SOCKET: &str = "attach.sock";

/// Where the worker whose spawn socket is `spawn_socket` listens for
/// reconnects and attaches.
pub(crate) fn attach_socket(spawn_socket: &Path) -> PathBuf {
    spawn_socket.with_file_name(ATTACH_SOCKET)
}

/// The host's hold on one worker process, kept across its connections.
#[derive(Debug)]
pub(crate) struct Session {
    dir: SocketDir,
    token: String,
    pid: u32,
    /// Shared with a worker this host spawned, where it could be made.
    read_mark: Option<ReadMark>,
}

#[derive(Debug)]
enum SocketDir {
    /// Removed when the session is dropped: the worker dies with the host.
    Owned(tempfile::TempDir),
    /// Left in place: the worker outlives this host, and removes its
    /// directory itself when it exits.
    Kept(PathBuf),
}

impl SocketDir {
    fn path(&self) -> &Path {
        match self {
            SocketDir::Owned(dir) => dir.path(),
            SocketDir::Kept(path) => path,
        }
    }
}

impl Session {
    /// A freshly spawned worker's session; the directory goes with it.
    pub(crate) fn spawned(
        dir: tempfile::TempDir,
        token: String,
        pid: u32,
        read_mark: Option<ReadMark>,
    ) -> Self {
        Self {
            dir: SocketDir::Owned(dir),
            token,
            pid,
            read_mark,
        }
    }

    /// The session a handle describes (an attach from another process).
    fn attached(handle: &DetachedWorker) -> Self {
        let dir = handle.socket.parent().unwrap_or(Path::new("/")).to_owned();
        Self {
            dir: SocketDir::Kept(dir),
            token: handle.token.clone(),
            pid: handle.pid,
            read_mark: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join(ATTACH_SOCKET)
    }

    /// The read mark the worker keeps, if it has one.
    pub(crate) fn read_mark(&self) -> Option<&ReadMark> {
        self.read_mark.as_ref()
    }

    /// Whether the worker outlives this host.
    pub(crate) fn is_detached(&self) -> bool {
        matches!(self.dir, SocketDir::Kept(_))
    }

    /// Leaves the directory to the worker, which now outlives this host.
    pub(crate) fn detach(&mut self) {
        if let SocketDir::Owned(_) = &self.dir {
            let SocketDir::Owned(dir) =
                std::mem::replace(&mut self.dir, SocketDir::Kept(PathBuf::new()))
            else {
                unreachable!("matched above");
            };
            self.dir = SocketDir::Kept(dir.keep());
        }
    }

    /// The handle another process attaches with.
    pub(crate) fn handle<C: Contract>(&self) -> DetachedWorker {
        DetachedWorker {
            socket: self.socket(),
            pid: self.pid,
            token: self.token.clone(),
            contract: C::NAME.to_owned(),
            contract_version: C::VERSION,
            protocol: PROTOCOL_VERSION,
        }
    }

    /// Connects to the worker again (after `Disconnect`).
    pub(crate) fn reconnect<C: Contract>(
        &self,
        within: Duration,
    ) -> impl std::future::Future<Output = Result<Halves, AttachError>> + 'static {
        let (socket, token, pid) = (self.socket(), self.token.clone(), self.pid);
        async move { connect::<C>(&socket, &token, pid, within).await }
    }

    /// Removes the socket directory now (the worker is known to be gone).
    pub(crate) fn remove_directory(&self) {
        remove_socket_directory(self.dir.path());
    }
}

/// Removes a worker's private socket directory; only a directory of the
/// shape the host makes is touched. Whoever comes second finds nothing.
pub(crate) fn remove_socket_directory(dir: &Path) {
    let ours = dir
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.starts_with(DIR_PREFIX));
    if ours {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// What a later process needs to attach to a detached worker: its attach
/// socket, its pid, its token, and the contract and protocol it serves.
///
/// Serialise it with serde to hand it on (a file, an environment variable,
/// a database row).
///
/// # Security
///
/// The handle is a secret: whoever holds it can send the worker any
/// request. Keep it where only the worker's user can read it. (The
/// worker's socket is in a directory only that user can enter, and the
/// worker checks the peer's uid too, so a copy leaked to another user is
/// no use to them; a leaked copy within the same user is.) `Debug` does
/// not print the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachedWorker {
    socket: PathBuf,
    pid: u32,
    token: String,
    contract: String,
    contract_version: u32,
    protocol: u32,
}

impl std::fmt::Debug for DetachedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetachedWorker")
            .field("socket", &self.socket)
            .field("pid", &self.pid)
            .field("token", &"<secret>")
            .field("contract", &self.contract)
            .field("contract_version", &self.contract_version)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl DetachedWorker {
    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The socket the worker accepts attaches on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The contract the worker serves, and its version.
    pub fn contract(&self) -> (&str, u32) {
        (&self.contract, self.contract_version)
    }

    /// Connects to the worker as a host of contract `C`: checks that the
    /// handle is for `C`, then completes the handshake. Returns the
    /// session to keep and the connected stream.
    pub(crate) async fn connect<C: Contract>(
        &self,
        within: Duration,
    ) -> Result<(Session, Halves), AttachError> {
        if self.contract != C::NAME || self.contract_version != C::VERSION {
            return Err(AttachError::ContractMismatch {
                expected: format!("{} v{}", C::NAME, C::VERSION),
                found: format!("{} v{}", self.contract, self.contract_version),
            });
        }
        if self.protocol != PROTOCOL_VERSION {
            return Err(AttachError::Handshake(format!(
                "the handle is for protocol version {}, this host speaks {PROTOCOL_VERSION}",
                self.protocol
            )));
        }
        let stream = connect::<C>(&self.socket, &self.token, self.pid, within).await?;
        Ok((Session::attached(self), stream))
    }
}

/// Connects to the attach socket of worker `pid` and completes the
/// handshake: presents `token`, and checks the worker's Hello (its token,
/// uid and pid, and that it serves `C`).
async fn connect<C: Contract>(
    socket: &Path,
    token: &str,
    pid: u32,
    within: Duration,
) -> Result<Halves, AttachError> {
    let attempt = async {
        let connected = match socket.as_os_str().to_fs_name::<GenericFilePath>() {
            Ok(name) => LocalStream::connect(name).await,
            Err(e) => Err(e),
        };
        let mut stream = connected.map_err(|e| gone(socket, pid, &e))?;
        let ours = Header::Attach(Hello::ours::<C>(token.to_owned()));
        write_bare(&mut stream, &ours)
            .await
            .map_err(|e| gone(socket, pid, &e))?;
        let (stream, header) = read_first_frame(stream)
            .await
            .map_err(AttachError::Handshake)?;
        match header {
            Header::Hello(hello) => {
                let expected = Expected::worker_of::<C>(token.to_owned(), Some(pid));
                match expected.check(&stream, &hello) {
                    Ok(()) => split(stream).map_err(|e| AttachError::Handshake(e.to_string())),
                    Err(Verdict::Impostor(why) | Verdict::Mismatch(why)) => {
                        Err(AttachError::Handshake(why))
                    }
                }
            }
            Header::Refused {
                why: Refusal::WrongToken,
            } => Err(AttachError::WrongToken),
            Header::Refused { why: Refusal::Busy } => Err(AttachError::Busy),
            other => Err(AttachError::Handshake(format!(
                "expected a hello, got {other:?}"
            ))),
        }
    };
    tokio::time::timeout(within, attempt)
        .await
        .map_err(|_| AttachError::Timeout(within))?
}

/// The worker could not be reached. If nothing listens on its socket, or
/// its process is gone too, its directory is a leftover (after SIGKILL,
/// say): remove it.
fn gone(socket: &Path, pid: u32, error: &std::io::Error) -> AttachError {
    // A refused connection means the socket file is there but its listener
    // is not: the worker that bound it has exited (it listens until then).
    let refused = error.kind() == std::io::ErrorKind::ConnectionRefused;
    if refused || !crate::driver::process::is_running(pid) {
        if let Some(dir) = socket.parent() {
            remove_socket_directory(dir);
        }
    }
    AttachError::Gone {
        pid,
        detail: error.to_string(),
    }
}
