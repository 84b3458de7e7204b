//! Options that shape a worker: timeouts and limits.

use std::collections::HashMap;
use std::time::Duration;

use actix::{Recipient, WeakRecipient};

use crate::contract::WorkerMessage;
use crate::lifecycle::LifecycleEvent;
use crate::middleware::Middlewares;

/// Options for one worker, set with a builder.
///
/// ```
/// use std::time::Duration;
/// use isolated_workers::WorkerOptions;
///
/// let options = WorkerOptions::default()
///     .request_timeout(Duration::from_secs(5))
///     .max_in_flight(64);
/// assert_eq!(options.request_timeout, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Bound on spawn-to-handshake. Default 10 s.
    pub startup_timeout: Duration,
    /// Deadline of each request, from the moment the proxy accepts it. Default 30 s.
    pub request_timeout: Duration,
    /// How long `Close` waits for the worker to exit after asking it to,
    /// before killing it. Default 2 s.
    pub close_grace: Duration,
    /// Requests sent to the worker and not yet answered. Default 1024.
    pub max_in_flight: usize,
    /// Requests waiting for an in-flight slot; beyond this, sends fail with
    /// `Overloaded`. Default 65 536.
    pub max_queued: usize,
    /// Largest frame either side accepts, in bytes. Default 16 MiB.
    pub max_frame_len: usize,
    /// At most this many restarts of a crashed worker within
    /// [`restart_window`](Self::restart_window); one more and the proxy
    /// gives up (every request then fails with `WorkerError::GaveUp`).
    /// Default 5.
    pub max_restarts: u32,
    /// See [`max_restarts`](Self::max_restarts). Default 60 s.
    pub restart_window: Duration,
    /// How long to wait before the second restart within the restart
    /// window; each later one waits twice as long as the one before, up to
    /// [`max_restart_backoff`](Self::max_restart_backoff). The first restart
    /// is immediate. Default 100 ms.
    pub restart_backoff: Duration,
    /// The longest wait before a restart. Default 10 s.
    pub max_restart_backoff: Duration,
    /// What a [supervised](crate::Worker::supervise) worker does with
    /// requests while it restarts. Default [`WhileRestarting::Queue`].
    pub while_restarting: WhileRestarting,
    /// Who is told when the worker crashes, restarts or gives up.
    pub(crate) watchers: Vec<WeakRecipient<LifecycleEvent>>,
    /// Request timeouts that differ from `request_timeout`, by wire name.
    timeouts: HashMap<&'static str, Duration>,
    /// Crash policies that differ from `Reject`, by wire name.
    policies: HashMap<&'static str, CrashPolicy>,
    /// The host's middleware.
    pub(crate) middleware: Middlewares,
}

/// What happens to a request in flight when its worker crashes, if the
/// worker may have started it.
///
/// A request the worker never read is sent to the fresh worker whatever
/// its policy, as the same attempt: nothing of it ran. A child worker on
/// Linux tells which requests it read through a counter it shares with
/// the host; where it cannot (other systems, attached workers, custom
/// stream drivers), every request written to the worker counts as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CrashPolicy {
    /// Resolve it with `WorkerError::Crashed` (the default).
    #[default]
    Reject,
    /// Send it again, to a fresh worker, up to `attempts` more times; the
    /// last failure is `Crashed` with `attempt` = 1 + `attempts`. For
    /// requests that are safe to run twice. Workers that move messages
    /// instead of copying them (the thread driver) cannot retry: the message
    /// went down with the worker's actor, so there it acts as `Reject`.
    Retry {
        /// How many times to try again after the first try.
        attempts: u32,
    },
}

/// What a [supervised](crate::Worker::supervise) worker does with the
/// requests sent while a fresh worker is starting after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhileRestarting {
    /// They wait in the proxy's actix mailbox and go to the fresh worker
    /// once it is up. The mailbox is bounded the actix way: `send` waits for
    /// room (the capacity is actix's default, 16), `try_send` fails when it
    /// is full; `do_send` does not wait. Every message waits, `Close`
    /// included (for at most the backoff and the startup timeout).
    #[default]
    Queue,
    /// They resolve at once with the crash that caused the restart
    /// ([`WorkerError::Crashed`](crate::WorkerError::Crashed)). `Status`
    /// answers meanwhile, and `Close` calls off a restart still in its
    /// backoff.
    Reject,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            close_grace: Duration::from_secs(2),
            max_in_flight: 1024,
            max_queued: 65_536,
            max_frame_len: 16 * 1024 * 1024,
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(100),
            max_restart_backoff: Duration::from_secs(10),
            while_restarting: WhileRestarting::Queue,
            watchers: Vec::new(),
            timeouts: HashMap::new(),
            policies: HashMap::new(),
            middleware: Middlewares::new(),
        }
    }
}

impl WorkerOptions {
    /// The middleware every request and reply of this worker passes on the
    /// host (see [`middleware`](crate::middleware) for the order).
    pub fn middleware(mut self, middleware: Middlewares) -> Self {
        self.middleware = middleware;
        self
    }

    /// Sets [`startup_timeout`](Self::startup_timeout).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Gives requests of message type `M` their own timeout.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Render;
    /// # #[derive(Serialize, Deserialize)] struct Ping;
    /// # isolated_workers::contract! { Gfx { Render => (), Ping => () } }
    /// use std::time::Duration;
    /// use isolated_workers::WorkerOptions;
    ///
    /// let options = WorkerOptions::default()
    ///     .request_timeout(Duration::from_secs(1))
    ///     .timeout_for::<Render>(Duration::from_secs(60));
    /// assert_eq!(options.timeout_of("Render"), Duration::from_secs(60));
    /// assert_eq!(options.timeout_of("Ping"), Duration::from_secs(1));
    /// ```
    pub fn timeout_for<M: WorkerMessage>(mut self, timeout: Duration) -> Self {
        self.timeouts.insert(M::NAME, timeout);
        self
    }

    /// The timeout of requests for the message with wire name `message`.
    pub fn timeout_of(&self, message: &str) -> Duration {
        if self.timeouts.is_empty() {
            return self.request_timeout;
        }
        self.timeouts
            .get(message)
            .copied()
            .unwrap_or(self.request_timeout)
    }

    /// Sets what happens to requests of message type `M` when the worker
    /// crashes while they are in flight (and may have started).
    pub fn on_crash<M: WorkerMessage>(mut self, policy: CrashPolicy) -> Self {
        self.policies.insert(M::NAME, policy);
        self
    }

    /// The crash policy of the message with wire name `message`.
    pub fn crash_policy_of(&self, message: &str) -> CrashPolicy {
        self.policies.get(message).copied().unwrap_or_default()
    }

    /// Sets [`max_restarts`](Self::max_restarts) within
    /// [`restart_window`](Self::restart_window).
    pub fn restart_budget(mut self, max_restarts: u32, window: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.restart_window = window;
        self
    }

    /// Sets [`restart_backoff`](Self::restart_backoff) and
    /// [`max_restart_backoff`](Self::max_restart_backoff).
    pub fn restart_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.restart_backoff = first;
        self.max_restart_backoff = max.max(first);
        self
    }

    /// How long to wait before the `restart`-th restart within the restart
    /// window (counting from 1): nothing before the first, then
    /// [`restart_backoff`](Self::restart_backoff), doubling, capped at
    /// [`max_restart_backoff`](Self::max_restart_backoff).
    ///
    /// ```
    /// use std::time::Duration;
    /// use isolated_workers::WorkerOptions;
    ///
    /// let options = WorkerOptions::default()
    ///     .restart_backoff(Duration::from_millis(100), Duration::from_millis(300));
    /// let waits: Vec<_> = (1..=4).map(|n| options.backoff_before(n).as_millis()).collect();
    /// assert_eq!(waits, [0, 100, 200, 300]);
    /// ```
    pub fn backoff_before(&self, restart: u32) -> Duration {
        if restart <= 1 {
            return Duration::ZERO;
        }
        let doublings = (restart - 2).min(31);
        self.restart_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_restart_backoff)
    }

    /// Sets [`while_restarting`](Self::while_restarting).
    pub fn while_restarting(mut self, policy: WhileRestarting) -> Self {
        self.while_restarting = policy;
        self
    }

    /// Tells `watcher` each time the worker crashes, restarts or gives up
    /// (see [`LifecycleEvent`]). Unlike sending
    /// [`Watch`](crate::proxy::Watch) after the spawn, this cannot miss an
    /// event. A watcher whose actor has stopped is forgotten; watching does
    /// not keep the watcher alive (a parent that owns its workers and
    /// watches them would otherwise never stop).
    pub fn watched_by(mut self, watcher: Recipient<LifecycleEvent>) -> Self {
        self.watchers.push(watcher.downgrade());
        self
    }

    /// Sets [`close_grace`](Self::close_grace).
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight) (at least 1).
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = limit.max(1);
        self
    }

    /// Sets [`max_queued`](Self::max_queued).
    pub fn max_queued(mut self, limit: usize) -> Self {
        self.max_queued = limit;
        self
    }

    /// Sets [`max_frame_len`](Self::max_frame_len) (at least 1 KiB).
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes.max(1024);
        self
    }
}
