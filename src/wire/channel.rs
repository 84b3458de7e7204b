//! A connected Unix socket as a host and a worker use it: registered with
//! the runtime for reading only, written to directly, and watched for room
//! to write only while a write is blocked.
//!
//! Written by hand because tokio's `UnixStream` registers every socket for
//! both reading and writing, edge-triggered: each time the peer reads, the
//! kernel signals room to write, and the writer's runtime wakes up for
//! nothing — once per round trip on each side (strace: an `epoll_wait`
//! returning a bare `EPOLLOUT`, and a scheduler turn, ~10% of a small
//! request's instructions). Small writes to a socket nearly always fit;
//! only a write that would block needs to hear of room, so only then is a
//! second descriptor for the same socket registered for writing, and it is
//! dropped again once a write went through.

use std::cell::RefCell;
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The socket, shared by its two halves.
struct Channel {
    /// Registered for reading only.
    socket: AsyncFd<UnixStream>,
    /// A duplicate of the socket registered for writing, while a write is
    /// blocked (see the module doc).
    blocked: RefCell<Option<AsyncFd<UnixStream>>>,
}

/// The reading half of a channel.
pub(crate) struct ChannelReader(Rc<Channel>);

/// The writing half of a channel. Dropping it (or shutting it down) tells
/// the peer that nothing more comes, while the reading half reads on.
pub(crate) struct ChannelWriter(Rc<Channel>);

/// Splits a connected socket into its halves, registering it with the
/// current runtime (the socket is made non-blocking).
pub(crate) fn channel(socket: UnixStream) -> io::Result<(ChannelReader, ChannelWriter)> {
    socket.set_nonblocking(true)?;
    let channel = Rc::new(Channel {
        socket: register(socket, Interest::READABLE)?,
        blocked: RefCell::new(None),
    });
    Ok((ChannelReader(channel.clone()), ChannelWriter(channel)))
}

/// Registers `socket` with the current runtime for `interest`.
fn register(socket: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    // SAFETY: a `UnixStream` owns its descriptor, which stays open and the
    // same until the stream (here, inside the `AsyncFd`) is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.socket.poll_read_ready(task))?;
            // SAFETY: `read(2)` only writes to the bytes it reports read,
            // which are then marked initialized; the slice is never read.
            // (Reading into the uninitialized spare capacity, as tokio's
            // own streams do: a safe `&mut [u8]` would mean zeroing the
            // whole buffer before every read, a MiB for a large frame.)
            let unfilled = unsafe { buf.unfilled_mut() };
            let read = ready.try_io(|socket| {
                let fd = socket.get_ref().as_raw_fd();
                // SAFETY: `fd` is open (owned by the channel) and
                // `unfilled` is valid for writes of its length.
                let n =
                    unsafe { nix::libc::read(fd, unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(n as usize)
            });
            match read {
                Ok(Ok(n)) => {
                    if n > 0 && n < buf.remaining() {
                        // A short read emptied the socket (as tokio's own
                        // streams assume): wait for the next readiness
                        // rather than find out with a read that fails.
                        ready.clear_ready();
                    }
                    // SAFETY: the kernel wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Read everything there was: wait for more.
                Err(_would_block) => continue,
            }
        }
    }
}

impl ChannelWriter {
    /// Writes with `write` straight to the socket; if it would block,
    /// waits for room (registering for it, see the module doc).
    fn poll_io(
        &self,
        task: &mut Context<'_>,
        mut write: impl FnMut(&UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let channel = &self.0;
        loop {
            match write(channel.socket.get_ref()) {
                Ok(n) => {
                    // Room again: stop hearing of it.
                    channel.blocked.borrow_mut().take();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut blocked = channel.blocked.borrow_mut();
            if blocked.is_none() {
                let duplicate = channel.socket.get_ref().try_clone()?;
                *blocked = Some(register(duplicate, Interest::WRITABLE)?);
            }
            let watch = blocked.as_ref().expect("registered above");
            // Registered after the failed write: room made since then is
            // signalled, as the registration reports the current state.
            ready!(watch.poll_write_ready(task))?.clear_ready();
        }
    }
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(task, |mut socket| socket.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        task: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(task, |mut socket| socket.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is buffered here
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shut_down())
    }
}

impl ChannelWriter {
    /// Tells the peer nothing more comes (it reads the end of the stream).
    fn shut_down(&self) -> io::Result<()> {
        match self.0.socket.get_ref().shutdown(std::net::Shutdown::Write) {
            // The peer is gone already: nothing to tell.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads all there is from `reader`, until its end.
    fn drain(reader: &mut UnixStream) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        all
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn bytes_cross_both_ways_and_a_dropped_writer_ends_the_peers_stream() {
        runtime().block_on(async {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let (mut reader, mut writer) = channel(ours).unwrap();
            writer.write_all(b"ping").await.unwrap();
            theirs.write_all(b"pong").unwrap();
            let mut got = [0; 4];
            reader.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            drop(writer);
            // The peer reads what was written, then the end of the stream.
            assert_eq!(drain(&mut theirs), b"ping");
        });
    }

    #[test]
    fn a_write_larger_than_the_socket_buffer_waits_for_room() {
        runtime().block_on(async {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (_reader, mut writer) = channel(ours).unwrap();
            let big = vec![7u8; 8 << 20];
            let expected = big.len();
            // The peer reads on a thread of its own while we write.
            let peer = std::thread::spawn(move || {
                let mut theirs = theirs;
                drain(&mut theirs).len()
            });
            writer.write_all(&big).await.unwrap();
            drop(writer);
            assert_eq!(peer.join().unwrap(), expected);
        });
    }

    #[test]
    fn reading_from_a_closed_peer_ends_the_stream() {
        runtime().block_on(async {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (mut reader, _writer) = channel(ours).unwrap();
            drop(theirs);
            let mut rest = Vec::new();
            assert_eq!(reader.read_to_end(&mut rest).await.unwrap(), 0);
        });
    }
}
