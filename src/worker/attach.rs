//! How a host reaches a running worker process again. After `Disconnect`
//! or `Detach` the worker listens on its attach socket, next to the one it
//! was spawned on; a peer becomes its host only after presenting the
//! worker's token (and running as the worker's user).

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::SpawnHandle;
use futures::stream::{FuturesUnordered, StreamExt};
use interprocess::local_socket::tokio::{Listener, Stream as LocalStream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::sync::mpsc;

use crate::driver::child_process::session::attach_socket;
use crate::driver::child_process::socket::{
    check_peer, listen, read_first_frame, token_matches, write_bare,
};
use crate::wire::envelope::{Header, Refusal};

/// How long an unauthenticated peer may take to present its token.
const GREETING_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers presenting their token at the same time, at most; more wait.
const MAX_GREETINGS: usize = 16;

/// A peer that presented the worker's token: the host to serve next.
pub(crate) struct NewHost(pub(crate) LocalStream);

/// The worker's side of reconnects and attaches.
pub(crate) struct Reattach {
    token: String,
    socket: PathBuf,
    /// The task accepting hosts, once listening; aborted with this.
    listening: Option<tokio::task::JoinHandle<()>>,
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

impl Drop for Reattach {
    fn drop(&mut self) {
        if let Some(task) = &self.listening {
            task.abort();
        }
    }
}

impl Reattach {
    /// Reattaching to the worker spawned on `spawn_socket`, whose hosts
    /// must present `token`.
    pub(crate) fn new(token: String, spawn_socket: &Path) -> Self {
        Self {
            token,
            socket: attach_socket(spawn_socket),
            listening: None,
            detached: false,
            idle_timeout: None,
            host_will_return: false,
            idle_timer: None,
        }
    }

    /// Whether the end of the current connection parks the worker (to wait
    /// for a host) rather than stops it.
    pub(crate) fn parks_on_hangup(&self) -> bool {
        self.detached || self.host_will_return
    }

    /// Starts listening for hosts, unless already listening; returns the
    /// stream of authenticated hosts the first time.
    pub(crate) fn listen(
        &mut self,
    ) -> std::io::Result<Option<impl futures::Stream<Item = NewHost> + 'static>> {
        if self.listening.is_some() {
            return Ok(None);
        }
        let listener = listen(&self.socket)?;
        let (found, mut hosts) = mpsc::channel(1);
        self.listening = Some(actix_rt::spawn(accept_hosts(
            listener,
            self.token.clone(),
            found,
        )));
        Ok(Some(futures::stream::poll_fn(move |task| {
            hosts.poll_recv(task)
        })))
    }
}

/// Accepts peers on `listener` and passes on those that present `token`;
/// tells those with a wrong token so, and drops the rest.
async fn accept_hosts(listener: Listener, token: String, found: mpsc::Sender<NewHost>) {
    let mut greetings = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if greetings.len() < MAX_GREETINGS => {
                if let Ok(stream) = accepted {
                    greetings.push(tokio::time::timeout(GREETING_TIMEOUT, read_first_frame(stream)));
                }
            }
            Some(greeted) = greetings.next() => {
                let Ok(Ok((mut stream, Header::Attach(hello)))) = greeted else {
                    continue; // silent, slow, or not speaking our protocol
                };
                if check_peer(&stream, None).is_err() {
                    continue;
                }
                if !token_matches(&hello.token, &token) {
                    let _ = write_bare(&mut stream, &Header::Refused { why: Refusal::WrongToken }).await;
                    continue;
                }
                if found.send(NewHost(stream)).await.is_err() {
                    return; // the server is gone
                }
            }
        }
    }
}

/// Tells a host that another host is attached, and hangs up.
pub(crate) fn refuse_busy(mut stream: LocalStream) {
    actix_rt::spawn(async move {
        let _ = write_bare(&mut stream, &Header::Refused { why: Refusal::Busy }).await;
    });
}
