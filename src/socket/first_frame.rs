//! The frames of a handshake, read and written on the bare stream before it
//! is handed to the framed codec: a peer not yet trusted gets to send one
//! frame of at most [`MAX_HELLO_LEN`] bytes, and nothing past it is read.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::wire::envelope::Header;

/// Longest first frame accepted before the peer is authenticated.
const MAX_HELLO_LEN: usize = 4096;

/// Reads exactly one frame of bounded size and returns its header. Reads
/// nothing past it, so the stream can be handed on intact. The error says,
/// in words, why there is no frame.
pub(crate) async fn read_first_frame(
    stream: &mut (impl AsyncRead + Unpin),
) -> Result<Header, String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| format!("no hello: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HELLO_LEN {
        return Err(format!(
            "first frame of {len} bytes is over the limit of {MAX_HELLO_LEN}"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("truncated hello: {e}"))?;
    let mut prefixed = bytes::BytesMut::with_capacity(4 + len);
    prefixed.extend_from_slice(&(len as u32).to_le_bytes());
    prefixed.extend_from_slice(&body);
    let frame = crate::wire::frame::decode_one(prefixed, MAX_HELLO_LEN)
        .map_err(|e| format!("bad hello: {e}"))?;
    Ok(frame.header)
}

/// Writes one frame without payload straight to `stream` (before it is
/// handed to a framed reader and writer).
pub(crate) async fn write_bare(
    stream: &mut (impl AsyncWrite + Unpin),
    header: &Header,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut frame = bytes::BytesMut::new();
    crate::wire::frame::encode_parts(header, &[], MAX_HELLO_LEN, &mut frame)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream.write_all(&frame).await
}
