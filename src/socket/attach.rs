//! The worker's accept loop: once asked to wait for its host (`Disconnect`,
//! `Detach`), a worker listens on `attach.sock` in its private directory
//! with a fresh secret, which it tells its host in `Listening`. Each peer
//! that connects goes through the worker's end of the handshake
//! ([`Accepting`]); those that present the secret (and run as the
//! worker's user) are passed on to the server as [`NewHost`]s.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use interprocess::local_socket::tokio::{Listener, Stream as LocalStream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::directory::listen;
use super::first_frame::{read_first_frame, write_bare};
use super::handshake::{Accepting, Input};
use super::peer::{check_peer, random_token};
use crate::wire::envelope::{AttachPoint, Header, Refusal};

/// How long a peer may take to present the secret once connected. Short:
/// an honest host writes it right after connecting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(1);
/// Peers presenting their secret at once, at most; a newer one pushes out
/// the oldest, so silent peers cannot keep an honest host waiting.
const MAX_GREETINGS: usize = 32;
/// How long accepting pauses after a failed accept (out of descriptors,
/// say), so that the failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A peer that presented the worker's secret: the host to serve next.
pub(crate) struct NewHost(pub(crate) LocalStream);

/// A worker listening for hosts: where they attach, and the task that
/// accepts them (ended when this is dropped).
pub(crate) struct Listening {
    point: AttachPoint,
    /// The task accepting hosts; aborted with this.
    _accepting: AbortOnDrop,
}

impl Listening {
    /// Listens on `socket` (a path in the worker's private directory) with
    /// a fresh secret. Returns the listener, and the stream of the hosts
    /// that presented the secret.
    pub(crate) fn start(
        socket: PathBuf,
    ) -> std::io::Result<(Self, impl futures::Stream<Item = NewHost> + 'static)> {
        let listener = listen(&socket)?;
        let point = AttachPoint {
            socket,
            token: random_token()?,
        };
        let (found, mut hosts) = mpsc::channel(1);
        let accepting = actix_rt::spawn(accept_hosts(listener, point.token.clone(), found));
        let listening = Listening {
            point,
            _accepting: AbortOnDrop(accepting),
        };
        let hosts = futures::stream::poll_fn(move |task| hosts.poll_recv(task));
        Ok((listening, hosts))
    }

    /// Where hosts attach, and the secret they present.
    pub(crate) fn point(&self) -> &AttachPoint {
        &self.point
    }
}

/// Accepts peers on `listener` and greets each ([`greet`]). A peer of
/// another user is dropped at once, before it takes one of the
/// [`MAX_GREETINGS`] places.
async fn accept_hosts(listener: Listener, token: String, found: mpsc::Sender<NewHost>) {
    let mut greetings: VecDeque<AbortOnDrop> = VecDeque::new();
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let state = Accepting::new(token.clone()).next(Input::Peer(check_peer(&stream, None)));
        if matches!(state, Accepting::HangUp) {
            continue;
        }
        greetings.retain(|greeting| !greeting.0.is_finished());
        if greetings.len() >= MAX_GREETINGS {
            greetings.pop_front(); // aborted as it is dropped
        }
        let greeting = greet(stream, state, found.clone());
        greetings.push_back(AbortOnDrop(actix_rt::spawn(greeting)));
    }
}

/// Runs the rest of one peer's [`Accepting`] handshake: reads its first
/// frame (within [`GREETING_TIMEOUT`]), passes it on as the next host if
/// it presents the secret, tells it if its secret is wrong, and drops it
/// otherwise (silent, slow, or not speaking this protocol).
async fn greet(mut stream: LocalStream, mut state: Accepting, found: mpsc::Sender<NewHost>) {
    loop {
        state = match state {
            Accepting::AwaitingPeer { .. } => state.next(Input::Peer(check_peer(&stream, None))),
            Accepting::AwaitingAttach { .. } => {
                let first =
                    tokio::time::timeout(GREETING_TIMEOUT, read_first_frame(&mut stream)).await;
                let input = match first {
                    Ok(Ok(header)) => Input::Frame(header),
                    Ok(Err(why)) => Input::NoFrame(why),
                    Err(_) => Input::NoFrame(format!("silent for {GREETING_TIMEOUT:?}")),
                };
                state.next(input)
            }
            Accepting::Accepted => {
                // Fails only if the server is gone.
                let _ = found.send(NewHost(stream)).await;
                return;
            }
            Accepting::Refuse(why) => {
                let _ = write_bare(&mut stream, &Header::Refused { why }).await;
                return;
            }
            Accepting::HangUp => return,
        };
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tells a host that another host is attached, and hangs up.
pub(crate) fn refuse_busy(mut stream: LocalStream) {
    actix_rt::spawn(async move {
        let _ = write_bare(&mut stream, &Header::Refused { why: Refusal::Busy }).await;
    });
}
