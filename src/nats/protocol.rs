//! What a host and an agent say to each other: a claim and its answer
//! (MessagePack, on the claim subject), then the messages of a session,
//! each a kind, a sequence number and a body.
//!
//! Every message of a session is numbered, per direction, from 0: core
//! NATS delivers at most once, so a number skipped is a message lost, and
//! the session ends ([`Message::decode`] reads the number, the session
//! checks it).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::CrashReason;

/// The version of what is on this page; a claim of another is declined.
pub(crate) const VERSION: u32 = 1;

/// A host asks for a session.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// [`VERSION`] of the host.
    pub(crate) version: u32,
    /// The session's secret: its subjects are named after it.
    pub(crate) secret: String,
    /// How often each side sends a heartbeat, in milliseconds.
    pub(crate) heartbeat_ms: u64,
    /// After how long without a message a side ends the session.
    pub(crate) missed_after_ms: u64,
    /// The worker's frame limit (`WorkerOptions::max_frame_len`).
    pub(crate) max_frame_len: usize,
    /// The worker's close grace (`WorkerOptions::close_grace`).
    pub(crate) close_grace_ms: u64,
}

/// An agent's answer to a claim.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// The worker runs, as process `pid` on `agent`'s machine; its bytes
    /// follow on the session's subject.
    Accepted {
        /// The agent's name.
        agent: String,
        /// The worker's process id on the agent's machine.
        pid: u32,
    },
    /// No session: the agent is full, or could not start the worker.
    Declined {
        /// The agent's name.
        agent: String,
        /// Why.
        why: String,
    },
}

/// How a session's worker ended, as its agent tells the host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum End {
    /// Exited with this code.
    Exit(i32),
    /// Killed by this signal.
    Signal(i32),
    /// The agent ended the session (it lost the host, or NATS): why.
    Lost(String),
}

impl End {
    /// The agent's view of how its child ended.
    pub(crate) fn of(reason: &CrashReason) -> Self {
        match reason {
            CrashReason::Exit(code) => End::Exit(*code),
            CrashReason::Signal(signal) => End::Signal(*signal),
            other => End::Lost(other.to_string()),
        }
    }

    /// What the host reports.
    pub(crate) fn reason(self) -> CrashReason {
        match self {
            End::Exit(code) => CrashReason::Exit(code),
            End::Signal(signal) => CrashReason::Signal(signal),
            End::Lost(why) => {
                CrashReason::RemoteLost(format!("the agent ended the session: {why}"))
            }
        }
    }
}

/// What a message of a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Bytes of the worker's connection, in order.
    Data,
    /// Nothing: the sender is alive.
    Heartbeat,
    /// Agent to host: the worker is gone; the body is an [`End`].
    End,
    /// Host to agent: send the worker this signal (one byte, its number).
    Signal,
    /// Host to agent: the host is done with the session; end the worker.
    Hangup,
}

impl Kind {
    /// Its tag on the wire.
    fn tag(self) -> u8 {
        match self {
            Kind::Data => 0,
            Kind::Heartbeat => 1,
            Kind::End => 2,
            Kind::Signal => 3,
            Kind::Hangup => 4,
        }
    }

    /// The kind of tag `tag`, if any.
    fn of_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => Kind::Data,
            1 => Kind::Heartbeat,
            2 => Kind::End,
            3 => Kind::Signal,
            4 => Kind::Hangup,
            _ => return None,
        })
    }
}

/// One message of a session.
#[derive(Debug)]
pub(crate) struct Message {
    /// What it is.
    pub(crate) kind: Kind,
    /// Its number in its direction.
    pub(crate) seq: u64,
    /// What it carries.
    pub(crate) body: Bytes,
}

/// The bytes before a message's body: its tag and number.
pub(crate) const HEAD: usize = 9;

impl Message {
    /// The payload of message `seq` of `kind` carrying `body`.
    pub(crate) fn encode(kind: Kind, seq: u64, body: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEAD + body.len());
        out.put_u8(kind.tag());
        out.put_u64(seq);
        out.put_slice(body);
        out.freeze()
    }

    /// Reads a payload; an error says what is wrong with it.
    pub(crate) fn decode(mut payload: Bytes) -> Result<Self, String> {
        if payload.len() < HEAD {
            return Err(format!(
                "a message of {} bytes, shorter than its head",
                payload.len()
            ));
        }
        let kind = Kind::of_tag(payload[0])
            .ok_or_else(|| format!("a message of unknown kind {}", payload[0]))?;
        let seq = u64::from_be_bytes(payload[1..HEAD].try_into().unwrap_or_default());
        let body = payload.split_off(HEAD);
        Ok(Self { kind, seq, body })
    }
}

/// `value` in MessagePack, with field names (claims and answers are small
/// and rare; names keep them readable and extensible).
pub(crate) fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // A struct of plain fields always encodes.
    rmp_serde::to_vec_named(value).unwrap_or_default().into()
}

/// Reads what [`to_bytes`] wrote.
pub(crate) fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_errors() {
        let message = Message::decode(Message::encode(Kind::Data, 7, b"abc")).unwrap();
        assert_eq!(
            (message.kind, message.seq, &message.body[..]),
            (Kind::Data, 7, &b"abc"[..])
        );
        assert!(Message::decode(Bytes::from_static(b"\x00short")).is_err());
        assert!(Message::decode(Bytes::from_static(b"\x09\0\0\0\0\0\0\0\0")).is_err());
    }

    #[test]
    fn ends_become_crash_reasons() {
        assert_eq!(
            End::of(&CrashReason::Signal(9)).reason(),
            CrashReason::Signal(9)
        );
        assert!(matches!(
            End::Lost("x".into()).reason(),
            CrashReason::RemoteLost(_)
        ));
    }
}
