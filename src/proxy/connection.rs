//! A child worker's connection, apart from its life: [`Disconnect`] and
//! [`Reconnect`] close and restore the connection while the worker keeps
//! running and keeps its state; [`Detach`] lets the worker outlive the host,
//! and [`Worker::attach`] connects a later process to it. Accepted only by
//! workers whose driver has the capability ([`CanReconnect`],
//! [`CanDetach`]), which only [`ChildProcess`] has.

use std::time::Duration;

use actix::prelude::*;

use tokio::sync::oneshot;

use super::phase::Phase;
use super::{Accepted, Link, Worker};
use crate::config::WorkerOptions;
use crate::contract::Contract;
use crate::driver::process::{Ended, EXIT_STATUS_WAIT};
use crate::driver::{CanDetach, CanReconnect, ChildProcess, Connection, Driver, ProcessHandle};
use crate::error::Crash;
use crate::error::{AttachError, ConnectionError, CrashReason, WorkerError};
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
/// [`Status`](super::Status) says [`WorkerState::Disconnected`](super::WorkerState::Disconnected). A worker
/// that dies meanwhile is noticed: the state becomes `Crashed`.
///
/// Disconnecting an already disconnected worker does nothing.
///
/// # Errors
/// A [`ConnectionError`]: [`Closed`](ConnectionError::Closed),
/// [`Crashed`](ConnectionError::Crashed) or
/// [`GaveUp`](ConnectionError::GaveUp) if the worker is not running (or
/// dies before it confirms); [`NotConfirmed`](ConnectionError::NotConfirmed)
/// if it does not confirm within [`WorkerOptions::startup_timeout`] (the
/// connection is then kept); [`UnderWay`](ConnectionError::UnderWay) while
/// another `Disconnect` or [`Detach`] waits for its confirmation.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), ConnectionError>")]
pub struct Disconnect;

/// Connects again to the worker [`Disconnect`] left running: a fresh
/// connection to the socket the worker listens on, and a handshake (the
/// worker's secret presented; its uid and pid checked, as for
/// [`Worker::attach`]), and the worker's actor as it was. Accepted by workers whose
/// driver [`CanReconnect`]. Reconnecting a connected worker does nothing.
///
/// # Errors
/// [`ConnectionError::Crashed`] if the worker died while disconnected:
/// the state becomes `Crashed`, and, as after any crash, the next request
/// starts a fresh worker (which does not have the old one's state).
/// [`ConnectionError::Unreachable`] if the worker could not be reached for
/// another reason (the worker stays disconnected).
/// [`Closed`](ConnectionError::Closed) or
/// [`GaveUp`](ConnectionError::GaveUp) if the worker is not running.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), ConnectionError>")]
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
/// [`ConnectionError::Disconnected`] while disconnected (reconnect
/// first); [`ConnectionError::NotListening`] if the worker confirmed
/// without saying where it waits for its host; otherwise as for
/// [`Disconnect`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<DetachedWorker, ConnectionError>")]
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
    pub(super) process: ProcessHandle,
    pub(super) session: Session,
    /// Notices the process's death while parked; cancelled on reconnect.
    pub(super) watcher: Option<SpawnHandle>,
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
    type Response = ResponseActFuture<Worker<C, D>, Result<(), ConnectionError>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        worker.disconnect()
    }
}

impl<C: Contract, D: Driver<C> + CanReconnect> Accepted<C, D> for Reconnect {
    type Response = AtomicResponse<Worker<C, D>, Result<(), ConnectionError>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        AtomicResponse::new(worker.reconnect())
    }
}

impl<C: Contract, D: Driver<C> + CanDetach> Accepted<C, D> for Detach {
    type Response = ResponseActFuture<Worker<C, D>, Result<DetachedWorker, ConnectionError>>;

    fn handle(self, worker: &mut Worker<C, D>, _: &mut Context<Worker<C, D>>) -> Self::Response {
        worker.detach(self)
    }
}

/// The answer of a connection command, once the proxy has it.
type Answer<C, D, T> = ResponseActFuture<Worker<C, D>, Result<T, ConnectionError>>;

/// An answer known at once.
fn answer<C: Contract, D: Driver<C>, T: 'static>(
    result: Result<T, ConnectionError>,
) -> Answer<C, D, T> {
    Box::pin(fut::ready(result))
}

impl<C: Contract, D: Driver<C>> Worker<C, D> {
    /// Why a connection command cannot be carried out in the proxy's
    /// state, if it cannot: the worker is closed, crashed, gave up, or is
    /// disconnected. What a request would get, said as a command's error.
    fn not_connected(&self) -> Option<ConnectionError> {
        Some(match self.unavailable()? {
            WorkerError::Crashed {
                reason, message, ..
            } => ConnectionError::Crashed { reason, message },
            WorkerError::GaveUp {
                restarts,
                within,
                last,
            } => ConnectionError::GaveUp {
                restarts,
                within,
                last,
            },
            WorkerError::Disconnected => ConnectionError::Disconnected,
            // `Closed`, the one other error of an unavailable worker.
            _ => ConnectionError::Closed,
        })
    }

    fn disconnect(&mut self) -> Answer<C, D, ()> {
        if matches!(self.phase, Phase::Parked(_)) {
            return answer(Ok(()));
        }
        if self.phase.is_asking() {
            return answer(Err(ConnectionError::UnderWay));
        }
        if let Some(error) = self.not_connected() {
            return answer(Err(error));
        }
        let Some(Link::Stream(link)) = self.phase.serving_mut() else {
            return answer(Err(ConnectionError::NoProcess));
        };
        if link.session.is_none() {
            return answer(Err(ConnectionError::NoProcess));
        }
        // From now on requests fail at once, as they will once parked.
        link.fail_all(|| WorkerError::Disconnected);
        let confirmed = self.confirmation(Header::Disconnect, true);
        Box::pin(confirmed.map(|confirmed, worker: &mut Self, ctx| {
            confirmed?;
            worker.park(ctx);
            Ok(())
        }))
    }

    /// Sends `header` (`Disconnect` when `hanging_up`, else `Detach`) and
    /// waits for the worker's `Listening`. The phase is `Asking` meanwhile;
    /// `Serving` again once answered, or if the worker does not answer in
    /// time (the connection is then kept).
    fn confirmation(
        &mut self,
        header: Header,
        hanging_up: bool,
    ) -> impl ActorFuture<Self, Output = Result<(), ConnectionError>> + 'static {
        let within = self.options.startup_timeout;
        let (told, listening) = oneshot::channel();
        if let Some(Link::Stream(link)) = self.phase.serving_mut() {
            link.ask_to_listen(header);
            self.phase.ask(told, hanging_up);
        }
        async move { tokio::time::timeout(within, listening).await }
            .into_actor(self)
            .map(move |answered, worker, _| match answered {
                Ok(Ok(())) => Ok(()),
                // Not in time: serve on.
                Err(_) => {
                    worker.phase.answered(false);
                    Err(ConnectionError::NotConfirmed { after: within })
                }
                // The connection was lost first (or it was never asked).
                Ok(Err(_)) => Err(worker.not_connected().unwrap_or(ConnectionError::Crashed {
                    reason: CrashReason::ConnectionLost,
                    message: None,
                })),
            })
    }

    /// Hangs up on a worker that confirmed it will wait, keeping the
    /// process and session.
    fn park(&mut self, ctx: &mut Context<Self>) {
        let mut parked_pid = None;
        self.phase.park(|link| {
            let Link::Stream(link) = link else {
                return None;
            };
            let (Some(process), Some(session)) = link.hang_up() else {
                return None;
            };
            parked_pid = Some(process.pid());
            Some(Parked {
                process,
                session,
                watcher: None,
            })
        });
        let Some(pid) = parked_pid else {
            return;
        };
        let Some(parked) = self.phase.parked() else {
            return;
        };
        let ended = parked.process.ended();
        let watcher = ctx.spawn(ended.into_actor(self).map(move |ended, worker, _| {
            worker.parked_worker_ended(pid, ended);
        }));
        if let Phase::Parked(parked) = &mut self.phase {
            parked.watcher = Some(watcher);
        }
        tracing::info!(contract = C::NAME, pid, "disconnected from the worker");
    }

    fn parked_worker_ended(&mut self, pid: u32, ended: Option<Ended>) {
        if self.phase.parked().is_none_or(|parked| parked.pid() != pid) {
            return;
        }
        let reason = ended.map_or(CrashReason::ConnectionLost, Ended::reason);
        tracing::warn!(contract = C::NAME, pid, %reason, "disconnected worker died");
        self.crashed(Crash {
            reason,
            message: None,
        });
    }

    fn reconnect(&mut self) -> Answer<C, D, ()> {
        if self.phase.is_serving() {
            return answer(Ok(()));
        }
        let Some(parked) = self.phase.parked() else {
            return answer(Err(self.not_connected().unwrap_or(ConnectionError::Closed)));
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
            if worker.phase.parked().is_none() {
                return Err(worker.not_connected().unwrap_or(ConnectionError::Closed));
            }
            match attempt {
                Ok(stream) => {
                    let Some(parked) = worker.phase.unpark() else {
                        unreachable!("parked, as checked above");
                    };
                    if let Some(watcher) = parked.watcher {
                        ctx.cancel_future(watcher);
                    }
                    let connection =
                        Connection::child_stream(stream, parked.process, parked.session);
                    let (options, tally) = (&worker.options, &worker.tally);
                    let link = Link::start(connection, options, tally, &worker.events, ctx);
                    worker.phase.serve(link);
                    tracing::info!(contract = C::NAME, "reconnected to the worker");
                    Ok(())
                }
                Err(Err(ended)) => {
                    let reason = ended.map_or(CrashReason::ConnectionLost, Ended::reason);
                    tracing::warn!(contract = C::NAME, %reason, "the disconnected worker is gone");
                    worker.crashed(Crash {
                        reason: reason.clone(),
                        message: None,
                    });
                    Err(ConnectionError::Crashed {
                        reason,
                        message: None,
                    })
                }
                Err(Ok(error)) => Err(ConnectionError::Unreachable(error)),
            }
        }))
    }

    fn detach(&mut self, detach: Detach) -> Answer<C, D, DetachedWorker> {
        if self.phase.is_asking() {
            return answer(Err(ConnectionError::UnderWay));
        }
        if let Some(error) = self.not_connected() {
            return answer(Err(error));
        }
        let Some(session) = self.phase.link().and_then(Link::session) else {
            return answer(Err(ConnectionError::NoProcess));
        };
        if session.is_detached() {
            return answer(session.handle::<C>().ok_or(ConnectionError::NotListening));
        }
        let idle_timeout_ms = detach
            .idle_timeout
            .map(|idle| u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        let confirmed = self.confirmation(Header::Detach { idle_timeout_ms }, false);
        Box::pin(confirmed.map(|confirmed, worker: &mut Self, _| {
            confirmed?;
            let Some(Link::Stream(link)) = worker.phase.serving_mut() else {
                return Err(worker.not_connected().unwrap_or(ConnectionError::Closed));
            };
            if let Some(process) = link.process_mut() {
                process.detach();
            }
            let Some(session) = link.session.as_mut() else {
                return Err(ConnectionError::NoProcess);
            };
            session.detach();
            tracing::info!(
                contract = C::NAME,
                pid = session.pid(),
                "detached the worker"
            );
            session.handle::<C>().ok_or(ConnectionError::NotListening)
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
