//! [`Postcard`]: the `postcard` format, behind the `postcard` feature.

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};

use super::guard::{Guarded, Limits};
use super::{CodecError, Serializer};

/// How deep a decoded value may nest (postcard itself sets no limit, and a
/// deeply nested input would overflow the stack).
const MAX_DEPTH: usize = 128;

/// How many elements of variable-length sequences and maps a value may hold
/// beyond one per input byte: room for elements that encode to no bytes at
/// all (`()`, unit and empty structs), whose count is otherwise bounded by
/// nothing but the claimed length.
const ZERO_BYTE_ELEMENTS: usize = 64 * 1024;

/// [postcard](https://docs.rs/postcard): a compact binary format that is
/// not self-describing (feature `postcard`). Integers are varints, structs
/// are their fields in order, with no names and no tags, so messages are
/// smaller than MessagePack's and quick to encode and decode.
///
/// ```
/// use isolated_workers::Postcard;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] pub struct Ping { pub text: String }
/// # #[derive(Debug, Serialize, Deserialize)] pub struct Pong { pub text: String }
///
/// isolated_workers::contract! {
///     pub Compact (version = 1, serializer = Postcard) {
///         Ping => Pong,
///     }
/// }
/// ```
///
/// What not being self-describing costs:
///
/// - **No `deserialize_any`.** Types that decide what to decode by looking
///   at the input do not work: `#[serde(untagged)]` and internally tagged
///   enums (`#[serde(tag = "..")]` alone), `#[serde(flatten)]`,
///   `serde_json::Value` and other "any value" types. They fail to decode
///   (or, for `flatten`, to encode).
/// - **Fields are positional.** The encoding holds no field names, so both
///   sides must agree on every field, in order: adding, removing or
///   reordering a field — even an `Option` or a `#[serde(default)]` one —
///   changes the format. Bump the contract's `version` with it, so that a
///   host and worker built from different revisions are refused at the
///   handshake instead of misreading each other. `#[serde(skip_serializing_if)]`
///   breaks decoding outright.
/// - **Sequences need a known length** when encoded: a `Serialize` impl
///   that calls `serialize_seq(None)` (some iterator adapters do) fails.
/// - **Terse errors.** postcard reports *that* a custom check failed
///   (an unknown enum variant, a missing field) but not which.
///
/// Byte strings are native: `bytes::Bytes` and `#[serde(with =
/// "serde_bytes")]` fields take their length and their bytes.
///
/// Decoding is guarded against hostile input: the lengths sequences and
/// maps claim are believed, for preallocation, only as far as the input
/// could hold them (one element per input byte, for the whole value); a
/// value may nest at most 128 levels deep, and hold at most 65 536 sequence
/// or map elements beyond one per input byte (which only a long sequence
/// of values that encode to no bytes, such as `()`, can reach). Bytes left
/// over after the value are an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Serializer for Postcard {
    const NAME: &'static str = "postcard";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError> {
        ::postcard::serialize_with_flavor(value, Append(out))
            .map_err(|e| CodecError(format!("postcard: {e}")))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        let limits = Limits::new(
            bytes.len(),
            MAX_DEPTH,
            bytes.len().saturating_add(ZERO_BYTE_ELEMENTS),
        );
        let mut deserializer = ::postcard::Deserializer::from_bytes(bytes);
        let value = T::deserialize(Guarded::new(&mut deserializer, &limits))
            .map_err(|e| CodecError(format!("postcard: {}", limits.explain(e))))?;
        let rest = deserializer
            .finalize()
            .map_err(|e| CodecError(format!("postcard: {e}")))?;
        if !rest.is_empty() {
            return Err(CodecError(format!(
                "postcard: {} bytes left over after the value",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// A postcard output that appends to a `BytesMut`.
struct Append<'a>(&'a mut BytesMut);

impl ::postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> ::postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> ::postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn finalize(self) -> ::postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;
    use crate::wire::serializer::tests::assert_small;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Blob {
        id: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    fn encode<T: Serialize>(value: &T) -> BytesMut {
        let mut out = BytesMut::new();
        Postcard::encode(value, &mut out).unwrap();
        out
    }

    #[test]
    fn appends_and_round_trips() {
        let blob = Blob {
            id: 300,
            data: vec![0, 1, 0xff],
        };
        let mut out = BytesMut::from(&b"kept"[..]);
        Postcard::encode(&blob, &mut out).unwrap();
        assert_eq!(&out[..4], b"kept");
        // varint 300 = [0xac, 0x02]; byte-string length 3; the bytes.
        assert_eq!(&out[4..], &[0xac, 0x02, 3, 0, 1, 0xff]);
        assert_eq!(Postcard::decode::<Blob>(&out[4..]).unwrap(), blob);
    }

    #[test]
    fn left_over_bytes_are_an_error() {
        let mut out = encode(&7u32);
        out.extend_from_slice(&[0]);
        let err = Postcard::decode::<u32>(&out).unwrap_err();
        assert!(err.0.contains("1 bytes left over"), "{err}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Node([Node([... Leaf ...])]), a million levels: 3 bytes a level.
        let levels = 1_000_000;
        let mut bytes = [1u8, 1].repeat(levels);
        bytes.push(0);
        let err = Postcard::decode::<Tree>(&bytes).unwrap_err();
        assert!(err.0.contains("deeper than 128"), "{err}");
        // 60 levels are fine.
        let mut tree = Tree::Leaf;
        for _ in 0..60 {
            tree = Tree::Node(vec![tree]);
        }
        assert_eq!(Postcard::decode::<Tree>(&encode(&tree)).unwrap(), tree);
    }

    #[test]
    fn values_of_no_bytes_are_bounded_by_a_budget_not_by_the_claimed_length() {
        // Vec<()> claiming u64::MAX elements: each takes no bytes.
        let mut claim = vec![0xff; 9];
        claim.push(0x01);
        let err = Postcard::decode::<Vec<()>>(&claim).unwrap_err();
        assert!(err.0.contains("more elements than its input"), "{err}");
        // A long but reasonable one round-trips.
        let units = vec![(); 60_000];
        assert_eq!(Postcard::decode::<Vec<()>>(&encode(&units)).unwrap(), units);
    }

    #[test]
    fn a_huge_claimed_length_is_an_error_not_an_allocation() {
        // A sequence claiming u32::MAX u64s, followed by nothing.
        let garbage = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_small(|| Postcard::decode::<Vec<u64>>(&garbage), &garbage);
        // A byte string claiming 4 GiB.
        let garbage = [0x01, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_small(|| Postcard::decode::<Blob>(&garbage), &garbage);
        // A map claiming u32::MAX entries (postcard passes a map's claimed
        // length on as a size hint uncapped: 2 MiB without the guard).
        let garbage = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2];
        assert_small(|| Postcard::decode::<HashMap<u64, u64>>(&garbage), &garbage);
    }

    #[test]
    fn claimed_lengths_nested_do_not_add_up_to_an_allocation() {
        // 60 levels of `Node(a sequence claiming 16 383 trees)`, each claim
        // within what the input holds, so postcard itself would pass it on.
        let garbage = [1u8, 0xff, 0x7f].repeat(60);
        assert_small(|| Postcard::decode::<Tree>(&garbage), &garbage);
        let garbage = [0xff, 0x7f, 0xff, 0x7f].repeat(1000);
        assert_small(
            || Postcard::decode::<Vec<HashMap<u64, u64>>>(&garbage),
            &garbage,
        );
    }
}
