//! What a frame says: the [`Header`] of each frame kind, and [`Hello`], the
//! handshake a worker opens its connection with.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::RemoteError;

/// The first frame on every connection, sent by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the worker.
    pub(crate) protocol: u32,
    /// The per-spawn secret the host gave the worker.
    pub(crate) token: String,
    /// The worker's process id.
    pub(crate) pid: u32,
    /// The contract the worker serves, and its version.
    pub(crate) contract: String,
    pub(crate) contract_version: u32,
    /// [`crate::Serializer::NAME`] of the worker's payload format.
    pub(crate) serializer: String,
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
    /// Worker → host: request `id` failed.
    Error { id: u64, error: RemoteError },
    /// Host → worker: the host no longer waits for request `id`.
    Cancel { id: u64 },
    /// Host → worker: stop serving and exit.
    Shutdown,
    /// Worker → host: the worker panicked and is about to exit.
    Panicked { message: String },
}
