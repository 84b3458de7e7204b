//! Length-prefixed frames: a codec that refuses oversized lengths before
//! allocating, and splits each body into its header and payload without
//! copying the payload.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::envelope::Header;
use super::scm::MAX_DESCRIPTORS_PER_FRAME;

/// The descriptors a frame carries (shared memory its payload refers to,
/// see [`SharedBytes`](crate::SharedBytes)), shared with whoever keeps them
/// to send again. One pointer wide, and no allocation when empty (as for
/// nearly every frame): frames are moved through several layers.
#[derive(Debug, Clone, Default)]
#[allow(clippy::box_collection)] // the box on purpose: one pointer, not three
pub(crate) struct Descriptors(Option<Box<Vec<Arc<OwnedFd>>>>);

impl Descriptors {
    /// None.
    pub(crate) fn new() -> Self {
        Self(None)
    }

    /// Adds one.
    pub(crate) fn push(&mut self, descriptor: Arc<OwnedFd>) {
        self.0.get_or_insert_with(Box::default).push(descriptor);
    }

    /// Drops them all (they were sent).
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

impl std::ops::Deref for Descriptors {
    type Target = [Arc<OwnedFd>];

    fn deref(&self) -> &[Arc<OwnedFd>] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl FromIterator<Arc<OwnedFd>> for Descriptors {
    fn from_iter<I: IntoIterator<Item = Arc<OwnedFd>>>(iter: I) -> Self {
        let all: Vec<_> = iter.into_iter().collect();
        Self((!all.is_empty()).then(|| Box::new(all)))
    }
}

/// One frame: a header, the (possibly empty) payload behind it, and the
/// descriptors that travel with it (over a Unix socket only).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) header: Header,
    pub(crate) payload: Bytes,
    pub(crate) descriptors: Descriptors,
}

impl Frame {
    /// A frame without descriptors.
    pub(crate) fn new(header: Header, payload: Bytes) -> Self {
        Self {
            header,
            payload,
            descriptors: Descriptors::new(),
        }
    }

    /// A frame without a payload.
    pub(crate) fn bare(header: Header) -> Self {
        Self::new(header, Bytes::new())
    }

    /// This request frame, for request `id` (other frames as they are).
    pub(crate) fn numbered(mut self, id: u64) -> Self {
        if let Header::Request { id: number, .. } = &mut self.header {
            *number = id;
        }
        self
    }
}

impl PartialEq for Frame {
    /// Same header, same payload, as many descriptors.
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.payload == other.payload
            && self.descriptors.len() == other.descriptors.len()
    }
}

impl Eq for Frame {}

/// Bytes a frame adds around its header and payload: the body length, the
/// header length and the number of descriptors the frame carries.
const PREFIX_LEN: usize = 9;

/// What a frame adds to its payload, at most: the length prefixes and a
/// header (a request's carries its message's wire name, the others less).
/// A sender checks `payload + MAX_OVERHEAD` against the frame limit before
/// it writes a request, a reply or an event, so that a frame it writes is
/// never one the peer must refuse.
pub(crate) const MAX_OVERHEAD: usize = 256;

/// Encodes and decodes [`Frame`]s. The length prefix is checked against the
/// maximum before any buffer grows to hold the body.
///
/// Written by hand rather than on `tokio_util`'s `LengthDelimitedCodec`:
/// that codec consumes the prefix before the body arrives, so a check of
/// the prefix cannot tell a new frame from the middle of one.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    max_frame_len: usize,
}

impl FrameCodec {
    /// A codec that accepts bodies of at most `max_frame_len` bytes.
    pub(crate) fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }
}

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        Ok(self.decode_counted(src)?.map(|(frame, _)| frame))
    }
}

impl FrameCodec {
    /// As [`Decoder::decode`], with the number of descriptors the frame
    /// says it carries (which the caller, holding what arrived, attaches).
    pub(crate) fn decode_counted(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(Frame, usize)>, FrameError> {
        // The length prefix stays in the buffer until the whole frame has
        // arrived, so it is read (and checked) at the start of every frame
        // and never mistaken for bytes inside one.
        let Some(prefix) = src.get(..4) else {
            return Ok(None);
        };
        let body_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if body_len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                size: body_len,
                limit: self.max_frame_len,
            });
        }
        let frame_len = 4 + body_len;
        if src.len() < frame_len {
            // Room for the rest of this frame, and no more.
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(frame_len);
        frame.advance(4);
        parse_body(frame.freeze()).map(Some)
    }
}

/// Decodes a buffer that holds exactly one whole frame.
pub(crate) fn decode_one(mut buf: BytesMut, max_frame_len: usize) -> Result<Frame, FrameError> {
    match FrameCodec::new(max_frame_len).decode(&mut buf)? {
        Some(frame) if buf.is_empty() => Ok(frame),
        Some(_) => Err(FrameError::Malformed("bytes after the frame".into())),
        None => Err(FrameError::Malformed("truncated frame".into())),
    }
}

/// Splits a frame's body into its frame and the number of descriptors it
/// says it carries.
fn parse_body(mut body: Bytes) -> Result<(Frame, usize), FrameError> {
    if body.len() < 5 {
        return Err(FrameError::Malformed(format!(
            "body of {} bytes has no header length and descriptor count",
            body.len()
        )));
    }
    let header_len = body.get_u32_le() as usize;
    let descriptors = usize::from(body.get_u8());
    if descriptors > MAX_DESCRIPTORS_PER_FRAME {
        return Err(FrameError::Malformed(format!(
            "{descriptors} descriptors announced, over the limit of {MAX_DESCRIPTORS_PER_FRAME}"
        )));
    }
    if header_len > body.len() {
        return Err(FrameError::Malformed(format!(
            "header length {header_len} exceeds the {} bytes left in the frame",
            body.len()
        )));
    }
    let header = Header::read(&body[..header_len])
        .map_err(|e| FrameError::Malformed(format!("undecodable header: {e}")))?;
    let frame = Frame::new(header, body.split_off(header_len));
    Ok((frame, descriptors))
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    /// Encodes the frame's bytes only: its descriptors cannot travel in a
    /// byte buffer (the frame writer sends them).
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_parts(&frame.header, &frame.payload, self.max_frame_len, dst)
    }
}

/// Appends one frame made of `header` and `payload` to `dst`; on error `dst`
/// is left as it was.
pub(crate) fn encode_parts(
    header: &Header,
    payload: &[u8],
    max_frame_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    dst.reserve(PREFIX_LEN + 32 + payload.len());
    encode_head(header, payload.len(), 0, max_frame_len, dst)?;
    dst.extend_from_slice(payload);
    Ok(())
}

/// Appends the head of a frame (its length prefixes, its descriptor count
/// and `header`) to `dst`, for a payload of `payload_len` bytes that the
/// caller writes right after it, wherever those bytes are (the frame writer
/// hands a large payload to the socket as it is, without copying it behind
/// the head), and `descriptors` descriptors sent with its first byte. On
/// error `dst` is left as it was.
pub(crate) fn encode_head(
    header: &Header,
    payload_len: usize,
    descriptors: usize,
    max_frame_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    if descriptors > MAX_DESCRIPTORS_PER_FRAME {
        return Err(FrameError::Malformed(format!(
            "{descriptors} descriptors in one frame, over the limit of {MAX_DESCRIPTORS_PER_FRAME}"
        )));
    }
    let start = dst.len();
    dst.put_u64_le(0); // both lengths, patched below
    dst.put_u8(descriptors as u8);
    if let Err(e) = header.write(dst) {
        dst.truncate(start);
        return Err(FrameError::Malformed(format!("unencodable header: {e}")));
    }
    let header_len = dst.len() - start - PREFIX_LEN;
    let body_len = PREFIX_LEN - 4 + header_len + payload_len;
    if body_len > max_frame_len {
        dst.truncate(start);
        return Err(FrameError::TooLarge {
            size: body_len,
            limit: max_frame_len,
        });
    }
    dst[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    dst[start + 4..start + 8].copy_from_slice(&(header_len as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RemoteError;

    fn encoded(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new(1 << 20)
            .encode(frame.clone(), &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn frames_round_trip_and_split_at_boundaries() {
        let frames = [
            Frame::new(
                Header::Request {
                    id: 7,
                    name: "ping".into(),
                },
                Bytes::from_static(b"\x00\xffpayload"),
            ),
            Frame::bare(Header::Error {
                id: 8,
                error: RemoteError::new("Bad", "ünïcödé"),
            }),
            Frame::bare(Header::Shutdown),
        ];
        let mut stream = BytesMut::new();
        for f in &frames {
            stream.extend_from_slice(&encoded(f));
        }
        // Feed the stream one byte at a time: every frame comes out whole.
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in stream {
            buf.put_u8(byte);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { size, limit: 1024 } if size == u32::MAX as usize)
        );
        assert!(
            buf.capacity() < 1024,
            "no buffer was grown for the claimed size"
        );
    }

    #[test]
    fn a_header_length_past_the_body_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(9);
        buf.put_u32_le(1000);
        buf.put_u8(0);
        buf.put_u32_le(0);
        let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[test]
    fn garbage_headers_are_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(9);
        buf.put_u32_le(4);
        buf.put_u8(0);
        buf.put_u32_le(0xc1c1c1c1); // 0xc1 is no header kind
        let err = FrameCodec::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[test]
    fn encoding_over_the_limit_fails_and_leaves_the_buffer_alone() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode_parts(&Header::Reply { id: 1 }, &[0; 2000], 1024, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(&buf[..], b"keep");
    }
}
