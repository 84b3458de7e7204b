//! The wire between a host and a child-process worker: length-prefixed
//! frames ([`frame`]), the envelope each frame carries ([`envelope`]), and the
//! pluggable payload encoding ([`serializer`]).
//!
//! A frame is `[u32 LE body length][u32 LE header length][u8 descriptors]
//! [header][payload]`. The header is an [`envelope::Header`]: a fixed
//! binary layout for a request, its reply and a cancel, MessagePack for the
//! rest; the payload is the message or reply, encoded by the contract's
//! [`Serializer`], and is handed on as a slice of the received buffer
//! without a copy. Over a Unix socket a frame may carry descriptors (the
//! shared memory of [`SharedBytes`](crate::SharedBytes), see [`passing`]),
//! sent with its first byte; the count says how many.
//!
//! Frames are read by [`reader`] and written by [`writer`] (vectored, large
//! payloads uncopied); [`scm`] passes the descriptors.

pub(crate) mod channel;
pub(crate) mod envelope;
pub(crate) mod frame;
pub(crate) mod passing;
mod reader;
mod scm;
pub(crate) mod serializer;
pub(crate) mod shared_bytes;
pub(crate) mod stream;
pub(crate) mod writer;

#[cfg(test)]
mod proptests;

pub(crate) use serializer::Serializer;

/// Version of the frame and envelope format; both sides must agree on it.
/// 3: worker → host `Event` frames.
/// 4: spawned over an inherited socketpair; `Listening` says where the
/// worker accepts its host again.
/// 5: worker → host `Unserved` frames for the protocol's failures, which
/// were `Error` frames with reserved names before.
/// 6: fixed binary headers for requests, replies and cancels; each frame
/// says how many descriptors it carries (the shared memory of
/// `SharedBytes`, passed with `SCM_RIGHTS`), in a byte after its header
/// length; large requests and replies come in chunks (`Opens`,
/// `Continues`) that other frames pass.
/// 7: `Hello` says which build of its executable the sender runs.
pub(crate) const PROTOCOL_VERSION: u32 = 7;
