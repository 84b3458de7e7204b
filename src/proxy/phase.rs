//! Where a proxy is in its worker's life: one enum, [`Phase`], that carries
//! what each phase needs (the link to a live worker, the crash that ended
//! one, the restart under way), and the transitions between phases, all in
//! this file. The message handlers (`request.rs`, `close.rs`,
//! `connection.rs`, `restart.rs`, `inbound.rs`) ask for transitions; none of
//! them sets a phase by hand. The public [`WorkerState`] is derived from it.
//!
//! # Transitions
//!
//! ```text
//!  phase        state         left by                         to
//!  ───────────  ────────────  ──────────────────────────────  ───────────────────
//!  Serving      Running       Disconnect / Detach sent        Asking
//!                             the worker died                 Crashed
//!                             Close, Drain                    Closing
//!  Asking       Running       the worker listens, or does     Serving
//!                             not confirm in time
//!                             Disconnect confirmed (park)     Parked
//!                             the worker died                 Crashed
//!                             Close, Drain                    Closing
//!  Parked       Disconnected  Reconnect                       Serving
//!                             the parked worker died          Crashed
//!                             Close, Drain                    Closing
//!  Crashed      Crashed       a restart begins                Restarting
//!                             the restart budget is spent     GaveUp
//!                             Close, Drain                    Closing
//!  Restarting   Crashed       the fresh worker is up          Serving
//!                             it failed to start              Crashed
//!                             (Close waits for the launch to end, then acts on what it left)
//!  GaveUp       GaveUp        Close, Drain                    Closing
//!  Closing      Closing       the worker is released          Closed
//!  Closed       Closed        (final)
//!  any          —             the proxy stops (its last Addr  Closed (a crash and what
//!                             is gone, or actix restarts a    follows it stay, for the
//!                             supervised one)                 supervisor's restart)
//! ```
//!
//! What a request meets in each phase ([`Phase::refusal`]): `Serving` and
//! `Asking` for `Detach` send it on; `Asking` for `Disconnect` and `Parked`
//! refuse it `Disconnected`; `Crashed` and `Restarting` refuse it `Crashed`
//! (unless the proxy restarts the worker for it first: see
//! `Worker::needs_respawn`); `GaveUp`, `Closing` and `Closed` refuse it.
//!
//! # A request when its worker crashes (during a restart too)
//!
//! 1. The requests of a worker that crashes are sorted before the phase
//!    becomes `Crashed` (`inbound.rs`, `report_crash`, which asks the
//!    request table, `requests.rs`, `Requests::crashed`): those the dead
//!    worker never read (by its read mark) and those their `CrashPolicy`
//!    retries become retries; every other one fails `Crashed` at once. A
//!    thread worker's requests all fail `Crashed` (their messages moved
//!    into it).
//! 2. Retries travel with the restart (`restart.rs`): a supervised proxy
//!    carries them over actix's restart of the actor; any other proxy
//!    restarts at once for them. Without retries, an unsupervised proxy
//!    restarts only when the next request comes (`needs_respawn`).
//! 3. While `Restarting`, new requests wait in the mailbox
//!    (`WhileRestarting::Queue`, the default) or fail `Crashed` at once
//!    (`Reject`).
//! 4. If the fresh worker starts, the retries are sent to it (keeping
//!    their first deadline), then the waiting requests in mailbox order.
//!    If it fails to start, the phase is `Crashed` again ("restart
//!    failed"): a supervised proxy carries the retries to its next
//!    restart; any other fails them. Each restart spends the budget;
//!    once it is spent the phase is `GaveUp` and every retry and request
//!    fails `GaveUp`.
//! 5. If the fresh worker crashes in its turn, step 1 applies again: a
//!    retry's attempt counts on (`Retry { attempts }` bounds it), and a
//!    request it never read goes on without spending an attempt.
//! 6. `Close` during a restart cancels one still in its backoff (the
//!    retries fail `Crashed`), or waits for one already launching and then
//!    closes the fresh worker (its requests fail `Closed`).

use tokio::sync::oneshot;

use super::connection::Parked;
use super::status::WorkerState;
use super::Link;
use crate::error::{Crash, WorkerError};
use crate::waiters::Waiters;

/// Where the proxy is in its worker's life (see the module doc).
pub(super) enum Phase {
    /// Serving requests over the link.
    Serving(Link),
    /// `Disconnect` or `Detach` was sent; waiting for the worker to say it
    /// listens for a host. Requests go on for `Detach`; they fail at once
    /// with `Disconnected` while hanging up.
    Asking {
        /// The link, still serving (or draining, when hanging up).
        link: Link,
        /// Told when the worker says it listens; dropped if the connection
        /// is lost first.
        told: oneshot::Sender<()>,
        /// `Disconnect`, as opposed to `Detach`.
        hanging_up: bool,
    },
    /// Disconnected from a worker process that runs on.
    Parked(Parked),
    /// The worker died without being asked to.
    Crashed {
        /// How it died.
        crash: Crash,
        /// What is left of its link (the dead process and its session),
        /// until a restart or `Close` lets go of it.
        dead: Option<Link>,
    },
    /// A fresh worker is being started in place of a crashed one.
    Restarting {
        /// How the last worker died: what requests meet meanwhile.
        crash: Crash,
        /// Cuts the backoff before the launch short (`Close` does).
        cancel: Option<oneshot::Sender<()>>,
        /// Told when the launch has ended, however (`Close` and `Drain`
        /// wait for it).
        waiters: Waiters,
    },
    /// The restart budget is spent: the worker stays down.
    GaveUp {
        /// Restarts made within the restart window.
        restarts: u32,
        /// The last crash.
        last: Crash,
    },
    /// `Close` or `Drain` is under way.
    Closing(Option<Link>),
    /// The worker is gone and its resources released.
    Closed,
}

impl Phase {
    /// The public view of this phase.
    pub(super) fn state(&self) -> WorkerState {
        match self {
            Phase::Serving(_) | Phase::Asking { .. } => WorkerState::Running,
            Phase::Parked(_) => WorkerState::Disconnected,
            Phase::Crashed { crash, .. } | Phase::Restarting { crash, .. } => {
                WorkerState::Crashed {
                    reason: crash.reason.clone(),
                    message: crash.message.clone(),
                }
            }
            Phase::GaveUp { restarts, last } => WorkerState::GaveUp {
                restarts: *restarts,
                last: last.clone(),
            },
            Phase::Closing(_) => WorkerState::Closing,
            Phase::Closed => WorkerState::Closed,
        }
    }

    /// Whether requests are served (`Running`).
    pub(super) fn is_serving(&self) -> bool {
        matches!(self, Phase::Serving(_) | Phase::Asking { .. })
    }

    /// The error a request meets in this phase; `None` if it is sent on.
    /// `within` is the restart window, for `GaveUp`.
    pub(super) fn refusal(&self, within: std::time::Duration) -> Option<WorkerError> {
        match self {
            Phase::Serving(_)
            | Phase::Asking {
                hanging_up: false, ..
            } => None,
            Phase::Asking {
                hanging_up: true, ..
            }
            | Phase::Parked(_) => Some(WorkerError::Disconnected),
            Phase::Crashed { crash, .. } | Phase::Restarting { crash, .. } => Some(crash.error()),
            Phase::GaveUp { restarts, last } => Some(WorkerError::GaveUp {
                restarts: *restarts,
                within,
                last: last.clone(),
            }),
            Phase::Closing(_) | Phase::Closed => Some(WorkerError::Closed),
        }
    }

    /// The link to a live worker, if requests can be sent over it.
    pub(super) fn serving_mut(&mut self) -> Option<&mut Link> {
        match self {
            Phase::Serving(link) | Phase::Asking { link, .. } => Some(link),
            _ => None,
        }
    }

    /// The link of this phase, live or not.
    pub(super) fn link(&self) -> Option<&Link> {
        match self {
            Phase::Serving(link) | Phase::Asking { link, .. } => Some(link),
            Phase::Crashed { dead, .. } => dead.as_ref(),
            Phase::Closing(link) => link.as_ref(),
            _ => None,
        }
    }

    /// The parked worker, while disconnected.
    pub(super) fn parked(&self) -> Option<&Parked> {
        match self {
            Phase::Parked(parked) => Some(parked),
            _ => None,
        }
    }

    /// [`link`](Self::link), mutably.
    pub(super) fn link_mut(&mut self) -> Option<&mut Link> {
        match self {
            Phase::Serving(link) | Phase::Asking { link, .. } => Some(link),
            Phase::Crashed { dead, .. } => dead.as_mut(),
            Phase::Closing(link) => link.as_mut(),
            _ => None,
        }
    }

    /// A `Disconnect` or `Detach` is waiting for the worker's answer.
    pub(super) fn is_asking(&self) -> bool {
        matches!(self, Phase::Asking { .. })
    }

    /// A fresh worker is being started.
    pub(super) fn is_restarting(&self) -> bool {
        matches!(self, Phase::Restarting { .. })
    }

    // ===== transitions =====

    /// Takes the phase out, leaving `Closed` in its place for the moment
    /// the caller builds the next one.
    fn take(&mut self) -> Phase {
        std::mem::replace(self, Phase::Closed)
    }

    /// Any phase → `Serving`: a worker is up (spawned, restarted,
    /// reconnected, attached), or a `Disconnect`/`Detach` came to an end.
    pub(super) fn serve(&mut self, link: Link) {
        *self = Phase::Serving(link);
    }

    /// `Parked` → `Serving`, first step: takes the parked worker out to
    /// reconnect to it; the caller then [`serve`](Self::serve)s the new link.
    pub(super) fn unpark(&mut self) -> Option<Parked> {
        match self.take() {
            Phase::Parked(parked) => Some(parked),
            other => {
                *self = other;
                None
            }
        }
    }

    /// `Serving` → `Asking`: `Disconnect` (`hanging_up`) or `Detach` was
    /// sent; `told` hears the worker's answer.
    pub(super) fn ask(&mut self, told: oneshot::Sender<()>, hanging_up: bool) {
        match self.take() {
            Phase::Serving(link) => {
                *self = Phase::Asking {
                    link,
                    told,
                    hanging_up,
                }
            }
            other => *self = other,
        }
    }

    /// `Asking` → `Serving`: the worker said it listens (`told` is told), or
    /// the proxy stopped waiting for it (`told` is dropped).
    pub(super) fn answered(&mut self, listening: bool) {
        match self.take() {
            Phase::Asking { link, told, .. } => {
                if listening {
                    let _ = told.send(());
                }
                *self = Phase::Serving(link);
            }
            other => *self = other,
        }
    }

    /// `Serving` → `Parked`, with what `park` made of the link; a phase
    /// that is not serving stays as it is (and `park` is not called).
    pub(super) fn park(&mut self, park: impl FnOnce(Link) -> Option<Parked>) {
        match self.take() {
            Phase::Serving(link) | Phase::Asking { link, .. } => {
                *self = match park(link) {
                    Some(parked) => Phase::Parked(parked),
                    None => Phase::Closed,
                }
            }
            other => *self = other,
        }
    }

    /// Any phase but the ending ones → `Crashed`. What was left of the link
    /// stays with the phase (a parked worker's is let go of).
    pub(super) fn crash(&mut self, crash: Crash) {
        let dead = match self.take() {
            Phase::Serving(link) | Phase::Asking { link, .. } => Some(link),
            Phase::Parked(_) => None,
            Phase::Crashed { dead, .. } => dead,
            Phase::Restarting { mut waiters, .. } => {
                waiters.tell_all();
                None
            }
            ended @ (Phase::GaveUp { .. } | Phase::Closing(_) | Phase::Closed) => {
                *self = ended;
                return;
            }
        };
        *self = Phase::Crashed { crash, dead };
    }

    /// `Crashed` → `Restarting`: the dead worker's link is let go of;
    /// `cancel` cuts the backoff short.
    pub(super) fn restart(&mut self, cancel: oneshot::Sender<()>) {
        match self.take() {
            Phase::Crashed { crash, .. } => {
                *self = Phase::Restarting {
                    crash,
                    cancel: Some(cancel),
                    waiters: Waiters::default(),
                }
            }
            other => *self = other,
        }
    }

    /// `Restarting`: the backoff is over; `Close` can no longer cut it short.
    pub(super) fn launching(&mut self) {
        if let Phase::Restarting { cancel, .. } = self {
            *cancel = None;
        }
    }

    /// `Restarting`: cuts the backoff short, if the launch has not begun.
    pub(super) fn cancel_restart(&mut self) {
        if let Phase::Restarting { cancel, .. } = self {
            if let Some(cancel) = cancel.take() {
                let _ = cancel.send(());
            }
        }
    }

    /// `Restarting`: resolves once the launch has ended (at once if no
    /// launch is under way).
    pub(super) fn restart_done(&mut self) -> impl std::future::Future<Output = ()> + 'static {
        let waiting = match self {
            Phase::Restarting { waiters, .. } => Some(waiters.wait()),
            _ => None,
        };
        async move {
            if let Some(waiting) = waiting {
                waiting.await;
            }
        }
    }

    /// `Restarting` → `Crashed` with the same crash: the launch was
    /// cancelled by `Close`.
    pub(super) fn restart_cancelled(&mut self) {
        if let Phase::Restarting {
            crash, mut waiters, ..
        } = self.take()
        {
            waiters.tell_all();
            *self = Phase::Crashed { crash, dead: None };
        }
    }

    /// `Restarting` → `Serving`: the fresh worker is up. Answers the link
    /// back (and leaves the phase) if no restart was under way.
    // The link is moved in and, rarely, out again: boxing it would cost
    // every restart an allocation to spare a copy.
    #[allow(clippy::result_large_err)]
    pub(super) fn restarted(&mut self, link: Link) -> Result<(), Link> {
        match self.take() {
            Phase::Restarting { mut waiters, .. } => {
                waiters.tell_all();
                *self = Phase::Serving(link);
                Ok(())
            }
            other => {
                *self = other;
                Err(link)
            }
        }
    }

    /// `Crashed` → `GaveUp`.
    pub(super) fn give_up(&mut self, restarts: u32, last: Crash) {
        *self = Phase::GaveUp { restarts, last };
    }

    /// Any phase → `Closing`, keeping the link (live, parked or dead) by
    /// which `Close` ends the worker. (A restart under way is waited for
    /// first: see `Worker::after_launch`.)
    pub(super) fn close(&mut self) {
        let link = match self.take() {
            Phase::Serving(link) | Phase::Asking { link, .. } => Some(link),
            Phase::Parked(parked) => Some(Link::Parked(parked)),
            Phase::Crashed { dead, .. } => dead,
            Phase::Closing(link) => link,
            Phase::Restarting { mut waiters, .. } => {
                waiters.tell_all();
                None
            }
            Phase::GaveUp { .. } | Phase::Closed => None,
        };
        *self = Phase::Closing(link);
    }

    /// The proxy stopped: answers the link, to be let go of. A crash and
    /// what follows it stay (a supervised proxy is restarted by actix and
    /// goes on from them); any other phase becomes `Closed`.
    pub(super) fn stopped(&mut self) -> Option<Link> {
        match self {
            Phase::Crashed { dead, .. } => dead.take(),
            Phase::Restarting { .. } | Phase::GaveUp { .. } => None,
            _ => self.closed(),
        }
    }

    /// Any phase → `Closed`: answers the link, to be let go of.
    pub(super) fn closed(&mut self) -> Option<Link> {
        match std::mem::replace(self, Phase::Closed) {
            Phase::Serving(link) | Phase::Asking { link, .. } => Some(link),
            Phase::Parked(parked) => Some(Link::Parked(parked)),
            Phase::Crashed { dead, .. } | Phase::Closing(dead) => dead,
            Phase::Restarting { mut waiters, .. } => {
                waiters.tell_all();
                None
            }
            Phase::GaveUp { .. } | Phase::Closed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The transitions that need no live link (a link needs a worker).

    use std::time::Duration;

    use futures::FutureExt;

    use super::*;
    use crate::error::CrashReason;

    fn crash() -> Crash {
        Crash::new(CrashReason::Panic, Some("boom".into()))
    }

    fn crashed() -> Phase {
        Phase::Crashed {
            crash: crash(),
            dead: None,
        }
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn each_phase_says_its_state_and_what_a_request_meets() {
        let restarting = {
            let mut phase = crashed();
            phase.restart(oneshot::channel().0);
            phase
        };
        let cases = [
            (crashed(), "Crashed", "crashed"),
            (restarting, "Crashed", "crashed"),
            (
                Phase::GaveUp {
                    restarts: 3,
                    last: crash(),
                },
                "GaveUp",
                "gave up",
            ),
            (Phase::Closing(None), "Closing", "closed"),
            (Phase::Closed, "Closed", "closed"),
        ];
        for (phase, state, refusal) in cases {
            assert!(format!("{:?}", phase.state()).starts_with(state));
            let error = phase.refusal(WINDOW).expect("refused").to_string();
            assert!(error.contains(refusal), "{state}: {error}");
            assert!(!phase.is_serving());
        }
    }

    #[test]
    fn close_cancels_a_restart_in_its_backoff_and_the_crash_stays() {
        let mut phase = crashed();
        let (cancel, cancelled) = oneshot::channel();
        phase.restart(cancel);
        assert!(phase.is_restarting());
        let done = phase.restart_done();
        phase.cancel_restart();
        assert!(
            cancelled.now_or_never().is_some(),
            "the backoff was cut short"
        );
        phase.restart_cancelled();
        assert!(matches!(phase, Phase::Crashed { .. }));
        assert!(
            done.now_or_never().is_some(),
            "waiters hear the launch ended"
        );
    }

    #[test]
    fn a_launch_under_way_cannot_be_cancelled() {
        let mut phase = crashed();
        let (cancel, mut cancelled) = oneshot::channel();
        phase.restart(cancel);
        phase.launching();
        phase.cancel_restart();
        assert!(cancelled.try_recv().is_err(), "no cancel once launching");
        assert!(phase.is_restarting());
    }

    #[test]
    fn a_failed_launch_crashes_again_and_tells_who_waits() {
        let mut phase = crashed();
        phase.restart(oneshot::channel().0);
        let done = phase.restart_done();
        phase.crash(Crash::new(
            CrashReason::ConnectionLost,
            Some("restart failed".into()),
        ));
        assert!(done.now_or_never().is_some());
        let Phase::Crashed { crash, .. } = &phase else {
            panic!("not crashed: {:?}", phase.state());
        };
        assert_eq!(crash.message.as_deref(), Some("restart failed"));
    }

    #[test]
    fn waiting_for_a_restart_that_is_not_under_way_ends_at_once() {
        let mut phase = crashed();
        assert!(phase.restart_done().now_or_never().is_some());
    }

    #[test]
    fn a_crash_does_not_undo_giving_up_or_closing() {
        for ended in [
            Phase::GaveUp {
                restarts: 1,
                last: crash(),
            },
            Phase::Closing(None),
            Phase::Closed,
        ] {
            let mut phase = ended;
            let before = phase.state();
            phase.crash(crash());
            assert_eq!(phase.state(), before);
        }
    }

    #[test]
    fn closing_keeps_nothing_of_a_dead_worker_without_a_link() {
        let mut phase = crashed();
        phase.close();
        assert!(matches!(phase, Phase::Closing(None)));
        assert!(phase.closed().is_none());
        assert!(matches!(phase, Phase::Closed));
    }

    #[test]
    fn a_stopped_proxy_keeps_its_crash_for_the_supervisor() {
        let mut phase = crashed();
        assert!(phase.stopped().is_none());
        assert!(matches!(phase, Phase::Crashed { .. }));
        let mut phase = Phase::Closing(None);
        phase.stopped();
        assert!(matches!(phase, Phase::Closed));
    }
}
