//! The server's side of reconnects and attaches: whether the end of a
//! connection parks the worker (to wait for a host) or stops it, and the
//! listener hosts reach it on (the accept loop is in
//! [`socket::attach`](crate::socket::attach)). A worker is spawned over an
//! inherited socketpair; only after `Disconnect` or `Detach` does it listen.

use std::time::Duration;

use actix::SpawnHandle;

use crate::socket::attach::{Listening, NewHost};
use crate::socket::directory::attach_directory;
use crate::wire::envelope::AttachPoint;

/// The worker's side of reconnects and attaches.
#[derive(Default)]
pub(crate) struct Reattach {
    /// Where and how hosts attach, once listening.
    listening: Option<Listening>,
    /// Whether the worker outlives its host (it parks, rather than stops,
    /// whenever its host goes).
    pub(crate) detached: bool,
    /// How long a detached worker waits for a host before it stops.
    pub(crate) idle_timeout: Option<Duration>,
    /// Set by `Disconnect`: the current host will hang up and come back.
    pub(crate) host_will_return: bool,
    /// Stops a parked detached worker after `idle_timeout`.
    pub(crate) idle_timer: Option<SpawnHandle>,
}

impl Reattach {
    /// Whether the end of the current connection parks the worker (to wait
    /// for a host) rather than stops it.
    pub(crate) fn parks_on_hangup(&self) -> bool {
        self.detached || self.host_will_return
    }

    /// Starts listening for hosts, unless already listening. Returns where
    /// hosts attach, and, the first time, the stream of hosts that
    /// presented the secret.
    pub(crate) fn listen(
        &mut self,
    ) -> std::io::Result<(
        AttachPoint,
        Option<impl futures::Stream<Item = NewHost> + 'static>,
    )> {
        if let Some(listening) = &self.listening {
            return Ok((listening.point().clone(), None));
        }
        let socket = attach_directory()?;
        // Removed as the process exits, however it exits.
        super::watchdog::attach_socket_made(&socket);
        let (listening, hosts) = Listening::start(socket)?;
        let point = listening.point().clone();
        self.listening = Some(listening);
        Ok((point, Some(hosts)))
    }
}
