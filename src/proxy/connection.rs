//! A child worker's connection, apart from its life: [`Disconnect`] and
//! [`Reconnect`] close and restore the connection while the worker keeps
//! running and keeps its state; [`Detach`] lets the worker outlive the host,
//! and [`Worker::attach`] connects a later process to it. Accepted only by
//! workers whose driver has the capability ([`CanReconnect`],
//! [`CanDetach`]), which only [`ChildProcess`] has.

use std::time::Duration;

use actix::prelude::*;

use super::{Accepted, Link, Worker, WorkerState};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::process::{Ended, EXIT_STATUS_WAIT};
use crate::driver::{CanDetach, CanReconnect, ChildProcess, Connection, Driver, ProcessHandle};
use crate::error::{AttachError, CrashReason, WorkerError};
use crate::socket::session::Session;
use crate::socket::DetachedWorker;
use crate::wire::envelope::Header;

/// How long a detached worker waits for a host by default before it stops.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Closes the connection to a worker that keeps running and keeps its
/// state, until [`Reconnect`]. Accepted by workers whose driver
/// [`CanReconnect`].
///
/// Requests in flight or queued at that moment resolve
/// [`WorkerError::Disconnected`] at once, and the worker drops their
/// handlers (as on a timeout); to let them finish, await them before
/// disconnecting. While disconnected, every request fails at once with
/// [`WorkerError::Disconnected`] (no timeout is waited out), and
/// [`Status`](super::Status) says [`WorkerState::Disconnected`]. A worker
/// that dies meanwhile is noticed: the state becomes `Crashed`.
///
/// Disconnecting an already disconnected worker does nothing.
///
/// # Errors
/// What a request would get if the worker is not running (`Closed`,
/// `Crashed`, `GaveUp`); [`WorkerError::Timeout`] if the worker does not
/// confirm within [`WorkerOptions::startup_timeout`] (the connection is
/// then kept).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), WorkerError>")]
pub struct Disconnect;

/// Connects again to the worker [`Disconnect`] left running: a fresh
/// connection and handshake (the same token, uid and pid checks as at
/// spawn), and the worker's actor as it was. Accepted by workers whose
/// driver [`CanReconnect`]. Reconnecting a connected worker does nothing.
///
/// # Errors
/// [`WorkerError::Crashed`] if the worker died while disconnected: the
/// state becomes `Crashed`, and, as after any crash, the next request
/// starts a fresh worker (which does not have the old one's state).
/// [`WorkerError::Unreachable`] if the worker could not be reached for
/// another reason (the worker stays disconnected). `Closed` or `GaveUp` as
/// for a request.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), WorkerError>")]
pub struct Reconnect;

/// Lets the worker outlive the host, and answers the [`DetachedWorker`]
/// handle with which any later process of the same user can
/// [`attach`](Worker::attach) to it. Accepted by workers whose driver
/// [`CanDetach`].
///
/// The proxy goes on serving requests as before. What changes is the
/// worker's life: it no longer gets the parent-death signal, it leaves the
/// host's session and process group (a terminal's Ctrl-C to the host does
/// not reach it), its stdin, stdout and stderr point at `/dev/null` from
/// now on, and when the host goes away (exits, is killed, or drops the
/// proxy) the worker keeps its state and waits for a host to attach.
/// [`Close`](super::Close) still ends it, from this host or from one that
/// attached, and removes its socket directory.
///
/// A detached worker is not immortal: after `idle_timeout` with no host
/// attached, it stops and removes its socket directory.
///
/// Detaching again answers the same handle.
///
/// # Errors
/// `Disconnected` while disconnected (reconnect first); otherwise as for
/// [`Disconnect`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<DetachedWorker, WorkerError>")]
pub struct Detach {
    /// How long the worker waits for a host to attach before it stops;
    /// `None` for as long as it takes (until `Close`, a signal, or a
    /// reboot). [`DEFAULT_IDLE_TIMEOUT`] by default.
    pub idle_timeout: Option<Duration>,
}

impl Default for Detach {
    fn default() -> Self {
        Self {
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// A worker process left running without a connection.
pub(super) struct Parked {
    process: ProcessHandle,
    session: Session,
    /// Notices the process's death while parked; cancelled on reconnect.
    watcher: Option<SpawnHandle>,
}

impl Parked {
    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(super) fn process_mut(&mut self) -> &mut ProcessHandle {
        &mut self.process
    }

    pub(super) fn session(&self) -> &Session {
        &self.session
    }
}

// Each lifecycle message is accepted only under its capability. Written
// out rather than by a macro: the compiler quotes these impls when a
// message is refused, and the bound should read plainly there.
//
// Reconnect runs atomically (messages sent after it wait in the mailbox
// until it is done, then find the worker connected). Disconnect and Detach
// cannot: the worker's confirmation arrives on the connection, which the
// proxy reads only while its mailbox runs.

impl<C: Contract, D: Driver<C> + CanReconnect> Accepted<C, D> for Disconnect {
    type Response = ResponseActFuture<Worker<C, D>, Result<(), WorkerError>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        worker.disconnect()
    }
}

impl<C: Contract, D: Driver<C> + CanReconnect> Accepted<C, D> for Reconnect {
    type Response = AtomicResponse<Worker<C, D>, Result<(), WorkerError>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        AtomicResponse::new(worker.reconnect())
    }
}

impl<C: Contract, D: Driver<C> + CanDetach> Accepted<C, D> for Detach {
    type Response = ResponseActFuture<Worker<C, D>, Result<DetachedWorker, WorkerError>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        worker.detach(self)
    }
}

/// Refused while the worker has not yet confirmed an earlier `Disconnect`
/// or `Detach`.
const UNDER_WAY: WorkerError = WorkerError::Unsupported {
    what: "a Disconnect or Detach while another is under way",
};

/// A detached worker whose host never learned where it listens (it cannot
/// happen with this crate's workers, which say so before `Detach` is
/// confirmed).
const NOT_LISTENING: WorkerError = WorkerError::Unsupported {
    what: "a handle to a worker that never said where it listens",
};

type Answer<C, D, T> = ResponseActFuture<Worker<C, D>, Result<T, WorkerError>>;

fn answer<C: Contract, D: Driver<C>, T: 'static>(
    result: Result<T, WorkerError>,
) -> Answer<C, D, T> {
    Box::pin(fut::ready(result))
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    fn disconnect(&mut self) -> Answer<C, D, ()> {
        if self.state == WorkerState::Disconnected {
            return answer(Ok(()));
        }
        if let Some(error) = self.unavailable() {
            return answer(Err(error));
        }
        let Link::Stream(link) = &mut self.link else {
            return answer(Err(WorkerError::Unsupported { what: "Disconnect" }));
        };
        if link.session.is_none() {
            return answer(Err(WorkerError::Unsupported { what: "Disconnect" }));
        }
        if link.listening.is_some() {
            return answer(Err(UNDER_WAY));
        }
        // From now on requests fail at once, as they will once parked.
        link.hanging_up = true;
        link.fail_all(|| WorkerError::Disconnected);
        let confirmed = self.confirmation(Header::Disconnect, "Disconnect");
        Box::pin(confirmed.map(|confirmed, worker: &mut Self, ctx| {
            if let Err(error) = confirmed {
                if let Link::Stream(link) = &mut worker.link {
                    link.hanging_up = false; // not confirmed: serve on
                }
                return Err(error);
            }
            worker.park(ctx);
            Ok(())
        }))
    }

    /// Sends `header` and waits for the worker's `Listening`.
    fn confirmation(
        &mut self,
        header: Header,
        what: &'static str,
    ) -> impl ActorFuture<Self, Output = Result<(), WorkerError>> + 'static {
        let within = self.options.startup_timeout;
        let listening = match &mut self.link {
            Link::Stream(link) => Some(link.ask_to_listen(header)),
            _ => None,
        };
        async move {
            let Some(listening) = listening else {
                return Err(None);
            };
            match tokio::time::timeout(within, listening).await {
                Ok(Ok(())) => Ok(()),
                // The connection was lost first.
                Ok(Err(_)) => Err(None),
                Err(_) => Err(Some(WorkerError::Timeout {
                    after: within,
                    message: what,
                })),
            }
        }
        .into_actor(self)
        .map(|confirmed, worker, _| {
            confirmed.map_err(|error| {
                error
                    .or_else(|| worker.unavailable())
                    .unwrap_or(WorkerError::Crashed {
                        reason: CrashReason::ConnectionLost,
                        message: None,
                        attempt: 1,
                    })
            })
        })
    }

    /// Hangs up on a worker that confirmed it will wait, keeping the
    /// process and session.
    fn park(&mut self, ctx: &mut Context<Self>) {
        let Link::Stream(link) = std::mem::replace(&mut self.link, Link::Released) else {
            return;
        };
        let (Some(process), Some(session)) = link.hang_up() else {
            return;
        };
        let pid = process.pid();
        let watcher = ctx.spawn(
            process
                .ended()
                .into_actor(self)
                .map(move |ended, worker, _| {
                    worker.parked_worker_ended(pid, ended);
                }),
        );
        tracing::info!(contract = C::NAME, pid, "disconnected from the worker");
        self.link = Link::Parked(Parked {
            process,
            session,
            watcher: Some(watcher),
        });
        self.state = WorkerState::Disconnected;
    }

    fn parked_worker_ended(&mut self, pid: u32, ended: Option<Ended>) {
        let parked = matches!(&self.link, Link::Parked(parked) if parked.pid() == pid);
        if !parked || self.state != WorkerState::Disconnected {
            return;
        }
        let reason = ended.map_or(CrashReason::ConnectionLost, Ended::reason);
        tracing::warn!(contract = C::NAME, pid, %reason, "disconnected worker died");
        self.crashed(reason, None);
    }

    fn reconnect(&mut self) -> Answer<C, D, ()> {
        match &self.state {
            WorkerState::Running => return answer(Ok(())),
            WorkerState::Disconnected => {}
            _ => return answer(Err(self.unavailable().unwrap_or(WorkerError::Closed))),
        }
        let Link::Parked(parked) = &self.link else {
            return answer(Err(WorkerError::Unsupported { what: "Reconnect" }));
        };
        let connecting = parked.session.reconnect::<C>(self.options.startup_timeout);
        let ended = parked.process.exited_within(EXIT_STATUS_WAIT);
        let attempt = async move {
            match connecting.await {
                Ok(stream) => Ok(stream),
                // Learn how it ended, to say so.
                Err(AttachError::Gone { .. }) => Err(Err(ended.await)),
                Err(other) => Err(Ok(other)),
            }
        };
        Box::pin(attempt.into_actor(self).map(|attempt, worker, ctx| {
            let Link::Parked(_) = &worker.link else {
                return Err(worker.unavailable().unwrap_or(WorkerError::Closed));
            };
            match attempt {
                Ok(stream) => {
                    let Link::Parked(parked) = std::mem::replace(&mut worker.link, Link::Released)
                    else {
                        unreachable!("matched above");
                    };
                    if let Some(watcher) = parked.watcher {
                        ctx.cancel_future(watcher);
                    }
                    let connection =
                        Connection::child_stream(stream, parked.process, parked.session);
                    let (options, tally) = (&worker.options, &worker.tally);
                    worker.link = Link::start(connection, options, tally, &worker.events, ctx);
                    worker.state = WorkerState::Running;
                    tracing::info!(contract = C::NAME, "reconnected to the worker");
                    Ok(())
                }
                Err(Err(ended)) => {
                    let reason = ended.map_or(CrashReason::ConnectionLost, Ended::reason);
                    tracing::warn!(contract = C::NAME, %reason, "the disconnected worker is gone");
                    worker.crashed(reason.clone(), None);
                    Err(WorkerError::Crashed {
                        reason,
                        message: None,
                        attempt: 1,
                    })
                }
                Err(Ok(error)) => Err(WorkerError::Unreachable(error)),
            }
        }))
    }

    fn detach(&mut self, detach: Detach) -> Answer<C, D, DetachedWorker> {
        if let Some(error) = self.unavailable() {
            return answer(Err(error));
        }
        let Some(session) = self.link.session() else {
            return answer(Err(WorkerError::Unsupported { what: "Detach" }));
        };
        if session.is_detached() {
            return answer(session.handle::<C>().ok_or(NOT_LISTENING));
        }
        if matches!(&self.link, Link::Stream(link) if link.listening.is_some()) {
            return answer(Err(UNDER_WAY));
        }
        let idle_timeout_ms = detach
            .idle_timeout
            .map(|idle| u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        let confirmed = self.confirmation(Header::Detach { idle_timeout_ms }, "Detach");
        Box::pin(confirmed.map(|confirmed, worker: &mut Self, _| {
            confirmed?;
            let Link::Stream(link) = &mut worker.link else {
                return Err(worker.unavailable().unwrap_or(WorkerError::Closed));
            };
            if let Some(process) = link.process_mut() {
                process.detach();
            }
            let Some(session) = link.session.as_mut() else {
                return Err(WorkerError::Unsupported { what: "Detach" });
            };
            session.detach();
            tracing::info!(
                contract = C::NAME,
                pid = session.pid(),
                "detached the worker"
            );
            session.handle::<C>().ok_or(NOT_LISTENING)
        }))
    }
}

impl<C: Contract> Worker<C, ChildProcess> {
    /// Attaches to a detached worker, from any process of the user who
    /// detached it, with default [`WorkerOptions`]; the proxy it answers
    /// is like one from [`spawn`](Worker::spawn), with two differences:
    /// the worker is not this host's child, so its exit status is not
    /// known (a crash reads `connection lost`), and a crashed attached
    /// worker is not restarted (this host does not know how it was
    /// started): its requests fail `Crashed` from then on.
    ///
    /// Must be called inside an actix System.
    ///
    /// # Errors
    /// An [`AttachError`] saying why: the handle is for another contract
    /// ([`AttachError::ContractMismatch`], checked before connecting), the
    /// worker is gone ([`AttachError::Gone`]; its leftover directory is
    /// removed), the token is wrong, another host is attached, or the
    /// handshake failed or timed out.
    ///
    /// # Examples
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # isolated_workers::contract! { Calc { Ping => () } }
    /// use isolated_workers::driver::child_process::DetachedWorker;
    /// use isolated_workers::Worker;
    /// # async fn run(json: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let handle: DetachedWorker = serde_json::from_str(json)?;
    /// let worker = Worker::<Calc>::attach(&handle).await?;
    /// worker.send(Ping).await??;
    /// # Ok(()) }
    /// ```
    pub async fn attach(handle: &DetachedWorker) -> Result<Addr<Self>, AttachError> {
        Self::attach_with(handle, WorkerOptions::default()).await
    }

    /// [`attach`](Self::attach) with explicit options.
    ///
    /// # Errors
    /// As [`attach`](Self::attach).
    pub async fn attach_with(
        handle: &DetachedWorker,
        options: WorkerOptions,
    ) -> Result<Addr<Self>, AttachError> {
        let (session, stream) = handle.connect::<C>(options.startup_timeout).await?;
        let process = ProcessHandle::adopt(handle.pid()).map_err(|e| AttachError::Gone {
            pid: handle.pid(),
            detail: e.to_string(),
        })?;
        tracing::info!(
            contract = C::NAME,
            pid = handle.pid(),
            "attached to a detached worker"
        );
        let connection = Connection::child_stream(stream, process, session);
        Ok(Self::start(connection, options, None))
    }
}
