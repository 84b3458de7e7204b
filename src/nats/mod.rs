//! Workers on other machines, through NATS (feature `nats`).
//!
//! On each worker machine an [`Agent`] serves sessions of one contract;
//! on the host the [`Nats`] driver claims a session from any agent with
//! room and carries the worker's byte stream over NATS, so the proxy, the
//! pool, timeouts, crash policies and events work as with a local child.
//!
//! - **Claims**: `<prefix>.claim.<contract>.<version>`, a queue group of
//!   the agents with room. No agent listening is a
//!   [`SpawnError::NoAgent`](crate::SpawnError::NoAgent) at once.
//! - **Sessions**: each has a secret of 128 random bits that names its two
//!   subjects (`<prefix>.session.<secret>.host` and `.worker`); nobody
//!   without it can drive or read the session (NATS auth decides who can
//!   read claims, which carry it). The worker's Hello travels to the
//!   host's proxy, which checks it as it checks a local child's.
//! - **Loss**: core NATS delivers at most once, so every message of a
//!   session is numbered; a gap, a reconnect of either client, or silence
//!   past the heartbeat bound ends the session. The host's requests then
//!   fail `Crashed` with [`CrashReason::RemoteLost`](crate::CrashReason::RemoteLost),
//!   and the agent kills the worker. A worker that exits is reported with
//!   its exit code or signal.
//! - **Size**: bytes go in messages within the server's `max_payload`.

mod agent;
mod driver;
mod protocol;
mod session;
mod subjects;

pub use agent::{Agent, AgentError, NatsAt, Serving};
pub use driver::Nats;
pub use subjects::DEFAULT_PREFIX;
