//! Both ends of the child-process protocol: what a host and the worker
//! process it spawned (or attaches to) share, from the environment the
//! worker starts with to the socket a host reaches it on again.
//!
//! **The two ends.** The host spawns the worker with one end of a
//! socketpair as an inherited descriptor ([`env::CHANNEL_FD`]); the worker
//! opens that connection with its Hello, which the host checks
//! ([`handshake::Greeting`]). Only the two processes hold an end, so there
//! is nothing to prove and nothing on disk. After `Disconnect` or
//! `Detach` the worker listens for its host ([`attach`]): a host that comes
//! back, or another process holding a [`DetachedWorker`] handle, connects
//! and presents the attach secret ([`handshake::Attaching`], [`session`]);
//! the worker lets it in or refuses it ([`handshake::Accepting`]). A
//! detached worker also leaves the host's session ([`detach`]). On Linux
//! the host shares a [`read_mark`] with the worker it spawned.
//!
//! **What is on disk, and when.** Nothing until the worker first listens.
//! Then `$TMPDIR/isolated-workers-<pid>-XXXX/` (mode 0700) holding
//! `attach.sock` (mode 0600), made by [`directory::attach_directory`]. The
//! worker removes it when it exits; the host removes it when it lets go of
//! a worker that does not outlive it; any later host or listening worker
//! sweeps directories whose owner is dead ([`directory::sweep_leftovers`]).
//!
//! Layering: this module uses the wire, the contract (for the Hello a
//! contract's host expects) and the errors, nothing above them; the
//! child-process driver, the proxy and the worker use it.

pub(crate) mod attach;
pub(crate) mod build;
pub(crate) mod detach;
pub(crate) mod directory;
pub(crate) mod first_frame;
pub(crate) mod handshake;
pub(crate) mod peer;
pub(crate) mod read_mark;
pub(crate) mod session;

pub use session::DetachedWorker;

/// Environment variables the host sets for a child worker, and the worker
/// reads (and removes) as it starts.
pub(crate) mod env {
    /// The number of the inherited descriptor that is the worker's end of
    /// its connection to the host.
    pub(crate) const CHANNEL_FD: &str = "ISOLATED_WORKERS_FD";
    /// Which of the binary's workers to run.
    pub(crate) const NAME: &str = "ISOLATED_WORKERS_NAME";
    /// Largest frame either side accepts.
    pub(crate) const MAX_FRAME: &str = "ISOLATED_WORKERS_MAX_FRAME";
    /// How long the worker's actor gets to stop when asked, in milliseconds.
    pub(crate) const GRACE_MS: &str = "ISOLATED_WORKERS_GRACE_MS";
    /// The most verbose level of `tracing` event the host wants forwarded
    /// (unset: none).
    pub(crate) const TRACE: &str = "ISOLATED_WORKERS_TRACE";
    /// The descriptor of the read mark the host shares with the worker
    /// (unset: none).
    pub(crate) const READ_MARK: &str = "ISOLATED_WORKERS_READ_MARK";
    /// The host's pid, set when the worker was spawned without a fork
    /// hook: the worker then sets its parent-death signal itself, and
    /// exits if its parent is already someone else.
    pub(crate) const HOST_PID: &str = "ISOLATED_WORKERS_HOST_PID";
    /// [`READ_MARK`]'s value when the mark comes over the channel, as the
    /// first message, with its descriptor attached (`SCM_RIGHTS`).
    pub(crate) const MARK_ON_CHANNEL: &str = "channel";
}
