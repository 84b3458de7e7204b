//! A local-socket stream shared by the reading and the writing side of one
//! actor. (`interprocess` deprecates its split halves in favour of sharing
//! the stream, since `&Stream` reads and writes.)

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
