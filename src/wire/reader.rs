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
//!
//! A large request or reply may come in chunks (`Opens`, then
//! `Continues`, see `wire::writer`), between which other frames pass: the
//! reader puts it back together and hands it on whole; for a request, it
//! first hands on the `Opens` header alone (no payload), so that a worker
//! counts the request read in the order the host wrote (and numbered) it,
//! not in the order requests are whole (see `ReadMark`). A peer may have at
//! most [`MAX_OPEN_PARTS`] open at once, whose payloads add up to at most
//! the frame limit, so what it can make the reader hold stays bounded as
//! for whole frames.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};

use super::envelope::Header;
use super::frame::{Descriptors, Frame, FrameCodec, FrameError};
use super::scm;
use super::stream::ReadEnd;
use super::writer::MAX_OPEN_PARTS;

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
    /// Chunked frames begun and not yet whole.
    parts: Vec<Part>,
    /// The buffer of the last chunked frame made whole: the next one is
    /// put together in the same memory once the frame handed on is
    /// dropped (a fresh megabyte for each costs its page faults).
    spare: BytesMut,
    /// The frame limit, which the payloads of `parts` share.
    max_frame_len: usize,
    done: bool,
}

/// A chunked frame being put back together.
struct Part {
    part: u32,
    header: Header,
    total: usize,
    payload: BytesMut,
    descriptors: Descriptors,
}

impl FrameReader {
    pub(crate) fn new(end: ReadEnd, max_frame_len: usize) -> Self {
        Self {
            end,
            codec: FrameCodec::new(max_frame_len),
            buffer: BytesMut::new(),
            descriptors: Vec::new(),
            parts: Vec::new(),
            spare: BytesMut::new(),
            max_frame_len,
            done: false,
        }
    }

    /// The next whole frame in the buffer, if there is one, chunked frames
    /// put back together.
    fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let Some(frame) = self.decode()? else {
                return Ok(None);
            };
            let at = match frame.header {
                Header::Opens {
                    part,
                    total,
                    header,
                } => {
                    let request = matches!(*header, Header::Request { .. });
                    let notice = request.then(|| Header::Opens {
                        part,
                        total,
                        header: header.clone(),
                    });
                    let at = self.open(part, total as usize, *header, frame.descriptors)?;
                    if let Some(whole) = self.add(at, &frame.payload)? {
                        return Ok(Some(whole));
                    }
                    match notice {
                        Some(notice) => return Ok(Some(Frame::bare(notice))),
                        None => continue,
                    }
                }
                Header::Continues { part } => {
                    if !frame.descriptors.is_empty() {
                        let e = "descriptors with a chunk that continues a frame";
                        return Err(FrameError::Malformed(e.into()));
                    }
                    let Some(at) = self.parts.iter().position(|p| p.part == part) else {
                        let e = format!("a chunk of part {part}, which is not open");
                        return Err(FrameError::Malformed(e));
                    };
                    at
                }
                _ => return Ok(Some(frame)),
            };
            if let Some(whole) = self.add(at, &frame.payload)? {
                return Ok(Some(whole));
            }
        }
    }

    /// Opens chunked frame `part`; its index in `parts`.
    fn open(
        &mut self,
        part: u32,
        total: usize,
        header: Header,
        descriptors: Descriptors,
    ) -> Result<usize, FrameError> {
        let malformed = |e: String| Err(FrameError::Malformed(e));
        if !header.may_be_chunked() {
            return malformed(format!("a chunked {header:?}"));
        }
        if self.parts.iter().any(|p| p.part == part) {
            return malformed(format!("part {part} opened twice"));
        }
        if self.parts.len() >= MAX_OPEN_PARTS {
            return malformed(format!("more than {MAX_OPEN_PARTS} chunked frames open"));
        }
        let open: usize = self.parts.iter().map(|p| p.total).sum();
        if open + total > self.max_frame_len {
            return Err(FrameError::TooLarge {
                size: open + total,
                limit: self.max_frame_len,
            });
        }
        let mut payload = std::mem::take(&mut self.spare);
        payload.reserve(total);
        self.parts.push(Part {
            part,
            header,
            total,
            payload,
            descriptors,
        });
        Ok(self.parts.len() - 1)
    }

    /// Adds `chunk` to the part at `at`; the frame, if it is now whole.
    fn add(&mut self, at: usize, chunk: &[u8]) -> Result<Option<Frame>, FrameError> {
        let part = &mut self.parts[at];
        if part.payload.len() + chunk.len() > part.total {
            let e = format!("chunks of part {} past its {} bytes", part.part, part.total);
            return Err(FrameError::Malformed(e));
        }
        part.payload.put_slice(chunk);
        if part.payload.len() < part.total {
            return Ok(None);
        }
        let mut part = self.parts.swap_remove(at);
        let payload = part.payload.split().freeze();
        self.spare = part.payload;
        Ok(Some(Frame {
            header: part.header,
            payload,
            descriptors: part.descriptors,
        }))
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
            ReadEnd::Socket(channel) => {
                let room = self.buffer.capacity() - self.buffer.len();
                let (buffer, descriptors) = (&mut self.buffer, &mut self.descriptors);
                let read = ready!(channel.poll_read_with(task, |socket| {
                    let held = descriptors.len();
                    let read = scm::recv(socket, buffer, descriptors)?;
                    // A read that fell short of the room is one that found
                    // the socket drained (as tokio's own reads assume),
                    // unless descriptors came with it: the kernel ends a
                    // read after the bytes that carried some.
                    Ok((read, read > 0 && read < room && descriptors.len() == held))
                }));
                if self.descriptors.len() > scm::MAX_DESCRIPTORS_PER_FRAME {
                    let e = "more descriptors waiting than a frame may carry";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                Poll::Ready(read)
            }
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
            match this.next_frame() {
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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use futures::StreamExt;

    use super::*;
    use crate::wire::frame::encode_parts;

    /// What a reader makes of `frames`: the frames, then its error, if any.
    fn read(frames: &[(Header, usize)], max_frame_len: usize) -> (usize, Option<String>) {
        let mut bytes = BytesMut::new();
        for (header, len) in frames {
            encode_parts(header, &vec![1; *len], usize::MAX, &mut bytes).unwrap();
        }
        let reader = FrameReader::new(ReadEnd::of_bytes(bytes.to_vec()), max_frame_len);
        let read: Vec<_> = futures::executor::block_on(reader.collect());
        let error = read
            .iter()
            .find_map(|r| r.as_ref().err().map(ToString::to_string));
        (read.iter().filter(|r| r.is_ok()).count(), error)
    }

    fn opens(part: u32, total: u32) -> Header {
        let header = Box::new(Header::Reply {
            id: u64::from(part),
        });
        Header::Opens {
            part,
            total,
            header,
        }
    }

    #[test]
    fn a_peer_cannot_open_more_parts_or_more_bytes_than_the_bounds() {
        let too_many: Vec<_> = (0..=MAX_OPEN_PARTS as u32)
            .map(|p| (opens(p, 10), 1))
            .collect();
        let (_, error) = read(&too_many, 1 << 20);
        assert!(error.unwrap().contains("chunked frames open"));
        let (_, error) = read(&[(opens(0, 600), 1), (opens(1, 600), 1)], 1000);
        assert!(error.unwrap().contains("over the limit"));
    }

    #[test]
    fn chunks_must_belong_to_an_open_part_and_stay_within_it() {
        let (_, error) = read(&[(Header::Continues { part: 3 }, 1)], 1 << 20);
        assert!(error.unwrap().contains("not open"));
        let (_, error) = read(
            &[(opens(0, 10), 5), (Header::Continues { part: 0 }, 6)],
            1 << 20,
        );
        assert!(error.unwrap().contains("past its 10 bytes"));
        let (_, error) = read(&[(opens(0, 10), 5), (opens(0, 10), 5)], 1 << 20);
        assert!(error.unwrap().contains("opened twice"));
        let nested = Header::Opens {
            part: 0,
            total: 10,
            header: Box::new(Header::Shutdown),
        };
        let (_, error) = read(&[(nested, 5)], 1 << 20);
        assert!(error.unwrap().contains("a chunked Shutdown"));
    }

    #[test]
    fn a_part_made_whole_is_one_frame() {
        let frames = [
            (opens(0, 10), 4),
            (Header::Continues { part: 0 }, 3),
            (Header::Continues { part: 0 }, 3),
        ];
        assert_eq!(read(&frames, 1 << 20), (1, None));
    }
}
