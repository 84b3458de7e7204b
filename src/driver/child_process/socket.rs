//! A worker socket, from both ends: binding one privately, reading the
//! first frame of a peer that is not yet trusted, and checking who the
//! peer is.

use std::io;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream as LocalStream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;

use crate::wire::envelope::Header;

/// Longest first frame accepted before the peer is authenticated.
const MAX_HELLO_LEN: usize = 4096;

/// Listens on a socket at `path` (in a private directory) that only this
/// user may connect to, so that a change of the directory's mode does not
/// open it up.
pub(crate) fn listen(path: &Path) -> io::Result<Listener> {
    let listener = path
        .as_os_str()
        .to_fs_name::<GenericFilePath>()
        .and_then(|name| ListenerOptions::new().name(name).create_tokio())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Compares a presented token with the real one in constant time.
pub(crate) fn token_matches(presented: &str, real: &str) -> bool {
    presented.as_bytes().ct_eq(real.as_bytes()).into()
}

/// Checks, where the OS tells, that the peer runs as this process's user
/// and, if `pid` is given, that it is that process.
pub(crate) fn check_peer(stream: &LocalStream, pid: Option<u32>) -> Result<(), String> {
    let Ok(creds) = stream.peer_creds() else {
        return Ok(());
    };
    if let Some(uid) = creds.euid() {
        let ours = nix::unistd::geteuid().as_raw();
        if uid != ours {
            return Err(format!("peer runs as uid {uid}, not {ours}"));
        }
    }
    if let (Some(expected), Some(actual)) = (pid, creds.pid()) {
        if u32::try_from(actual).ok() != Some(expected) {
            return Err(format!("peer is process {actual}, not {expected}"));
        }
    }
    Ok(())
}

/// Reads exactly one frame of bounded size and returns its header. Reads
/// nothing past it, so the stream can be handed on intact.
pub(crate) async fn read_first_frame<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
) -> Result<(S, Header), String> {
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
    Ok((stream, frame.header))
}

/// A fresh secret for an attach socket: 32 random bytes, hex.
pub(crate) fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Writes one frame without payload straight to `stream` (before it is
/// handed to a framed reader and writer).
pub(crate) async fn write_bare(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    header: &Header,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut frame = bytes::BytesMut::new();
    crate::wire::frame::encode_parts(header, &[], MAX_HELLO_LEN, &mut frame)
        .map_err(|e| io::Error::other(e.to_string()))?;
    stream.write_all(&frame).await
}
