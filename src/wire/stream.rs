//! Connections as an actor sees them: a connection's two ends (a Unix
//! socket, which can pass descriptors, or any byte stream), a reader whose
//! frames are tagged with their connection, and the split of a connected
//! local socket into its halves.

use std::io;
use std::os::fd::OwnedFd;

use futures::StreamExt;
use interprocess::local_socket::tokio::Stream as LocalStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{Frame, FrameError};
use super::reader::FrameReader;

/// The two halves of a connection.
pub(crate) type Halves = (OwnedReadHalf, OwnedWriteHalf);

/// Turns a connected local socket into tokio's Unix stream, split into
/// owned halves. (`interprocess` connects, listens and reads peer
/// credentials; but its stream's `poll_shutdown` does nothing, and a
/// connection given up must tell the peer it ended, which tokio's write
/// half does on `shutdown` and on drop.)
pub(crate) fn split(stream: LocalStream) -> io::Result<Halves> {
    #[allow(unreachable_patterns)] // one variant on Unix
    let fd = match stream {
        LocalStream::UdSocket(stream) => OwnedFd::try_from(stream)?,
        _ => return Err(io::Error::other("not a Unix domain socket")),
    };
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(tokio::net::UnixStream::from_std(stream)?.into_split())
}

/// The end a connection's frames are read from. A Unix socket is read
/// with `recvmsg`, which also takes the descriptors a frame carries (a
/// plain `read` would silently close them); any other stream carries
/// bytes only.
pub(crate) enum ReadEnd {
    Socket(OwnedReadHalf),
    Stream(Box<dyn AsyncRead + Unpin>),
}

/// The end a connection's frames are written to: a Unix socket (which can
/// pass descriptors with `sendmsg`) or any byte stream.
pub(crate) enum WriteEnd {
    Socket(OwnedWriteHalf),
    Stream(Box<dyn AsyncWrite + Unpin>),
}

impl From<OwnedReadHalf> for ReadEnd {
    fn from(half: OwnedReadHalf) -> Self {
        ReadEnd::Socket(half)
    }
}

impl From<Box<dyn AsyncRead + Unpin>> for ReadEnd {
    fn from(stream: Box<dyn AsyncRead + Unpin>) -> Self {
        ReadEnd::Stream(stream)
    }
}

impl From<OwnedWriteHalf> for WriteEnd {
    fn from(half: OwnedWriteHalf) -> Self {
        WriteEnd::Socket(half)
    }
}

impl From<Box<dyn AsyncWrite + Unpin>> for WriteEnd {
    fn from(stream: Box<dyn AsyncWrite + Unpin>) -> Self {
        WriteEnd::Stream(stream)
    }
}

impl ReadEnd {
    /// A reading end over `bytes`, for tests.
    #[cfg(test)]
    pub(crate) fn of_bytes(bytes: Vec<u8>) -> Self {
        ReadEnd::Stream(Box::new(std::io::Cursor::new(bytes)))
    }
}

impl WriteEnd {
    /// Whether descriptors can travel on this end (a Unix socket).
    pub(crate) fn passes_descriptors(&self) -> bool {
        matches!(self, WriteEnd::Socket(_))
    }
}

/// What one connection's reader reports: a frame (or a read error), or,
/// as `None`, its end; tagged with the connection it came from.
pub(crate) struct Inbound {
    pub(crate) connection: u64,
    pub(crate) event: Option<Result<Frame, FrameError>>,
}

/// The frames read from connection `connection`, then `None` at its end.
pub(crate) fn inbound(
    reader: ReadEnd,
    max_frame_len: usize,
    connection: u64,
) -> impl futures::Stream<Item = Inbound> {
    FrameReader::new(reader, max_frame_len)
        .map(Some)
        .chain(futures::stream::once(std::future::ready(None)))
        .map(move |event| Inbound { connection, event })
}
