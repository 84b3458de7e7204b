//! Connections as an actor sees them: a connection's two ends (a Unix
//! socket, which can pass descriptors, or any byte stream), a reader whose
//! frames are tagged with their connection, and the split of a connected
//! local socket into its halves.

use std::io;
use std::os::fd::OwnedFd;

use futures::StreamExt;
use interprocess::local_socket::tokio::Stream as LocalStream;
use tokio::io::{AsyncRead, AsyncWrite};

use super::channel::{channel, ChannelReader, ChannelWriter};
use super::frame::{Frame, FrameError};
use super::reader::FrameReader;

/// The two halves of a connection.
pub(crate) type Halves = (ChannelReader, ChannelWriter);

/// Turns a connected local socket into a [`channel`], split into halves.
/// (`interprocess` connects, listens and reads peer credentials; but its
/// stream's `poll_shutdown` does nothing, and a connection given up must
/// tell the peer it ended, which the channel's writer does on `shutdown`
/// and on drop.)
pub(crate) fn split(stream: LocalStream) -> io::Result<Halves> {
    #[allow(unreachable_patterns)] // one variant on Unix
    let fd = match stream {
        LocalStream::UdSocket(stream) => OwnedFd::try_from(stream)?,
        _ => return Err(io::Error::other("not a Unix domain socket")),
    };
    channel(std::os::unix::net::UnixStream::from(fd))
}

/// Splits a tokio Unix stream (one a handshake was read from) into the
/// halves of a [`channel`].
pub(crate) fn split_tokio(stream: tokio::net::UnixStream) -> io::Result<Halves> {
    channel(stream.into_std()?)
}

/// The end a connection's frames are read from. A Unix socket is read
/// with `recvmsg`, which also takes the descriptors a frame carries (a
/// plain `read` would silently close them); any other stream carries
/// bytes only.
pub(crate) enum ReadEnd {
    Socket(ChannelReader),
    Stream(Box<dyn AsyncRead + Unpin>),
}

/// The end a connection's frames are written to: a Unix socket (which can
/// pass descriptors with `sendmsg`) or any byte stream.
pub(crate) enum WriteEnd {
    Socket(ChannelWriter),
    Stream(Box<dyn AsyncWrite + Unpin>),
}

impl From<ChannelReader> for ReadEnd {
    fn from(half: ChannelReader) -> Self {
        ReadEnd::Socket(half)
    }
}

impl From<Box<dyn AsyncRead + Unpin>> for ReadEnd {
    fn from(stream: Box<dyn AsyncRead + Unpin>) -> Self {
        ReadEnd::Stream(stream)
    }
}

impl From<ChannelWriter> for WriteEnd {
    fn from(half: ChannelWriter) -> Self {
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
