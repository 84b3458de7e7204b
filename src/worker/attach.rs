//! How a host reaches a running worker process again. A worker is spawned
//! over an inherited socketpair; only after `Disconnect` or `Detach` does it
//! listen, on a socket in a private directory it makes itself (and removes
//! when it exits), with a fresh secret it tells its host in `Listening`. A
//! peer becomes its host only after presenting that secret (and running as
//! the worker's user).

use std::collections::VecDeque;
use std::time::Duration;

use interprocess::local_socket::tokio::{Listener, Stream as LocalStream};
use interprocess::local_socket::traits::tokio::Listener as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::driver::child_process::session::attach_directory;
use crate::driver::child_process::socket::{
    check_peer, listen, random_token, read_first_frame, token_matches, write_bare,
};
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

/// Where a worker process listens for its hosts, once asked to.
#[derive(Default)]
pub(crate) struct Reattach {
    /// Where and how hosts attach, once listening.
    listening: Option<Listening>,
}

struct Listening {
    point: AttachPoint,
    /// The task accepting hosts; aborted with this.
    _accepting: AbortOnDrop,
}

impl Reattach {
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
            return Ok((listening.point.clone(), None));
        }
        let socket = attach_directory()?;
        // Removed as the process exits, however it exits.
        super::watchdog::attach_socket_made(&socket);
        let listener = listen(&socket)?;
        let point = AttachPoint {
            socket,
            token: random_token()?,
        };
        let (found, mut hosts) = mpsc::channel(1);
        let accepting = actix_rt::spawn(accept_hosts(listener, point.token.clone(), found));
        self.listening = Some(Listening {
            point: point.clone(),
            _accepting: AbortOnDrop(accepting),
        });
        let hosts = futures::stream::poll_fn(move |task| hosts.poll_recv(task));
        Ok((point, Some(hosts)))
    }
}

/// Accepts peers on `listener` and passes on those that present `token`;
/// tells those with a wrong token so, and drops the rest (other users at
/// once, the silent and the slow after [`GREETING_TIMEOUT`]).
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
        if check_peer(&stream, None).is_err() {
            continue;
        }
        greetings.retain(|greeting| !greeting.0.is_finished());
        if greetings.len() >= MAX_GREETINGS {
            greetings.pop_front(); // aborted as it is dropped
        }
        let greeting = greet(stream, token.clone(), found.clone());
        greetings.push_back(AbortOnDrop(actix_rt::spawn(greeting)));
    }
}

/// Reads one peer's first frame; passes the peer on as the next host if it
/// presents `token`.
async fn greet(stream: LocalStream, token: String, found: mpsc::Sender<NewHost>) {
    let greeted = tokio::time::timeout(GREETING_TIMEOUT, read_first_frame(stream)).await;
    let Ok(Ok((mut stream, Header::Attach(hello)))) = greeted else {
        return; // silent, slow, or not speaking our protocol
    };
    if !token_matches(&hello.token, &token) {
        let _ = write_bare(
            &mut stream,
            &Header::Refused {
                why: Refusal::WrongToken,
            },
        )
        .await;
        return;
    }
    // Fails only if the server is gone.
    let _ = found.send(NewHost(stream)).await;
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
