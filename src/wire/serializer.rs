//! How message payloads become bytes: the [`Serializer`] trait, the
//! default, [`MessagePack`], and, behind features, `Json` (`json`) and
//! `Postcard` (`postcard`), each in its own file.

use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

#[cfg(test)]
pub(crate) mod alloc_meter;
mod guard;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "postcard")]
mod postcard;

#[cfg(feature = "json")]
pub use self::json::Json;
#[cfg(feature = "postcard")]
pub use self::postcard::Postcard;

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
/// Built in: [`MessagePack`] (the default), `Json` (feature `json`) and
/// `Postcard` (feature `postcard`). Any type implementing this trait can be
/// named in a contract: `contract! { Name (serializer = MyFormat) { .. } }`;
/// `examples/custom_serializer.rs` writes one.
///
/// Byte payloads should be declared as `bytes::Bytes` or with
/// `#[serde(with = "serde_bytes")]`, so that formats with a native byte
/// string (MessagePack and postcard do; JSON does not) do not encode them
/// as arrays of integers.
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
///
/// Self-describing, so every serde attribute works, but structs travel as
/// arrays of their fields (no names), so adding or reordering a field
/// changes the format: bump the contract's `version` with it.
///
/// Decoding is guarded against hostile input: the lengths sequences and
/// maps claim are believed, for preallocation, only as far as the input
/// could hold them (one element per input byte, for the whole value;
/// beyond that a collection grows with the elements that actually arrive),
/// and values may nest at most 1 024 levels deep (`rmp-serde`'s limit).
/// Without the guard, serde's collections preallocate up to 1 MiB from
/// each claimed length, at every level of a nested value: a few kilobytes
/// of input could take a gigabyte.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

impl Serializer for MessagePack {
    const NAME: &'static str = "msgpack";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError> {
        rmp_serde::encode::write(&mut out.writer(), value).map_err(|e| CodecError(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        // Every MessagePack element takes at least a byte, so the element
        // budget is never reached by a valid input; rmp-serde limits depth.
        let limits = guard::Limits::new(bytes.len(), usize::MAX, bytes.len());
        let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
        T::deserialize(guard::Guarded::new(&mut deserializer, &limits))
            .map_err(|e| CodecError(limits.explain(e)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

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
        assert_small(|| MessagePack::decode::<Vec<u64>>(&garbage), &garbage);
        // bin32 claiming 4 GiB.
        let garbage = [0x91, 0xc6, 0xff, 0xff, 0xff, 0xff];
        assert_small(|| MessagePack::decode::<Blob>(&garbage), &garbage);
        // map32 claiming 4 billion entries.
        let garbage = [0xdf, 0xff, 0xff, 0xff, 0xff];
        assert_small(
            || MessagePack::decode::<HashMap<u64, u64>>(&garbage),
            &garbage,
        );
    }

    /// A recursive type, for nesting.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    #[test]
    fn claimed_lengths_nested_do_not_add_up_to_an_allocation() {
        // 200 levels of `{"Node": array32 claiming 16 million trees}`: 2 200
        // bytes, which without the guard took 200 MiB (1 MiB a level).
        let level = [
            0x81, 0xa4, b'N', b'o', b'd', b'e', 0xdd, 0x00, 0xff, 0xff, 0xff,
        ];
        let garbage = level.repeat(200);
        assert_small(|| MessagePack::decode::<Tree>(&garbage), &garbage);
    }

    #[test]
    fn the_guard_changes_nothing_for_valid_input() {
        let mut tree = Tree::Leaf;
        for _ in 0..100 {
            tree = Tree::Node(vec![Tree::Leaf, tree, Tree::Node(vec![])]);
        }
        let mut out = BytesMut::new();
        MessagePack::encode(&tree, &mut out).unwrap();
        assert_eq!(MessagePack::decode::<Tree>(&out).unwrap(), tree);
        let map: HashMap<String, Vec<u8>> =
            (0..1000).map(|i| (i.to_string(), vec![7; i])).collect();
        let mut out = BytesMut::new();
        MessagePack::encode(&map, &mut out).unwrap();
        assert_eq!(
            MessagePack::decode::<HashMap<String, Vec<u8>>>(&out).unwrap(),
            map
        );
    }

    /// The most a decode may take, at its peak, for `input`.
    pub(crate) fn allowance(input: &[u8]) -> usize {
        64 * input.len() + 4096
    }

    /// Runs a decode of `input` that must fail, and checks that it never
    /// held more memory than [`allowance`].
    pub(crate) fn assert_small<T: std::fmt::Debug>(
        decode: impl FnOnce() -> Result<T, CodecError>,
        input: &[u8],
    ) {
        let (result, peak) = alloc_meter::peak_during(decode);
        assert!(result.is_err(), "decoded {result:?}");
        assert!(
            peak <= allowance(input),
            "{} bytes of input took {peak} bytes of memory",
            input.len()
        );
    }
}
