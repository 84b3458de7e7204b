//! Reading frames off a connection: the bytes go into one buffer that
//! grows to hold the frame being read and no more (so a large payload is
//! read straight into the memory it is then handed on in, and not copied
//! again), and the descriptors a Unix socket passes are taken with them.
//!
//! A peer is not trusted with descriptors either: a frame says how many it
//! carries, and the writer sends them with the frame's first byte, so they
//! have arrived by the time the frame is whole. A frame announcing more
//! than arrived, descriptors left over once every frame begun is read, or
//! more waiting than one frame may carry, is a malformed stream.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::Interest;

use super::frame::{Frame, FrameCodec, FrameError};
use super::scm;
use super::stream::ReadEnd;

/// What a read asks room for, at least: small frames arrive many to a
/// read.
const READ_AHEAD: usize = 64 << 10;

/// The frames of one connection, as a stream; after an error or the end of
/// the connection it yields nothing more.
pub(crate) struct FrameReader {
    end: ReadEnd,
    codec: FrameCodec,
    buffer: BytesMut,
    /// Descriptors received and not yet claimed by the frame they came
    /// with.
    descriptors: Vec<OwnedFd>,
    done: bool,
}

impl FrameReader {
    pub(crate) fn new(end: ReadEnd, max_frame_len: usize) -> Self {
        Self {
            end,
            codec: FrameCodec::new(max_frame_len),
            buffer: BytesMut::new(),
            descriptors: Vec::new(),
            done: false,
        }
    }

    /// The next frame in the buffer, if a whole one is there.
    fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
        let decoded = self.codec.decode_counted(&mut self.buffer)?;
        let frame = match decoded {
            Some((mut frame, count)) => {
                if count > self.descriptors.len() {
                    return Err(FrameError::Malformed(format!(
                        "a frame announced {count} descriptors, {} came with it",
                        self.descriptors.len()
                    )));
                }
                if count > 0 {
                    frame.descriptors = self.descriptors.drain(..count).map(Arc::new).collect();
                }
                Some(frame)
            }
            None => None,
        };
        if self.buffer.is_empty() && !self.descriptors.is_empty() {
            // A writer sends descriptors with the first byte of their
            // frame: with no frame begun, these belong to none.
            return Err(FrameError::Malformed(format!(
                "{} descriptors more than the frames announced",
                self.descriptors.len()
            )));
        }
        Ok(frame)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, task: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // `decode` reserved room for the rest of a frame begun; otherwise
        // read ahead.
        if self.buffer.capacity() == self.buffer.len() {
            self.buffer.reserve(READ_AHEAD);
        }
        match &mut self.end {
            ReadEnd::Stream(stream) => {
                tokio_util::io::poll_read_buf(Pin::new(stream), task, &mut self.buffer)
            }
            ReadEnd::Socket(half) => loop {
                let socket = half.as_ref();
                ready!(socket.poll_read_ready(task))?;
                let room = self.buffer.capacity() - self.buffer.len();
                let held = self.descriptors.len();
                let mut drained = None;
                let read = socket.try_io(Interest::READABLE, || {
                    let read = scm::recv(socket.as_fd(), &mut self.buffer, &mut self.descriptors)?;
                    // A read that fell short of the room is one that found
                    // the socket drained (as tokio's own reads assume),
                    // unless descriptors came with it: the kernel ends a
                    // read after the bytes that carried some.
                    if read > 0 && read < room && self.descriptors.len() == held {
                        // Said with a `WouldBlock`, which clears the
                        // readiness (unless more arrived meanwhile), sparing
                        // the read that would only find nothing.
                        drained = Some(read);
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    Ok(read)
                });
                if self.descriptors.len() > scm::MAX_DESCRIPTORS_PER_FRAME {
                    let e = "more descriptors waiting than a frame may carry";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                match (read, drained) {
                    (_, Some(read)) => return Poll::Ready(Ok(read)),
                    (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    (read, None) => return Poll::Ready(read),
                }
            },
        }
    }
}

impl futures::Stream for FrameReader {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(this.poll_fill(task)) {
                Ok(0) => {
                    this.done = true;
                    if this.buffer.is_empty() {
                        return Poll::Ready(None);
                    }
                    let cut =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "bytes remaining on stream");
                    return Poll::Ready(Some(Err(FrameError::Io(cut))));
                }
                Ok(_) => {}
                // Descriptors the peer should not have sent.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    this.done = true;
                    return Poll::Ready(Some(Err(FrameError::Malformed(e.to_string()))));
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(FrameError::Io(e))));
                }
            }
        }
    }
}
