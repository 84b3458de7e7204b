//! The host's side of reaching a child worker again: what a host holds to
//! reach the same worker process across connections (its pid, and where it
//! accepts its host once it said so), the [`DetachedWorker`] handle that
//! carries that to another process, and [`connect`]ing: the I/O around
//! the [`Attaching`] handshake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use interprocess::local_socket::tokio::{prelude::*, Stream as LocalStream};
use interprocess::local_socket::GenericFilePath;
use serde::{Deserialize, Serialize};

use super::directory::remove_socket_directory;
use super::first_frame::{read_first_frame, write_bare};
use super::handshake::{Attaching, Input};
use super::peer::{check_peer, is_running};
use super::read_mark::ReadMark;
use crate::contract::Contract;
use crate::error::{AttachError, HandshakeError};
use crate::wire::envelope::{AttachPoint, Refusal};
use crate::wire::stream::{split, Halves};
use crate::wire::PROTOCOL_VERSION;

/// The host's hold on one worker process, kept across its connections.
#[derive(Debug)]
pub(crate) struct Session {
    pid: u32,
    /// Where the worker accepts its host again, once it has said so
    /// (it listens only after `Disconnect` or `Detach`).
    attach: Option<AttachPoint>,
    /// Whether the worker outlives this host.
    detached: bool,
    /// Shared with a worker this host spawned, where it could be made.
    read_mark: Option<ReadMark>,
}

impl Session {
    /// A freshly spawned worker's session.
    pub(crate) fn spawned(pid: u32, read_mark: Option<ReadMark>) -> Self {
        Self {
            pid,
            attach: None,
            detached: false,
            read_mark,
        }
    }

    /// The session a handle describes (an attach from another process).
    fn attached(handle: &DetachedWorker) -> Self {
        Self {
            pid: handle.pid,
            attach: Some(AttachPoint {
                socket: handle.socket.clone(),
                token: handle.token.clone(),
            }),
            detached: true,
            read_mark: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker said where it now accepts its host.
    pub(crate) fn listening_at(&mut self, point: AttachPoint) {
        self.attach = Some(point);
    }

    /// The read mark the worker keeps, if it has one.
    pub(crate) fn read_mark(&self) -> Option<&ReadMark> {
        self.read_mark.as_ref()
    }

    /// Whether the worker outlives this host.
    pub(crate) fn is_detached(&self) -> bool {
        self.detached
    }

    /// The worker now outlives this host (and removes its directory itself
    /// when it exits).
    pub(crate) fn detach(&mut self) {
        self.detached = true;
    }

    /// The handle another process attaches with, once the worker listens.
    pub(crate) fn handle<C: Contract>(&self) -> Option<DetachedWorker> {
        let point = self.attach.as_ref()?;
        Some(DetachedWorker {
            socket: point.socket.clone(),
            pid: self.pid,
            token: point.token.clone(),
            contract: C::NAME.to_owned(),
            contract_version: C::VERSION,
            protocol: PROTOCOL_VERSION,
        })
    }

    /// Connects to the worker again (after `Disconnect`).
    pub(crate) fn reconnect<C: Contract>(
        &self,
        within: Duration,
    ) -> impl std::future::Future<Output = Result<Halves, AttachError>> + 'static {
        let (point, pid) = (self.attach.clone(), self.pid);
        async move {
            let Some(point) = point else {
                return Err(AttachError::Handshake(HandshakeError::NotListening));
            };
            connect::<C>(&point.socket, &point.token, pid, within).await
        }
    }

    /// Removes the worker's attach directory now (the worker is known to
    /// be gone), if it made one.
    pub(crate) fn remove_directory(&self) {
        if let Some(dir) = self.attach.as_ref().and_then(|p| p.socket.parent()) {
            remove_socket_directory(dir);
        }
    }
}

/// A worker that does not outlive this host is gone (or being killed) when
/// the host lets go of its session: a killed worker cannot remove its
/// attach directory itself, so the host does.
impl Drop for Session {
    fn drop(&mut self) {
        if !self.detached {
            self.remove_directory();
        }
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
            return Err(AttachError::Handshake(HandshakeError::HandleProtocol {
                handle: self.protocol,
                host: PROTOCOL_VERSION,
            }));
        }
        let stream = connect::<C>(&self.socket, &self.token, self.pid, within).await?;
        Ok((Session::attached(self), stream))
    }
}

/// Connects to the attach socket of worker `pid` and runs the host's end
/// of the [`Attaching`] handshake: presents `token`, then feeds the
/// machine the worker's answer and the OS's word on the peer until it
/// opens the connection or says why not.
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
        let (mut state, opening) = Attaching::start::<C>(token);
        write_bare(&mut stream, &opening)
            .await
            .map_err(|e| gone(socket, pid, &e))?;
        loop {
            state = match state {
                Attaching::AwaitingHello { .. } => {
                    let input = match read_first_frame(&mut stream).await {
                        Ok(header) => Input::Frame(header),
                        // A worker killed as it was reached (its last
                        // threads still exiting) accepts, then resets the
                        // connection.
                        Err(_) if !is_running(pid) => {
                            let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                            return Err(gone(socket, pid, &reset));
                        }
                        Err(why) => Input::NoFrame(why),
                    };
                    state.next(input)
                }
                // The worker proved it knows the secret; it must also be
                // the process the handle names.
                Attaching::AwaitingPeer { .. } => {
                    state.next(Input::Peer(check_peer(&stream, Some(pid))))
                }
                Attaching::Open => {
                    let io = |e| AttachError::Handshake(HandshakeError::Io(std::sync::Arc::new(e)));
                    return split(stream).map_err(io);
                }
                Attaching::Refused(Refusal::WrongToken) => return Err(AttachError::WrongToken),
                Attaching::Refused(Refusal::Busy) => return Err(AttachError::Busy),
                Attaching::Failed(why) => return Err(AttachError::Handshake(why)),
            };
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
    if refused || !is_running(pid) {
        if let Some(dir) = socket.parent() {
            remove_socket_directory(dir);
        }
    }
    AttachError::Gone {
        pid,
        detail: error.to_string(),
    }
}
