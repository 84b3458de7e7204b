//! Connections as an actor sees them: a local-socket stream shared by the
//! reading and the writing side of one actor (`interprocess` deprecates its
//! split halves in favour of sharing the stream, since `&Stream` reads and
//! writes); a reader whose frames are tagged with their connection, and a
//! writer that can be cut off, for actors that outlive their connections.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::StreamExt;
use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::FramedRead;

use super::frame::{Frame, FrameCodec, FrameError};

/// One handle on a shared stream; each handle reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct SharedStream(Rc<Stream>);

impl SharedStream {
    /// Two handles on `stream`: one to read from, one to write to.
    pub(crate) fn split(stream: Stream) -> (Self, Self) {
        let shared = Self(Rc::new(stream));
        (shared.clone(), shared)
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}

/// What one connection's reader reports: a frame (or a read error), or,
/// as `None`, its end; tagged with the connection it came from.
pub(crate) struct Inbound {
    pub(crate) link: u64,
    pub(crate) event: Option<Result<Frame, FrameError>>,
}

/// The frames read from connection `link`, then `None` at its end.
pub(crate) fn inbound(
    reader: Box<dyn AsyncRead + Unpin>,
    max_frame_len: usize,
    link: u64,
) -> impl futures::Stream<Item = Inbound> {
    FramedRead::new(reader, FrameCodec::new(max_frame_len))
        .map(Some)
        .chain(futures::stream::once(std::future::ready(None)))
        .map(move |event| Inbound { link, event })
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
