//! Options that shape a worker: timeouts and limits.

use std::collections::HashMap;
use std::time::Duration;

use crate::contract::WorkerMessage;

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
    /// Request timeouts that differ from `request_timeout`, by wire name.
    timeouts: HashMap<&'static str, Duration>,
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
            timeouts: HashMap::new(),
        }
    }
}

impl WorkerOptions {
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
