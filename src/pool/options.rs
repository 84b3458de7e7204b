//! How a pool is sized and bounded: [`PoolOptions`] and its builder.

use std::time::Duration;

use crate::config::WorkerOptions;

/// Options for a [`WorkerPool`](crate::WorkerPool), set with a builder.
///
/// ```
/// use std::time::Duration;
/// use isolated_workers::{PoolOptions, WorkerOptions};
///
/// let options = PoolOptions::default()
///     .min_members(1)
///     .max_members(4)
///     .max_queued(100)
///     .idle_timeout(Duration::from_secs(10))
///     .member_options(WorkerOptions::default().request_timeout(Duration::from_secs(5)));
/// assert_eq!(options.max_members, 4);
/// assert_eq!(options.max_in_flight_per_member, 1);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Members started with the pool and kept however idle. Default 1.
    pub min_members: usize,
    /// Members at the most: the pool starts more, up to this, while
    /// requests wait. At least [`min_members`](Self::min_members) and 1,
    /// whatever it is set to. Default: the machine's available
    /// parallelism.
    pub max_members: usize,
    /// Requests one member may have in flight at once; a member with this
    /// many gets no more until one is answered. Default 1: one job per
    /// worker at a time, which is right for CPU-bound work (a second job
    /// would only wait in that worker, while another member might be
    /// free by then). Raise it for workers that mostly wait.
    pub max_in_flight_per_member: usize,
    /// Requests waiting in the pool for a member; beyond this, sends fail
    /// at once with [`WorkerError::Overloaded`](crate::WorkerError::Overloaded).
    /// Default 1 024.
    pub max_queued: usize,
    /// A member with nothing in flight for this long is closed, as long as
    /// more than [`min_members`](Self::min_members) remain. Default 30 s.
    pub idle_timeout: Duration,
    /// The options each member is started with (timeouts, crash policies,
    /// restart budget, middleware). Named as its builder method is, as
    /// every other field here is.
    pub member_options: WorkerOptions,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            min_members: 1,
            max_members: std::thread::available_parallelism().map_or(1, usize::from),
            max_in_flight_per_member: 1,
            max_queued: 1024,
            idle_timeout: Duration::from_secs(30),
            member_options: WorkerOptions::default(),
        }
    }
}

impl PoolOptions {
    /// Sets [`min_members`](Self::min_members).
    pub fn min_members(mut self, members: usize) -> Self {
        self.min_members = members;
        self
    }

    /// Sets [`max_members`](Self::max_members).
    pub fn max_members(mut self, members: usize) -> Self {
        self.max_members = members;
        self
    }

    /// Sets both [`min_members`](Self::min_members) and
    /// [`max_members`](Self::max_members) to `members`: a pool of fixed size.
    pub fn members(self, members: usize) -> Self {
        self.min_members(members).max_members(members)
    }

    /// Sets [`max_in_flight_per_member`](Self::max_in_flight_per_member)
    /// (at least 1).
    pub fn max_in_flight_per_member(mut self, limit: usize) -> Self {
        self.max_in_flight_per_member = limit.max(1);
        self
    }

    /// Sets [`max_queued`](Self::max_queued).
    pub fn max_queued(mut self, limit: usize) -> Self {
        self.max_queued = limit;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`member_options`](Self::member_options), the options each
    /// member is started with.
    pub fn member_options(mut self, options: WorkerOptions) -> Self {
        self.member_options = options;
        self
    }

    /// The most members the pool may have.
    pub(super) fn ceiling(&self) -> usize {
        self.max_members.max(self.min_members).max(1)
    }

    /// Requests a member may have in flight (at least 1, even when the
    /// field was set directly).
    pub(super) fn per_member(&self) -> usize {
        self.max_in_flight_per_member.max(1)
    }
}
