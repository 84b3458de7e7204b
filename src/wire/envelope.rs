//! What a frame says: the [`Header`] of each frame kind, and [`Hello`], the
//! handshake a worker opens its connection with.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::{ProtocolFailure, RemoteError};

/// Who is who on a connection. The worker opens a spawned connection with
/// it; a host reconnecting or attaching to a running worker opens with it
/// (as [`Header::Attach`]), and the worker answers with its own. Plain
/// data: what a contract's Hello says, and whether two fit, is the
/// handshake's business (`crate::socket::handshake`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the worker.
    pub(crate) protocol: u32,
    /// The secret of the worker's attach socket, on an attach connection;
    /// empty on the connection a worker is spawned with (a socketpair whose
    /// other end only the host holds, so there is nothing to prove).
    pub(crate) token: String,
    /// The worker's process id.
    pub(crate) pid: u32,
    /// The contract the worker serves, and its version.
    pub(crate) contract: String,
    pub(crate) contract_version: u32,
    /// [`crate::Serializer::NAME`] of the worker's payload format.
    pub(crate) serializer: String,
}

/// Where a worker that was asked to wait for its host (`Disconnect`,
/// `Detach`) accepts it: a socket in a private directory the worker made,
/// and the secret a host presents there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AttachPoint {
    pub(crate) socket: std::path::PathBuf,
    pub(crate) token: String,
}

/// The header of one frame. Request and Reply carry a payload after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Header {
    /// Worker → host, first frame.
    Hello(Hello),
    /// Host → worker: handle the payload as message `name`; answer with `id`.
    Request { id: u64, name: Cow<'static, str> },
    /// Worker → host: the payload is the reply to request `id`.
    Reply { id: u64 },
    /// Worker → host: request `id` failed in the worker's handler or
    /// middleware, which said why.
    Error { id: u64, error: RemoteError },
    /// Worker → host: request `id` was not served, for a reason of the
    /// protocol's (an unknown message, an undecodable request, a reply
    /// that cannot be sent, a worker shutting down). A frame of its own,
    /// so that no name a handler gives its error can be taken for one.
    Unserved { id: u64, why: ProtocolFailure },
    /// Host → worker: the host no longer waits for request `id`.
    Cancel { id: u64 },
    /// Host → worker: stop serving and exit.
    Shutdown,
    /// Worker → host: the worker panicked and is about to exit.
    Panicked { message: String },
    /// Host → worker, first frame on a connection to a running worker's
    /// attach socket: the host's credentials and what it expects.
    Attach(Hello),
    /// Worker → host: the attach is refused; the connection closes.
    Refused { why: Refusal },
    /// Host → worker: the host is about to close this connection and come
    /// back; keep the actor and wait for it.
    Disconnect,
    /// Host → worker: outlive the host. After `idle_timeout_ms` without a
    /// host attached (if set), stop.
    Detach { idle_timeout_ms: Option<u64> },
    /// Worker → host: done (after Disconnect or Detach); the worker now
    /// accepts attaches at this point.
    Listening(AttachPoint),
    /// Worker → host: a `tracing` event of the worker, emitted while it
    /// worked on request `request`, if any.
    Log {
        request: Option<u64>,
        /// 1 (ERROR) to 5 (TRACE).
        level: u8,
        target: String,
        message: String,
    },
    /// Worker → host: the payload is one of the contract's events
    /// (`Contract::Event`), encoded by the contract's serializer. Written
    /// before any frame the worker writes after emitting it.
    Event,
    /// Either way: the first chunk of a large request or reply (`header`,
    /// whose payload is `total` bytes), sent in chunks so that other frames
    /// can pass it (see `wire::writer`); the descriptors of the whole frame
    /// come with this one. Never reaches a handler: the reader puts the
    /// frame back together.
    Opens {
        part: u32,
        total: u32,
        header: Box<Header>,
    },
    /// Either way: the next chunk of the frame `Opens` began as `part`.
    Continues { part: u32 },
}

impl Header {
    /// Whether a frame with this header may be written before frames
    /// written earlier and not yet wholly sent (chunked requests and
    /// replies): requests and their outcomes, which the peer matches by
    /// id, not by order. Anything else (events, logs, cancels, the
    /// connection's own frames) keeps its place.
    pub(crate) fn may_overtake(&self) -> bool {
        matches!(
            self,
            Header::Request { .. }
                | Header::Reply { .. }
                | Header::Error { .. }
                | Header::Unserved { .. }
        )
    }

    /// Whether a large payload behind this header may be chunked (so that
    /// frames which [`may_overtake`](Self::may_overtake) pass it).
    pub(crate) fn may_be_chunked(&self) -> bool {
        matches!(self, Header::Request { .. } | Header::Reply { .. })
    }
}

/// Why a worker refused an attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// The host did not present the worker's token.
    WrongToken,
    /// Another host is attached.
    Busy,
}
