//! Writing frames to a connection from inside an actor, in place of
//! actix's `FramedWrite`: each frame's head (length prefixes and header) is
//! encoded straight into the bytes that are written, and a large payload
//! goes to the socket as it is, beside the heads, in one vectored write
//! (`sendmsg`), never copied into a write buffer. A frame that carries
//! descriptors begins a write of its own, which sends them with its first
//! byte: so they arrive with or before the frame, never with an earlier
//! one's bytes alone (see `wire::reader`).
//!
//! Written by hand because actix's writer takes bytes only (its encoder
//! appends every frame, payload included, to one buffer) and has no way
//! to pass descriptors. What the proxy and the worker rely on is kept:
//! frames leave in the order they were written; writing never pauses the
//! actor, whatever the reader's pace; errors reach the actor's
//! [`WriteHandler`]; `close` flushes what is queued, then ends the writer;
//! a severed writer drops what is left. The writer's task is woken only
//! when there is something to write: an idle writer waits on nothing.
//!
//! A request or reply payload over [`CHUNK`] goes in chunks (`Opens`, then
//! `Continues` frames), encoded about a socket buffer ahead, so that a
//! small request or reply written after it waits for that much and not
//! for the whole. Frames still begin in the order they were written (a
//! worker counts a request read when it begins, see `ReadMark`); only
//! requests and their outcomes pass a chunked frame, anything else waits
//! for the chunked frames before it to end.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context as TaskContext, Poll, Waker};

use actix::io::WriteHandler;
use actix::prelude::*;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::envelope::Header;
use super::frame::{encode_head, Descriptors, Frame, FrameError};
use super::scm;
use super::stream::WriteEnd;

/// Payloads up to this size are copied behind their head: a copy this
/// small costs less than a slice of its own in the write.
const INLINE_PAYLOAD: usize = 4 << 10;

/// The most slices one write takes.
const MAX_SLICES: usize = 16;

/// A request or reply payload larger than this is written in chunks of
/// this size, between which other requests and replies pass: a small
/// request written after a large one waits for a chunk, not for the whole.
pub(crate) const CHUNK: usize = 64 << 10;

/// The most chunked frames a writer has begun and not finished; a reader
/// refuses more (each one holds a buffer until it is whole). The payloads
/// of those open add up to at most the frame limit, on both sides.
pub(crate) const MAX_OPEN_PARTS: usize = 16;

/// How far ahead of the socket chunks are encoded: about what a socket
/// buffer holds, so that a write moves that much (about as many writes per
/// MiB as whole frames take), while a small frame written meanwhile waits
/// for no more than this. (Measured pinned to one CPU: 128 KiB and 512 KiB
/// were both slower, for the small requests and for the large.)
const FEED_AHEAD: usize = 256 << 10;

/// How far the socket is behind what was written: the bytes of frames
/// written and not yet taken by the socket. Whoever holds it may wait for
/// the count to fall below its mark.
pub(crate) struct Meter {
    behind: Cell<usize>,
    /// The count below which the waiter is woken.
    mark: usize,
    waker: Cell<Option<Waker>>,
}

impl Meter {
    /// A meter that wakes its waiter once fewer than `mark` bytes are
    /// behind.
    pub(crate) fn new(mark: usize) -> Self {
        Self {
            behind: Cell::new(0),
            mark,
            waker: Cell::new(None),
        }
    }

    /// Whether fewer than the mark are behind; if not, `task` is woken
    /// once they are.
    pub(crate) fn below_mark(&self, task: &TaskContext<'_>) -> bool {
        if self.behind.get() < self.mark {
            return true;
        }
        self.waker.set(Some(task.waker().clone()));
        false
    }

    fn add(&self, n: usize) {
        self.behind.set(self.behind.get() + n);
    }

    fn taken(&self, n: usize) {
        let behind = self.behind.get().saturating_sub(n);
        self.behind.set(behind);
        if behind < self.mark {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

/// The writer of one connection (see the module doc). Dropped, it writes
/// what is queued and ends without telling the actor.
pub(crate) struct FrameWriter {
    shared: Rc<RefCell<Outgoing>>,
}

/// Where a writer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Writes what is queued, then ends.
    Closing,
    /// Drops what is queued and ends.
    Severed,
    /// The writer's handle was dropped: writes what is queued, then ends
    /// without telling the actor.
    Dropped,
}

/// A chunked frame begun: the rest of its payload.
struct Open {
    part: u32,
    total: usize,
    rest: Bytes,
}

/// Bytes to write, and the descriptors to send with the first of them.
struct Piece {
    bytes: Bytes,
    descriptors: Descriptors,
}

/// What the writer and its task share.
struct Outgoing {
    /// `None` once the writer ended (the socket half is dropped then, so
    /// the peer sees the end).
    end: Option<WriteEnd>,
    max_frame_len: usize,
    /// The bytes to write, in order, as slices.
    pieces: VecDeque<Piece>,
    /// Heads and small payloads written since the last piece was cut;
    /// they follow `pieces`.
    gathering: BytesMut,
    /// Chunked frames begun and not finished, each sending a chunk in
    /// turn once the bytes above are written.
    open: VecDeque<Open>,
    /// What the payloads of `open` add up to.
    open_total: usize,
    /// The number the next chunked frame gets.
    next_part: u32,
    /// Frames that cannot begin yet (one that may not overtake the open
    /// chunked frames, or a chunked one with no room to open), and every
    /// frame after them: frames begin in the order they were written.
    blocked: VecDeque<Frame>,
    state: State,
    /// An error to report to the actor (an unencodable frame).
    error: Option<FrameError>,
    /// The writer's task, while it waits for something to write.
    idle: Option<Waker>,
    /// A frame was written straight from `write` since the writer's task
    /// last ran (see [`FrameWriter::write`]).
    wrote_through: bool,
    meter: Option<Rc<Meter>>,
}

impl FrameWriter {
    /// A writer of frames of at most `max_frame_len` bytes to `end`,
    /// reporting to the actor of `ctx`, and counting on `meter`, if given,
    /// the bytes the socket has yet to take.
    pub(crate) fn new<A>(
        end: WriteEnd,
        max_frame_len: usize,
        meter: Option<Rc<Meter>>,
        ctx: &mut Context<A>,
    ) -> Self
    where
        A: Actor<Context = Context<A>> + WriteHandler<FrameError>,
    {
        let shared = Rc::new(RefCell::new(Outgoing::new(Some(end), max_frame_len, meter)));
        ctx.spawn(Writing {
            shared: shared.clone(),
        });
        Self { shared }
    }

    /// Queues `frame`; it is written when the actor's context next runs.
    ///
    /// The first frame written while the writer's task waits for work goes
    /// to the socket at once, from here, rather than by waking that task:
    /// it runs in the actor's own task, which the wake-up would only make
    /// poll itself once more (callgrind: ~1.5 k instructions a request in
    /// the host, ~2.2 k in the worker). Frames written after it, before
    /// the task ran, wake it and go out together in one write, as before.
    pub(crate) fn write(&mut self, frame: Frame) {
        let mut out = self.shared.borrow_mut();
        if out.state != State::Open {
            return;
        }
        out.queue(frame);
        let Some(task) = out.idle.take() else {
            return; // the task has been told, or is writing
        };
        let through = !out.wrote_through
            && out.error.is_none()
            && matches!(out.end, Some(WriteEnd::Socket(_)));
        if through {
            out.wrote_through = true;
            match out.poll_write_out(&mut TaskContext::from_waker(&task)) {
                Poll::Ready(Ok(())) => {
                    out.idle = Some(task); // all of it written
                    return;
                }
                // Blocked: the socket wakes the task when it has room.
                Poll::Pending => return,
                // For the task to report.
                Poll::Ready(Err(e)) => {
                    out.error.get_or_insert(FrameError::Io(e));
                }
            }
        }
        task.wake();
    }

    /// Writes what is queued now, as far as the socket takes it, from the
    /// task of the actor's context (`task`): for a caller about to run code
    /// that may block the thread (a worker's handlers), so that what was
    /// written before it goes out first. What the socket does not take
    /// yet goes when it has room, as any write.
    pub(crate) fn flush(&mut self, task: &mut TaskContext<'_>) {
        let mut out = self.shared.borrow_mut();
        if out.state != State::Open || out.error.is_some() {
            return;
        }
        if let Poll::Ready(Err(e)) = out.poll_write_out(task) {
            // For the writer's task to report.
            out.error.get_or_insert(FrameError::Io(e));
            task.waker().wake_by_ref();
        }
    }

    /// Writes what is queued, then ends the writer (and tells the actor's
    /// [`WriteHandler::finished`]).
    pub(crate) fn close(&mut self) {
        self.end_with(State::Closing);
    }

    /// Drops what is queued and ends the writer, without reporting errors
    /// (a connection given up).
    pub(crate) fn sever(&mut self) {
        self.end_with(State::Severed);
    }

    fn end_with(&mut self, state: State) {
        let mut out = self.shared.borrow_mut();
        if out.state == State::Open {
            out.state = state;
        }
        if let Some(task) = out.idle.take() {
            task.wake();
        }
    }
}

impl Outgoing {
    /// Nothing queued yet, for `end` (`None`: nowhere, in tests).
    fn new(end: Option<WriteEnd>, max_frame_len: usize, meter: Option<Rc<Meter>>) -> Self {
        Self {
            end,
            max_frame_len,
            pieces: VecDeque::new(),
            gathering: BytesMut::new(),
            open: VecDeque::new(),
            open_total: 0,
            next_part: 0,
            blocked: VecDeque::new(),
            state: State::Open,
            error: None,
            idle: None,
            wrote_through: false,
            meter,
        }
    }

    /// Queues `frame`: begun at once (encoded behind what is to be
    /// written) unless it must wait its turn.
    fn queue(&mut self, frame: Frame) {
        if let Some(meter) = &self.meter {
            meter.add(frame.payload.len());
        }
        if self.blocked.is_empty() && self.open.is_empty() && frame.payload.len() <= CHUNK {
            // Nearly every frame: nothing to wait for, nothing to chunk.
            self.encode(frame);
        } else if self.blocked.is_empty() && self.may_begin(&frame) {
            self.begin(frame);
        } else {
            self.blocked.push_back(frame);
        }
    }

    /// Whether `frame` may begin now.
    fn may_begin(&self, frame: &Frame) -> bool {
        if self.open.is_empty() {
            return true;
        }
        if !frame.header.may_overtake() {
            return false;
        }
        !self.chunked(frame)
            || (self.open.len() < MAX_OPEN_PARTS
                && self.open_total + frame.payload.len() <= self.max_frame_len)
    }

    /// Whether `frame` is written in chunks: a large request or reply.
    fn chunked(&self, frame: &Frame) -> bool {
        frame.payload.len() > CHUNK && frame.header.may_be_chunked()
    }

    /// Begins `frame`: encodes it, or its first chunk.
    fn begin(&mut self, frame: Frame) {
        if !self.chunked(&frame) {
            return self.encode(frame);
        }
        let Frame {
            header,
            mut payload,
            descriptors,
        } = frame;
        let part = self.next_part;
        self.next_part = self.next_part.wrapping_add(1);
        let total = payload.len();
        let first = payload.split_to(CHUNK);
        let opens = Header::Opens {
            part,
            total: total as u32,
            header: Box::new(header),
        };
        self.encode(Frame {
            header: opens,
            payload: first,
            descriptors,
        });
        self.open.push_back(Open {
            part,
            total,
            rest: payload,
        });
        self.open_total += total;
    }

    /// Once what was encoded is written: begins what may begin now, and
    /// encodes the next chunk of each open frame, in turn.
    fn feed(&mut self) {
        while let Some(frame) = self.blocked.front() {
            if !self.may_begin(frame) {
                break;
            }
            let frame = self.blocked.pop_front().expect("looked at");
            self.begin(frame);
        }
        for _ in 0..self.open.len() {
            let Some(mut open) = self.open.pop_front() else {
                break;
            };
            let chunk = open.rest.split_to(open.rest.len().min(CHUNK));
            self.encode(Frame::new(Header::Continues { part: open.part }, chunk));
            if open.rest.is_empty() {
                self.open_total -= open.total;
            } else {
                self.open.push_back(open);
            }
        }
    }

    /// Appends the bytes of `frame` to what is to be written (its payload
    /// was counted already).
    fn encode(&mut self, frame: Frame) {
        let Frame {
            header,
            payload,
            descriptors,
        } = frame;
        let passes = matches!(self.end, Some(WriteEnd::Socket(_)));
        if !descriptors.is_empty() {
            if !passes {
                let e = "descriptors for a stream that cannot pass them".to_owned();
                self.error.get_or_insert(FrameError::Malformed(e));
                return;
            }
            // This frame begins a write of its own.
            self.cut(Descriptors::new());
        }
        let before = self.gathering.len();
        let head = encode_head(
            &header,
            payload.len(),
            descriptors.len(),
            self.max_frame_len,
            &mut self.gathering,
        );
        if let Err(e) = head {
            self.error.get_or_insert(e);
            return;
        }
        let head = self.gathering.len() - before;
        if payload.len() <= INLINE_PAYLOAD {
            self.gathering.extend_from_slice(&payload);
            if !descriptors.is_empty() {
                self.cut(descriptors);
            }
        } else {
            self.cut(descriptors);
            self.pieces.push_back(Piece {
                bytes: payload,
                descriptors: Descriptors::new(),
            });
        }
        if let Some(meter) = &self.meter {
            meter.add(head);
        }
    }

    /// Makes what was gathered a piece of its own, sent with
    /// `descriptors`.
    fn cut(&mut self, descriptors: Descriptors) {
        if !self.gathering.is_empty() {
            self.pieces.push_back(Piece {
                bytes: self.gathering.split().freeze(),
                descriptors,
            });
        }
    }

    /// Writes what is queued, until done or the socket is full.
    fn poll_write_out(&mut self, task: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pieces.is_empty() && self.gathering.is_empty() {
                if self.open.is_empty() && self.blocked.is_empty() {
                    break;
                }
                // A round of chunks at a time, up to about a socket buffer.
                while self.gathering.len()
                    + self.pieces.iter().map(|p| p.bytes.len()).sum::<usize>()
                    < FEED_AHEAD
                    && !(self.open.is_empty() && self.blocked.is_empty())
                {
                    self.feed();
                }
                continue;
            }
            let Some(end) = self.end.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let written = if self.pieces.is_empty() {
                // Only heads and small payloads: written from where they
                // were gathered, in one slice (the common case).
                let slice = [IoSlice::new(&self.gathering)];
                let written = ready!(poll_send(end, task, &slice, &[]))?;
                self.gathering.advance(written.min(self.gathering.len()));
                written
            } else {
                if !self.gathering.is_empty() {
                    self.pieces.push_back(Piece {
                        bytes: self.gathering.split().freeze(),
                        descriptors: Descriptors::new(),
                    });
                }
                let first = &self.pieces[0];
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                slices[0] = IoSlice::new(&first.bytes);
                let mut count = 1;
                // Up to the next frame that carries descriptors: they go
                // with a write of their own.
                for piece in self.pieces.iter().skip(1).take(MAX_SLICES - 1) {
                    if !piece.descriptors.is_empty() {
                        break;
                    }
                    slices[count] = IoSlice::new(&piece.bytes);
                    count += 1;
                }
                let fds: Vec<BorrowedFd<'_>> =
                    first.descriptors.iter().map(|fd| fd.as_fd()).collect();
                let written = ready!(poll_send(end, task, &slices[..count], &fds))?;
                consume(&mut self.pieces, written);
                written
            };
            if written == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write frame to transport",
                )));
            }
            if let Some(meter) = &self.meter {
                meter.taken(written);
            }
        }
        match self.end.as_mut() {
            Some(WriteEnd::Stream(stream)) => Pin::new(stream).poll_flush(task),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Drops the first `n` bytes of `pieces`, which were written.
fn consume(pieces: &mut VecDeque<Piece>, mut n: usize) {
    while n > 0 {
        let Some(front) = pieces.front_mut() else {
            return;
        };
        // Sent with the first byte.
        front.descriptors.clear();
        if n < front.bytes.len() {
            front.bytes.advance(n);
            return;
        }
        n -= front.bytes.len();
        pieces.pop_front();
    }
}

/// One write of `slices` to `end`, with `descriptors` (a socket only).
fn poll_send(
    end: &mut WriteEnd,
    task: &mut TaskContext<'_>,
    slices: &[IoSlice<'_>],
    descriptors: &[BorrowedFd<'_>],
) -> Poll<io::Result<usize>> {
    match end {
        WriteEnd::Stream(stream) => Pin::new(stream).poll_write_vectored(task, slices),
        WriteEnd::Socket(channel) => {
            let total = slices.iter().map(|slice| slice.len()).sum();
            channel.poll_write_with(task, total, |socket| scm::send(socket, slices, descriptors))
        }
    }
}

/// The writer's task, spawned in the actor's context.
struct Writing {
    shared: Rc<RefCell<Outgoing>>,
}

impl<A> ActorFuture<A> for Writing
where
    A: Actor<Context = Context<A>> + WriteHandler<FrameError>,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut Context<A>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let shared = self.shared.clone();
        let mut out = shared.borrow_mut();
        out.wrote_through = false;
        if out.state == State::Severed {
            out.end = None;
            out.pieces.clear();
            out.gathering.clear();
            drop(out);
            act.finished(ctx);
            return Poll::Ready(());
        }
        let failed = match out.error.take() {
            Some(e) => Some(e),
            None => match out.poll_write_out(task) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => None,
                Poll::Ready(Err(e)) => Some(FrameError::Io(e)),
            },
        };
        if let Some(error) = failed {
            // The actor is called without the writer borrowed: it may
            // write, close or sever.
            drop(out);
            if act.error(error, ctx) == Running::Stop {
                let mut out = shared.borrow_mut();
                out.end = None;
                out.state = State::Severed;
                drop(out);
                act.finished(ctx);
                return Poll::Ready(());
            }
            // Go on with what is left.
            task.waker().wake_by_ref();
            return Poll::Pending;
        }
        match out.state {
            State::Closing => {
                out.end = None;
                drop(out);
                act.finished(ctx);
                return Poll::Ready(());
            }
            State::Dropped => {
                out.end = None;
                return Poll::Ready(());
            }
            State::Open | State::Severed => {}
        }
        out.idle = Some(task.waker().clone());
        Poll::Pending
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        // A writer dropped without `close` writes what it has, then stops
        // (actix's went on until the actor stopped), telling nobody.
        let mut out = self.shared.borrow_mut();
        if out.state == State::Open {
            out.state = State::Dropped;
            if let Some(task) = out.idle.take() {
                task.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // Exercised end to end by every test that talks to a child worker;
    // the pieces' bookkeeping is checked here.
    use super::*;
    use crate::wire::envelope::Header;

    fn outgoing() -> Outgoing {
        Outgoing::new(None, 1 << 20, Some(Rc::new(Meter::new(usize::MAX))))
    }

    #[test]
    fn heads_and_small_payloads_gather_and_large_payloads_are_not_copied() {
        let mut out = outgoing();
        let large = Bytes::from(vec![7u8; CHUNK]);
        out.queue(Frame::new(
            Header::Reply { id: 1 },
            Bytes::from_static(b"small"),
        ));
        out.queue(Frame::new(Header::Reply { id: 2 }, large.clone()));
        out.queue(Frame::bare(Header::Shutdown));
        out.cut(Descriptors::new());
        assert_eq!(out.pieces.len(), 3, "heads, the large payload, a head");
        assert_eq!(
            out.pieces[1].bytes.as_ptr(),
            large.as_ptr(),
            "sent where it is"
        );
        let total: usize = out.pieces.iter().map(|piece| piece.bytes.len()).sum();
        let meter = out.meter.clone().unwrap();
        assert_eq!(meter.behind.get(), total);
        consume(&mut out.pieces, total - 3);
        assert_eq!(out.pieces.len(), 1);
        assert_eq!(out.pieces[0].bytes.len(), 3);
    }

    #[test]
    fn an_oversized_frame_is_an_error_and_nothing_is_queued() {
        let mut out = outgoing();
        out.max_frame_len = 64;
        out.queue(Frame::new(
            Header::Reply { id: 1 },
            Bytes::from(vec![0; 100]),
        ));
        out.cut(Descriptors::new());
        assert!(out.pieces.is_empty());
        assert!(matches!(out.error, Some(FrameError::TooLarge { .. })));
    }

    /// Everything `out` writes, as the socket would take it: a chunk of
    /// each open frame at a time, once what was encoded before is out.
    fn written(out: &mut Outgoing) -> Vec<u8> {
        let mut bytes = Vec::new();
        loop {
            out.cut(Descriptors::new());
            if out.pieces.is_empty() {
                if out.open.is_empty() && out.blocked.is_empty() {
                    return bytes;
                }
                out.feed();
                continue;
            }
            for piece in out.pieces.drain(..) {
                bytes.extend_from_slice(&piece.bytes);
            }
        }
    }

    #[test]
    fn small_requests_pass_large_ones_in_chunks_and_other_frames_keep_their_place() {
        use futures::StreamExt;
        let mut out = outgoing();
        let request = |id, len: usize| {
            let payload = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
            let name = "m".into();
            Frame::new(Header::Request { id, name }, payload)
        };
        out.queue(request(1, 5 * CHUNK + 7));
        out.queue(request(2, 3 * CHUNK));
        out.queue(request(3, 16)); // passes both
        out.queue(Frame::bare(Header::Cancel { id: 2 })); // waits for both
        out.queue(request(4, 16)); // after the cancel
        let bytes = written(&mut out);
        let reader = super::super::reader::FrameReader::new(
            super::super::stream::ReadEnd::of_bytes(bytes),
            1 << 20,
        );
        let frames: Vec<Frame> = futures::executor::block_on(reader.map(Result::unwrap).collect());
        // The reader says when a chunked request begins (the worker counts
        // it read then, in the order the host numbered it).
        let (begun, frames): (Vec<Frame>, Vec<Frame>) = frames
            .into_iter()
            .partition(|frame| matches!(frame.header, Header::Opens { .. }));
        assert_eq!(begun.len(), 2, "requests 1 and 2 begun");
        let order: Vec<String> = frames
            .iter()
            .map(|frame| match &frame.header {
                Header::Request { id, .. } => format!("request {id}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "request 3",
                "request 2",
                "request 1",
                "Cancel { id: 2 }",
                "request 4"
            ]
        );
        for frame in &frames {
            if let Header::Request { id, .. } = frame.header {
                assert_eq!(
                    frame.payload,
                    request(id, frame.payload.len()).payload,
                    "{id}"
                );
            }
        }
        assert_eq!(
            frames[2].payload.len(),
            5 * CHUNK + 7,
            "put back together whole"
        );
        assert!(out.open.is_empty() && out.open_total == 0);
    }
}
