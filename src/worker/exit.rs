//! How a worker ends. A worker process stops when its host goes (unless
//! it parks to wait for one, see [`reattach`](super::reattach)), on
//! `Shutdown`, on SIGTERM (also its parent-death signal), or after
//! reporting a panic: its actor is dropped so that actix stops it, the
//! last frames are flushed, and the System stops with the exit code. The
//! [`watchdog`] ends a process that overstays its grace period. A worker
//! served in-process (the worker end of a custom stream driver) stops only
//! its server, at once.

use std::time::Duration;

use actix::prelude::*;

use super::server::Server;
use super::watchdog;
use crate::panic;
use crate::wire::envelope::Header;
use crate::wire::frame::Frame;
use crate::wire::Serializer;

/// Exit code of a worker that reports a panic (Rust's own panic code).
const PANIC_EXIT_CODE: i32 = 101;
/// Exit code of a worker whose host broke the protocol.
pub(super) const PROTOCOL_EXIT_CODE: i32 = 2;
/// Exit code after a second SIGTERM (128 + 15, as a shell reports it).
const TERMINATED_EXIT_CODE: i32 = 143;

/// What kind of worker this is, as far as its end goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Served in-process: its end stops only its server, at once.
    InProcess,
    /// A worker process that stops when its host goes (unless the host
    /// said it would come back); its actor gets `grace` to stop before the
    /// process exits anyway.
    Process { grace: Duration },
    /// A worker process that outlives its host (`Detach`): when the host
    /// goes, it waits for another, `idle_timeout` at most (`None`: for
    /// ever).
    Detached {
        grace: Duration,
        idle_timeout: Option<Duration>,
    },
}

impl Ending {
    /// How long the actor gets to stop; `None` in-process, where there is
    /// no process to exit.
    pub(crate) fn grace(self) -> Option<Duration> {
        match self {
            Ending::InProcess => None,
            Ending::Process { grace } | Ending::Detached { grace, .. } => Some(grace),
        }
    }

    /// Whether this worker is a process of its own.
    pub(crate) fn is_process(self) -> bool {
        self != Ending::InProcess
    }

    /// The same worker once detached from its host: from now on it
    /// outlives it. (A worker served in-process has no host to leave.)
    pub(super) fn detached(self, idle_timeout: Option<Duration>) -> Self {
        match self.grace() {
            Some(grace) => Ending::Detached {
                grace,
                idle_timeout,
            },
            None => self,
        }
    }
}

impl<A: Actor, S: Serializer> Server<A, S> {
    /// The user's actor has stopped: after a panic (report it, exit 101),
    /// because it was asked to (exit), or on its own (exit too: there is
    /// nothing left to serve).
    pub(crate) fn actor_ended(&mut self, panicked: bool, ctx: &mut Context<Self>) {
        if panicked && !self.host.is_stopping() {
            let message = panic::take_message(std::thread::current().id())
                .unwrap_or_else(|| "the worker's actor panicked".into());
            self.write(Frame::bare(Header::Panicked { message }));
            self.exit(PANIC_EXIT_CODE, ctx);
        } else {
            self.exit(self.exit_code, ctx);
        }
    }

    /// Stops serving gracefully: drops the actor so that actix stops it
    /// (its hooks run), then exits once it has stopped, or after the grace
    /// period at the latest.
    pub(super) fn stop_serving(&mut self, ctx: &mut Context<Self>) {
        if self.host.is_stopping() {
            return;
        }
        self.host.stop();
        if self.ending.is_process() {
            watchdog::arm();
        }
        self.drop_requests();
        self.actor = None;
        match self.ending.grace() {
            Some(grace) => {
                ctx.run_later(grace, |server, ctx| server.exit(server.exit_code, ctx));
            }
            None => self.exit(0, ctx),
        }
    }

    /// Flushes what is written, then stops the worker with `code`.
    pub(super) fn exit(&mut self, code: i32, ctx: &mut Context<Self>) {
        self.exit_code = code;
        self.host.stop();
        if self.ending.is_process() {
            watchdog::arm();
        }
        self.actor = None;
        // Nothing more is read; in-flight handlers are dropped.
        self.drop_requests();
        match self.host.link_mut() {
            // The server stops once the writer has flushed (`finished`).
            Some(host) => {
                // What the actor emitted up to its end goes out first.
                while let Some(event) = self.outbox.take() {
                    host.writer.write(event);
                }
                // Closing wakes the writer, which then finishes.
                host.writer.close();
            }
            None => ctx.stop(),
        }
    }

    /// Stops on SIGTERM (also the parent-death signal: the host is gone)
    /// like on Shutdown; a second SIGTERM exits at once. (Should the
    /// thread be too busy to see it, the [`watchdog`] ends the process.)
    ///
    /// Awaited in a task of its own that messages the server, not as a
    /// stream of the server's context: actix polls every stream of a
    /// context each time the context wakes, and this one would cost every
    /// request's wake-up hundreds of instructions.
    ///
    /// SIGINT, on the other hand, is left to the host: a terminal's Ctrl-C
    /// reaches its whole foreground process group, the host's workers
    /// included, and a worker that died of it would be a crash to the host
    /// (restarts while an actix-web service shuts down). The host closes its
    /// workers as it stops, or dies, and then the parent-death signal ends
    /// them. (A signal tokio handles keeps its handler for the process's
    /// lifetime, so the stream need not be kept.)
    pub(super) fn on_terminate_signal(ctx: &mut Context<Self>) {
        use actix_rt::signal::unix::{signal, SignalKind};
        let _ = signal(SignalKind::interrupt());
        let Ok(mut terminate) = signal(SignalKind::terminate()) else {
            return; // the default action (exit) stays in place
        };
        let server = ctx.address().downgrade();
        actix_rt::spawn(async move {
            while terminate.recv().await.is_some() {
                let Some(server) = server.upgrade() else {
                    return;
                };
                server.do_send(TerminateSignal);
            }
        });
    }
}

/// A SIGTERM arrived.
struct TerminateSignal;

impl Message for TerminateSignal {
    type Result = ();
}

impl<A: Actor, S: Serializer> Handler<TerminateSignal> for Server<A, S> {
    type Result = ();

    fn handle(&mut self, _: TerminateSignal, ctx: &mut Context<Self>) {
        if self.host.is_stopping() {
            self.exit(TERMINATED_EXIT_CODE, ctx);
        } else {
            self.stop_serving(ctx);
        }
    }
}

impl<A: Actor, S: Serializer> Actor for Server<A, S> {
    type Context = Context<Self>;

    /// A worker process's server is its System's reason to run: its end
    /// ends the process, with its exit code.
    fn stopped(&mut self, _: &mut Self::Context) {
        if self.ending.is_process() {
            System::current().stop_with_code(self.exit_code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(2);

    #[test]
    fn only_a_process_has_a_grace_period() {
        assert_eq!(Ending::InProcess.grace(), None);
        assert_eq!(Ending::Process { grace: GRACE }.grace(), Some(GRACE));
        let detached = Ending::Process { grace: GRACE }.detached(None);
        assert_eq!(detached.grace(), Some(GRACE));
        assert!(detached.is_process() && !Ending::InProcess.is_process());
    }

    #[test]
    fn detaching_keeps_the_grace_and_takes_the_latest_idle_timeout() {
        let idle = Some(Duration::from_secs(9));
        let once = Ending::Process { grace: GRACE }.detached(None);
        assert_eq!(
            once.detached(idle),
            Ending::Detached {
                grace: GRACE,
                idle_timeout: idle
            }
        );
        assert_eq!(Ending::InProcess.detached(idle), Ending::InProcess);
    }
}
