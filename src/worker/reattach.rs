//! The worker's side of its host connection over time: which host it
//! serves, what it does when that host's connection ends, and how a host
//! reaches it again. A worker process that was told its host will come
//! back (`Disconnect`), or that outlives its host (`Detach`), parks when
//! the connection ends, keeping its actor, and serves the next host that
//! attaches on the socket it listens on (the accept loop is
//! [`socket::attach`](crate::socket::attach)). A worker is spawned over an
//! inherited socketpair: it listens only once asked to.
//!
//! # States
//!
//! [`Host`] is the connection's state; its transitions are its methods.
//!
//! | from | event | to |
//! |---|---|---|
//! | `Parked` | a host connects (the spawning one, or one that attached) | `Serving` (`Unproven` if it attached) |
//! | `Unproven` | its first frame | `Serving` |
//! | `Serving` | `Disconnect` | `WillReturn` |
//! | `Unproven`, `WillReturn` | the connection ends | `Parked` |
//! | `Serving` | the connection ends, the worker detached | `Parked` (until its idle timeout) |
//! | `Serving` | the connection ends, otherwise | `Stopping` |
//! | `WillReturn` | a host attaches | `Unproven` (the new host) |
//! | `Serving`, `Unproven` | a host attaches | unchanged, the newcomer refused as busy (unless the connection's end is read within [`BUSY_RECHECK`]) |
//! | `Parked` | the idle timeout passes | `Stopping` |
//! | any | `Shutdown`, SIGTERM, a panic, a protocol error | `Stopping` (the connection, if any, carries the last frames) |
//! | `Stopping` | the connection ends | `Stopping` |
//!
//! A detached worker that parks from `Unproven` or `WillReturn` waits
//! until its idle timeout too. A worker served in-process never parks: it
//! stops when its one connection ends.

use std::time::Duration;

use actix::prelude::*;

use super::exit::{Ending, PROTOCOL_EXIT_CODE};
use super::server::{HostConnection, Server};
use crate::socket::attach::{refuse_busy, Listening, NewHost};
use crate::socket::directory::attach_directory;
use crate::wire::envelope::{AttachPoint, Header};
use crate::wire::frame::Frame;
use crate::wire::stream::split;
use crate::wire::Serializer;

/// How long an attach finding another host served waits for that host's
/// connection to end before it is refused as busy.
const BUSY_RECHECK: Duration = Duration::from_millis(100);

/// The worker's host connection. Generic over the connection only so that
/// its transitions can be tested without one.
#[derive(Debug)]
pub(crate) enum Host<L = HostConnection> {
    /// Serving the host on this connection.
    Serving(L),
    /// Serving a host that attached and has not said anything yet: it may
    /// have given up before the worker took its connection in (a
    /// `Reconnect` that timed out while the worker was busy), so its end
    /// parks the worker again.
    Unproven(L),
    /// Serving a host that said it will hang up and come back
    /// (`Disconnect`).
    WillReturn(L),
    /// No host: waiting for one to attach. A detached worker's idle
    /// timer, if it has an idle timeout, stops it.
    Parked { idle_timer: Option<SpawnHandle> },
    /// Asked to stop; the connection, while it lasts, carries the last
    /// frames.
    Stopping(Option<L>),
}

impl<L> Host<L> {
    /// No host yet.
    pub(crate) fn new() -> Self {
        Host::Parked { idle_timer: None }
    }

    /// The connection to the host being served, if any.
    #[inline]
    pub(crate) fn link(&self) -> Option<&L> {
        match self {
            Host::Serving(link) | Host::Unproven(link) | Host::WillReturn(link) => Some(link),
            Host::Stopping(link) => link.as_ref(),
            Host::Parked { .. } => None,
        }
    }

    /// The connection to the host being served, if any.
    #[inline]
    pub(crate) fn link_mut(&mut self) -> Option<&mut L> {
        match self {
            Host::Serving(link) | Host::Unproven(link) | Host::WillReturn(link) => Some(link),
            Host::Stopping(link) => link.as_mut(),
            Host::Parked { .. } => None,
        }
    }

    /// Whether the worker was asked to stop.
    pub(crate) fn is_stopping(&self) -> bool {
        matches!(self, Host::Stopping(_))
    }

    /// Serves the host on `link`; `attached` for one that attached (rather
    /// than spawned the worker with it). Returns the idle timer to cancel.
    fn serve(&mut self, link: L, attached: bool) -> Option<SpawnHandle> {
        let idle_timer = match self {
            Host::Parked { idle_timer } => idle_timer.take(),
            _ => {
                debug_assert!(false, "a second host served at once");
                None
            }
        };
        *self = match attached {
            true => Host::Unproven(link),
            false => Host::Serving(link),
        };
        idle_timer
    }

    /// The host said something: it is the worker's host now.
    // Inlined, and only a look unless the host is unproven: this runs for
    // every frame (out of line, it cost each request 15 instructions).
    #[inline]
    pub(crate) fn heard(&mut self) {
        if matches!(self, Host::Unproven(_)) {
            self.proven();
        }
    }

    /// An unproven host spoke.
    #[cold]
    fn proven(&mut self) {
        *self = match std::mem::replace(self, Host::new()) {
            Host::Unproven(link) => Host::Serving(link),
            other => other,
        };
    }

    /// `Disconnect`: the host will hang up and come back.
    fn will_return(&mut self) {
        *self = match std::mem::replace(self, Host::new()) {
            Host::Serving(link) => Host::WillReturn(link),
            other => other,
        };
    }

    /// Whether the worker waits for a host once this connection ends,
    /// whatever its [`Ending`].
    fn expects_return(&self) -> bool {
        matches!(self, Host::Unproven(_) | Host::WillReturn(_))
    }

    /// Gives up the connection: the worker parks, or goes on stopping.
    /// Returns the connection to close.
    fn hang_up(&mut self) -> Option<L> {
        match std::mem::replace(self, Host::new()) {
            Host::Serving(link) | Host::Unproven(link) | Host::WillReturn(link) => Some(link),
            Host::Parked { idle_timer } => {
                *self = Host::Parked { idle_timer };
                None
            }
            Host::Stopping(link) => {
                *self = Host::Stopping(None);
                link
            }
        }
    }

    /// A parked worker stops when `timer` fires.
    fn park_until(&mut self, timer: SpawnHandle) {
        if let Host::Parked { idle_timer } = self {
            *idle_timer = Some(timer);
        }
    }

    /// The worker was asked to stop; the connection, if any, stays.
    pub(crate) fn stop(&mut self) {
        let link = match std::mem::replace(self, Host::new()) {
            Host::Serving(link) | Host::Unproven(link) | Host::WillReturn(link) => Some(link),
            Host::Stopping(link) => link,
            Host::Parked { .. } => None,
        };
        *self = Host::Stopping(link);
    }
}

/// What a worker does once its host's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Afterwards {
    /// Stop: nobody is coming.
    Stop,
    /// Park until a host attaches.
    Wait,
    /// Park until a host attaches, this long at most.
    WaitAtMost(Duration),
}

/// What a worker of kind `ending` does once its host's connection ended;
/// `expected_back` if that host (or one before it) will return.
fn afterwards(ending: Ending, expected_back: bool) -> Afterwards {
    match ending {
        Ending::InProcess => Afterwards::Stop,
        Ending::Process { .. } if expected_back => Afterwards::Wait,
        Ending::Process { .. } => Afterwards::Stop,
        Ending::Detached {
            idle_timeout: None, ..
        } => Afterwards::Wait,
        Ending::Detached {
            idle_timeout: Some(idle),
            ..
        } => Afterwards::WaitAtMost(idle),
    }
}

/// Where a worker process listens for its hosts, once asked to.
#[derive(Default)]
pub(crate) struct Listener {
    /// Where and how hosts attach, once listening.
    listening: Option<Listening>,
}

impl Listener {
    /// Starts listening for hosts, unless already listening. Returns where
    /// hosts attach, and, the first time, the stream of hosts that
    /// presented the secret.
    fn listen(
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

/// What the host asked when it said it would leave.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leaving {
    /// It will hang up and come back.
    Disconnect,
    /// The worker is to outlive it.
    Detach { idle_timeout_ms: Option<u64> },
}

impl<A: Actor, S: Serializer> Server<A, S> {
    /// The host's connection ended (or broke): park if a host is expected
    /// back, or the worker outlives its host; else stop serving.
    pub(super) fn connection_ended(&mut self, ctx: &mut Context<Self>) {
        let expected_back = self.host.expects_return();
        // Nothing more can be written to a connection that ended: exiting
        // must not wait for its writer to flush.
        self.hang_up();
        if self.host.is_stopping() {
            return;
        }
        match afterwards(self.ending, expected_back) {
            Afterwards::Stop => self.stop_serving(ctx),
            // Waits for the host that said it would return (whose own
            // death its parent-death signal reports).
            Afterwards::Wait => {}
            Afterwards::WaitAtMost(idle) => {
                let timer = ctx.run_later(idle, |server, ctx| server.idle_timer_fired(ctx));
                self.host.park_until(timer);
            }
        }
    }

    /// Gives up the current connection, dropping what it had running.
    pub(super) fn hang_up(&mut self) {
        if let Some(host) = self.host.hang_up() {
            let mut writer = host.writer;
            writer.sever();
        }
        self.drop_requests();
    }

    fn idle_timer_fired(&mut self, ctx: &mut Context<Self>) {
        if let Host::Parked { .. } = self.host {
            self.stop_serving(ctx);
        }
    }

    /// Serves the host on `link`, cancelling the idle timer of a parked
    /// worker.
    pub(super) fn take_host(
        &mut self,
        link: HostConnection,
        attached: bool,
        ctx: &mut Context<Self>,
    ) {
        if let Some(timer) = self.host.serve(link, attached) {
            ctx.cancel_future(timer);
        }
    }

    /// A host presented the token: serve it, unless one is served already.
    fn attach(&mut self, NewHost(stream): NewHost, ctx: &mut Context<Self>) {
        match self.host {
            Host::Stopping(_) => return, // dropping the stream hangs up
            // The host served may have gone already, its end not yet read
            // here: look again shortly before refusing.
            Host::Serving(_) | Host::Unproven(_) => {
                return self.attach_unless_busy(NewHost(stream), ctx)
            }
            // The host said it would hang up and come back, and it is back
            // before its old connection's end was read here.
            Host::WillReturn(_) => self.hang_up(),
            Host::Parked { .. } => {}
        }
        match split(stream) {
            Ok((reader, writer)) => self.serve(reader.into(), writer.into(), true, ctx),
            Err(e) => eprintln!("isolated-workers: could not take over the connection: {e}"),
        }
    }

    fn attach_unless_busy(&mut self, host: NewHost, ctx: &mut Context<Self>) {
        ctx.run_later(BUSY_RECHECK, move |server, ctx| {
            if server.host.link().is_some() {
                refuse_busy(host.0);
            } else {
                server.attach(host, ctx);
            }
        });
    }

    /// `Disconnect` or `Detach`: listen for the host's return, then say so.
    pub(super) fn listen_for_hosts(&mut self, asked: Leaving, ctx: &mut Context<Self>) {
        if !self.ending.is_process() {
            eprintln!("isolated-workers: `{asked:?}` needs a worker process");
            return self.exit(PROTOCOL_EXIT_CODE, ctx);
        }
        match asked {
            Leaving::Detach { idle_timeout_ms } => {
                if let Err(e) = crate::socket::detach::leave_host() {
                    eprintln!("isolated-workers: could not detach from the host: {e}");
                    return self.exit(PROTOCOL_EXIT_CODE, ctx);
                }
                self.ending = self
                    .ending
                    .detached(idle_timeout_ms.map(Duration::from_millis));
            }
            Leaving::Disconnect => {
                self.host.will_return();
                // The host has failed the requests in flight.
                self.drop_requests();
            }
        }
        match self.listener.listen() {
            Ok((point, hosts)) => {
                if let Some(hosts) = hosts {
                    ctx.add_stream(hosts);
                }
                // Hosts that attach are greeted with the secret too: it
                // proves to them who they reached.
                self.hello.token = point.token.clone();
                self.write(Frame::bare(Header::Listening(point)));
            }
            Err(e) => {
                eprintln!("isolated-workers: could not listen for the host: {e}");
                self.exit(PROTOCOL_EXIT_CODE, ctx);
            }
        }
    }
}

impl<A: Actor, S: Serializer> StreamHandler<NewHost> for Server<A, S> {
    fn handle(&mut self, host: NewHost, ctx: &mut Context<Self>) {
        self.attach(host, ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);
    const IDLE: Duration = Duration::from_secs(5);

    /// A host connection, as far as the states care: its number.
    type Test = Host<u32>;

    fn serving(attached: bool) -> Test {
        let mut host = Test::new();
        assert_eq!(host.serve(1, attached), None);
        host
    }

    #[test]
    fn a_spawning_host_is_served_at_once_an_attaching_one_once_it_speaks() {
        assert!(matches!(serving(false), Host::Serving(1)));
        let mut attached = serving(true);
        assert!(matches!(attached, Host::Unproven(1)));
        assert!(attached.expects_return(), "silent: it may have gone");
        attached.heard();
        assert!(matches!(attached, Host::Serving(1)));
        assert!(!attached.expects_return());
    }

    #[test]
    fn disconnect_makes_the_end_of_the_connection_park_the_worker() {
        let mut host = serving(false);
        host.will_return();
        assert!(matches!(host, Host::WillReturn(1)));
        assert!(host.expects_return());
        assert_eq!(host.hang_up(), Some(1));
        assert!(matches!(host, Host::Parked { idle_timer: None }));
        assert_eq!(host.link(), None);
    }

    #[test]
    fn a_parked_worker_cancels_its_idle_timer_for_the_next_host() {
        let mut host = serving(false);
        host.hang_up();
        let timer = SpawnHandle::default().next();
        host.park_until(timer);
        assert_eq!(host.serve(2, true), Some(timer));
        assert_eq!(host.link(), Some(&2));
    }

    #[test]
    fn stopping_keeps_the_connection_for_the_last_frames_and_then_stays() {
        let mut host = serving(false);
        host.stop();
        assert!(host.is_stopping());
        assert_eq!(host.link(), Some(&1));
        // A `Disconnect` read while stopping changes nothing.
        host.will_return();
        assert!(matches!(host, Host::Stopping(Some(1))));
        assert_eq!(host.hang_up(), Some(1));
        assert!(matches!(host, Host::Stopping(None)));
        host.stop();
        assert!(matches!(host, Host::Stopping(None)));

        let mut parked = Test::new();
        parked.park_until(SpawnHandle::default());
        parked.stop();
        assert!(matches!(parked, Host::Stopping(None)));
    }

    #[test]
    fn after_the_connection_ends_only_an_expected_or_detached_worker_waits() {
        let process = Ending::Process { grace: GRACE };
        let detached = process.detached(Some(IDLE));
        let for_ever = process.detached(None);
        for expected_back in [false, true] {
            assert_eq!(
                afterwards(Ending::InProcess, expected_back),
                Afterwards::Stop
            );
            assert_eq!(
                afterwards(detached, expected_back),
                Afterwards::WaitAtMost(IDLE)
            );
            assert_eq!(afterwards(for_ever, expected_back), Afterwards::Wait);
        }
        assert_eq!(afterwards(process, false), Afterwards::Stop);
        assert_eq!(afterwards(process, true), Afterwards::Wait);
    }
}
