//! What a frame says: the [`Header`] of each frame kind, and [`Hello`], the
//! handshake a worker opens its connection with.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
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
    /// Which build of its executable the sender runs (device, inode, size,
    /// modification time of its image); empty if unknown. Last, and
    /// defaulted, so that a Hello of protocol 6 still decodes and is
    /// refused for its version.
    #[serde(default)]
    pub(crate) executable: String,
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

/// How a header is written: its first byte says which layout follows.
/// The frames of every request (a request, its reply, a cancel) have a
/// fixed binary layout; any other header is MessagePack. MessagePack
/// names an enum variant by its string, and decoding one cost ~600
/// instructions a frame (callgrind), a tenth of a whole round trip.
mod tag {
    /// MessagePack of the whole [`Header`](super::Header) follows.
    pub(super) const MESSAGE_PACK: u8 = 0;
    /// `Request`: the id (u64, little-endian), then the name's UTF-8 bytes
    /// up to the header's end.
    pub(super) const REQUEST: u8 = 1;
    /// `Reply`: the id.
    pub(super) const REPLY: u8 = 2;
    /// `Cancel`: the id.
    pub(super) const CANCEL: u8 = 3;
}

impl Header {
    /// Appends this header's bytes to `dst` (see [`tag`]).
    pub(crate) fn write(&self, dst: &mut BytesMut) -> Result<(), rmp_serde::encode::Error> {
        match self {
            Header::Request { id, name } => {
                dst.put_u8(tag::REQUEST);
                dst.put_u64_le(*id);
                dst.put_slice(name.as_bytes());
            }
            Header::Reply { id } => {
                dst.put_u8(tag::REPLY);
                dst.put_u64_le(*id);
            }
            Header::Cancel { id } => {
                dst.put_u8(tag::CANCEL);
                dst.put_u64_le(*id);
            }
            other => {
                dst.put_u8(tag::MESSAGE_PACK);
                rmp_serde::encode::write(&mut dst.writer(), other)?;
            }
        }
        Ok(())
    }

    /// Reads a header that takes up exactly `bytes`; says why it cannot.
    pub(crate) fn read(bytes: &[u8]) -> Result<Header, String> {
        let (&tag, rest) = bytes.split_first().ok_or("empty header")?;
        let id = || match rest.get(..8) {
            Some(id) => Ok(u64::from_le_bytes(id.try_into().expect("8 bytes"))),
            None => Err(format!("{} bytes where an id was expected", rest.len())),
        };
        let only_id = |header: Header| match rest.len() {
            8 => Ok(header),
            n => Err(format!("{n} bytes where only an id was expected")),
        };
        match tag {
            tag::REQUEST => {
                let id = id()?;
                let name = std::str::from_utf8(&rest[8..])
                    .map_err(|e| format!("request name is not UTF-8: {e}"))?;
                Ok(Header::Request {
                    id,
                    name: Cow::Owned(name.to_owned()),
                })
            }
            tag::REPLY => only_id(Header::Reply { id: id()? }),
            tag::CANCEL => only_id(Header::Cancel { id: id()? }),
            tag::MESSAGE_PACK => rmp_serde::from_slice(rest).map_err(|e| e.to_string()),
            other => Err(format!("unknown header kind {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layouts_refuse_short_and_long_headers() {
        for bad in [
            &[][..],
            &[tag::REPLY, 1, 2, 3][..],
            &[tag::CANCEL, 1, 2, 3, 4, 5, 6, 7, 8, 9][..],
            &[tag::REQUEST, 1, 0, 0, 0, 0, 0, 0, 0, 0xff][..],
            &[9, 0][..],
        ] {
            assert!(Header::read(bad).is_err(), "{bad:?} was read");
        }
    }

    #[test]
    fn a_hello_of_protocol_6_still_decodes_to_be_refused_for_its_version() {
        /// The Hello of protocol 6: no `executable`.
        #[derive(Serialize)]
        struct OldHello {
            protocol: u32,
            token: String,
            pid: u32,
            contract: String,
            contract_version: u32,
            serializer: String,
        }
        #[derive(Serialize)]
        enum OldHeader {
            Hello(OldHello),
        }
        let old = OldHeader::Hello(OldHello {
            protocol: 6,
            token: String::new(),
            pid: 7,
            contract: "Calc".into(),
            contract_version: 1,
            serializer: "msgpack".into(),
        });
        let mut buf = vec![tag::MESSAGE_PACK];
        rmp_serde::encode::write(&mut buf, &old).unwrap();
        match Header::read(&buf).unwrap() {
            Header::Hello(hello) => {
                assert_eq!((hello.protocol, hello.pid), (6, 7));
                assert_eq!(hello.executable, "");
            }
            other => panic!("read {other:?}"),
        }
    }

    #[test]
    fn a_request_with_an_empty_name_round_trips() {
        let header = Header::Request {
            id: u64::MAX,
            name: Cow::Borrowed(""),
        };
        let mut buf = BytesMut::new();
        header.write(&mut buf).unwrap();
        assert_eq!(buf.len(), 9);
        assert_eq!(Header::read(&buf).unwrap(), header);
    }
}
