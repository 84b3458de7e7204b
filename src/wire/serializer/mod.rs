//! How message payloads become bytes: the [`Serializer`] trait and the
//! default, [`MessagePack`].

use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    /// The error for a `#[local]` message asked to cross a process boundary.
    pub fn local_only(message: &str) -> Self {
        Self(format!(
            "`{message}` is a local message: it is moved between threads, never serialized"
        ))
    }
}

/// Turns message payloads into bytes and back. A contract names its
/// serializer, so host and worker always use the same one; its [`NAME`]
/// travels in the handshake so that a mismatch is refused up front.
///
/// Byte payloads should be declared as `bytes::Bytes` or with
/// `#[serde(with = "serde_bytes")]`, so that formats with a native byte
/// string (MessagePack does) do not encode them as arrays of integers.
///
/// [`NAME`]: Serializer::NAME
pub trait Serializer: Send + Sync + 'static {
    /// A stable name for the format, checked in the handshake.
    const NAME: &'static str;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    /// When the value cannot be represented in this format.
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError>;

    /// Decodes a whole value from `bytes`.
    ///
    /// # Errors
    /// When the bytes are not a valid encoding of a `T`. Implementations
    /// must not allocate more than a small multiple of `bytes.len()` for
    /// any input.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// MessagePack through `rmp-serde`, structs encoded as arrays: compact and
/// fast. The default serializer.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

impl Serializer for MessagePack {
    const NAME: &'static str = "msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError> {
        rmp_serde::encode::write(&mut out.writer(), value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        rmp_serde::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Blob {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn bytes_are_encoded_as_a_byte_string_not_an_integer_array() {
        let blob = Blob {
            data: vec![0xff; 1000],
        };
        let mut out = BytesMut::new();
        MessagePack::encode(&blob, &mut out).unwrap();
        // 1 array header + 3 bytes of bin16 header + the bytes themselves.
        assert_eq!(out.len(), 1 + 3 + 1000);
        assert_eq!(MessagePack::decode::<Blob>(&out).unwrap(), blob);
    }

    #[test]
    fn a_huge_claimed_length_is_an_error_not_an_allocation() {
        // array32 claiming 4 billion elements, followed by nothing.
        let garbage = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(MessagePack::decode::<Vec<u64>>(&garbage).is_err());
        // bin32 claiming 4 GiB.
        let garbage = [0x91, 0xc6, 0xff, 0xff, 0xff, 0xff];
        assert!(MessagePack::decode::<Blob>(&garbage).is_err());
    }
}
