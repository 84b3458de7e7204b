//! [`Json`]: JSON through `serde_json`, behind the `json` feature.

use bytes::{BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use super::{CodecError, Serializer};

/// JSON through [`serde_json`](https://docs.rs/serde_json) (feature
/// `json`): self-describing and readable, so every serde attribute works
/// (`untagged`, `flatten`, `serde_json::Value`), and a field added with
/// `#[serde(default)]` is read by an older peer that ignores it — but
/// larger and slower than [`MessagePack`](crate::MessagePack).
///
/// ```
/// use isolated_workers::Json;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize)] pub struct Ping { pub text: String }
/// # #[derive(Debug, Serialize, Deserialize)] pub struct Pong { pub text: String }
///
/// isolated_workers::contract! {
///     pub Readable (version = 1, serializer = Json) {
///         Ping => Pong,
///     }
/// }
/// ```
///
/// **JSON has no byte strings.** `bytes::Bytes` and `#[serde(with =
/// "serde_bytes")]` fields become arrays of numbers, `[0,255,17,…]`: up to
/// four bytes on the wire per byte of data, and a number to parse for each.
/// For binary payloads of any size choose [`MessagePack`](crate::MessagePack)
/// or `Postcard`, or carry the bytes as a base64 string.
///
/// Other JSON limits apply: map keys must be strings or numbers, and
/// non-finite floats (`NaN`, infinities) encode as `null`, which does not
/// decode as a float.
///
/// Decoding allocates in proportion to its input: JSON has no length
/// prefixes to lie with, and `serde_json` refuses values nested deeper than
/// 128 levels. Anything but whitespace after the value is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Serializer for Json {
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError> {
        serde_json::to_writer(out.writer(), value).map_err(|e| CodecError(format!("json: {e}")))
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError(format!("json: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::wire::serializer::tests::assert_small;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Blob {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn bytes_become_an_array_of_numbers() {
        let blob = Blob {
            data: vec![0, 255, 17],
        };
        let mut out = BytesMut::from(&b"kept"[..]);
        Json::encode(&blob, &mut out).unwrap();
        assert_eq!(&out[..], br#"kept{"data":[0,255,17]}"#);
        assert_eq!(Json::decode::<Blob>(&out[4..]).unwrap(), blob);
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        assert!(Json::decode::<u32>(b"7 \n").is_ok());
        let err = Json::decode::<u32>(b"7 8").unwrap_err();
        assert!(err.0.contains("trailing"), "{err}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = Json::decode::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert!(err.0.contains("recursion limit"), "{err}");
    }

    #[test]
    fn a_huge_claimed_length_is_an_error_not_an_allocation() {
        // JSON claims no lengths; the nearest things are values cut short.
        for garbage in [
            &b"[1,2,3"[..],
            br#"{"data":[1,2,"#,
            br#""unterminated"#,
            &b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["[..],
        ] {
            assert_small(|| Json::decode::<Vec<u64>>(garbage), garbage);
            assert_small(|| Json::decode::<Blob>(garbage), garbage);
            assert_small(|| Json::decode::<String>(garbage), garbage);
            assert_small(|| Json::decode::<serde_json::Value>(garbage), garbage);
        }
        let garbage = "[[],".repeat(10_000);
        assert_small(
            || Json::decode::<Vec<Vec<u64>>>(garbage.as_bytes()),
            garbage.as_bytes(),
        );
    }
}
