//! Hooks for this crate's own integration tests, which play a misbehaving
//! worker or an impostor on an attach socket. Not part of the public API.

use std::io::{self, Read};

use bytes::BytesMut;

use crate::socket::env;
use crate::wire::envelope::{Header, Hello};
use crate::wire::frame::{decode_one, encode_head, encode_parts};
use crate::wire::PROTOCOL_VERSION;

/// The environment variable holding the number of the inherited
/// descriptor that is the worker's end of its connection.
pub const CHANNEL_FD_ENV: &str = env::CHANNEL_FD;
/// The environment variable naming the worker to run.
pub const NAME_ENV: &str = env::NAME;
/// The protocol version this build speaks.
pub const PROTOCOL: u32 = PROTOCOL_VERSION;

/// A complete Hello frame, length prefix included.
pub fn hello_frame(
    token: &str,
    protocol: u32,
    contract: &str,
    contract_version: u32,
    serializer: &str,
) -> Vec<u8> {
    frame(
        &Header::Hello(Hello {
            protocol,
            token: token.to_owned(),
            pid: std::process::id(),
            contract: contract.to_owned(),
            contract_version,
            serializer: serializer.to_owned(),
            executable: String::new(),
        }),
        &[],
    )
}

/// A complete Reply frame for request `id`.
pub fn reply_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    frame(&Header::Reply { id }, payload)
}

/// A complete Reply frame for request `id` that says it carries
/// `descriptors` descriptors (which the caller sends with its first byte,
/// or not).
pub fn reply_frame_announcing(id: u64, payload: &[u8], descriptors: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_head(
        &Header::Reply { id },
        payload.len(),
        descriptors,
        usize::MAX,
        &mut out,
    )
    .expect("test frames are encodable");
    out.extend_from_slice(payload);
    out.to_vec()
}

/// A complete Event frame carrying `payload`.
pub fn event_frame(payload: &[u8]) -> Vec<u8> {
    frame(&Header::Event, payload)
}

fn frame(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_parts(header, payload, usize::MAX, &mut out).expect("test frames are encodable");
    out.to_vec()
}

/// Reads one frame; returns the request id if it is a Request, and the
/// header's debug form.
pub fn read_frame(stream: &mut impl Read) -> io::Result<(Option<u64>, String)> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize + 4];
    buf[..4].copy_from_slice(&len);
    stream.read_exact(&mut buf[4..])?;
    let frame = decode_one(BytesMut::from(&buf[..]), usize::MAX).map_err(io::Error::other)?;
    let id = match frame.header {
        Header::Request { id, .. } => Some(id),
        _ => None,
    };
    Ok((id, format!("{:?}", frame.header)))
}

/// The worker's end of its connection, taken as a real worker takes it
/// (from stdin or an inherited descriptor; a read mark sent on it first is
/// received and dropped), in blocking mode.
pub fn take_worker_channel() -> io::Result<std::os::unix::net::UnixStream> {
    let channel = crate::worker::take_channel()?;
    if std::env::var(env::READ_MARK).as_deref() == Ok(env::MARK_ON_CHANNEL) {
        drop(crate::worker::receive_mark(&channel));
    }
    Ok(channel)
}
