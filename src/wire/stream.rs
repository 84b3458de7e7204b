//! Connections as an actor sees them: a connected local socket split into
//! halves, a reader whose frames are tagged with their connection, and a
//! writer that can be cut off, for actors that outlive their connections.

use std::cell::Cell;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures::StreamExt;
use interprocess::local_socket::tokio::Stream as LocalStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::FramedRead;

use super::channel::{channel, ChannelReader, ChannelWriter};
use super::frame::{Frame, FrameCodec, FrameError};

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

/// What one connection's reader reports: a frame (or a read error), or,
/// as `None`, its end; tagged with the connection it came from.
pub(crate) struct Inbound {
    pub(crate) connection: u64,
    pub(crate) event: Option<Result<Frame, FrameError>>,
}

/// The frames read from connection `connection`, then `None` at its end.
pub(crate) fn inbound(
    reader: Box<dyn AsyncRead + Unpin>,
    max_frame_len: usize,
    connection: u64,
) -> impl futures::Stream<Item = Inbound> {
    FramedRead::new(reader, FrameCodec::new(max_frame_len))
        .map(Some)
        .chain(futures::stream::once(std::future::ready(None)))
        .map(move |event| Inbound { connection, event })
}

/// The writing end of a connection, which can be cut off: once severed,
/// writes succeed without going anywhere.
pub(crate) struct Severable {
    inner: Box<dyn AsyncWrite + Unpin>,
    severed: Rc<Cell<bool>>,
}

impl Severable {
    /// A writer over `inner`, and the switch that severs it.
    pub(crate) fn new(inner: Box<dyn AsyncWrite + Unpin>) -> (Self, Rc<Cell<bool>>) {
        let severed = Rc::new(Cell::new(false));
        let writer = Self {
            inner,
            severed: severed.clone(),
        };
        (writer, severed)
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.severed.get() {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(task, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.severed.get() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(task)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.severed.get() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(task)
    }
}
