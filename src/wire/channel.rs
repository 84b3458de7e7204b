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
//! only a write that falls short or would block needs to hear of room, so
//! only then is a second descriptor for the same socket registered for
//! writing, and it is dropped again once a write takes all it was given.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The socket, shared by its two halves.
struct Channel {
    /// Registered for reading only.
    socket: AsyncFd<UnixStream>,
    /// A duplicate of the socket registered for writing, while the socket
    /// is full (see the module doc).
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

impl ChannelReader {
    /// Reads with `read` (a `recv` on the socket) once the socket is
    /// readable, waiting while it would block. `read` says how many bytes
    /// it read, and whether that drained the socket (a read shorter than
    /// it asked for, as tokio's own streams assume): the next read then
    /// waits for readiness rather than find out with a read that fails.
    pub(crate) fn poll_read_with(
        &self,
        task: &mut Context<'_>,
        mut read: impl FnMut(BorrowedFd<'_>) -> io::Result<(usize, bool)>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.0.socket.poll_read_ready(task))?;
            match ready.try_io(|socket| read(socket.get_ref().as_fd())) {
                Ok(Ok((n, drained))) => {
                    if drained {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Read everything there was: wait for more.
                Err(_would_block) => continue,
            }
        }
    }
}

impl ChannelWriter {
    /// Writes with `write` (a `send` on the socket, of `total` bytes)
    /// straight away; once a write falls short or would block, the socket
    /// is full: the writes after it wait for room (registering for it, see
    /// the module doc), until one takes all it was given.
    pub(crate) fn poll_write_with(
        &self,
        task: &mut Context<'_>,
        total: usize,
        mut write: impl FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let channel = &self.0;
        loop {
            let written = {
                let blocked = channel.blocked.borrow();
                match blocked.as_ref() {
                    Some(watch) => {
                        let mut ready = ready!(watch.poll_write_ready(task))?;
                        match ready.try_io(|socket| write(socket.get_ref().as_fd())) {
                            Ok(Ok(n)) => Ok(n),
                            Ok(Err(e)) => return Poll::Ready(Err(e)),
                            // Full again: the readiness is cleared, wait.
                            Err(_would_block) => continue,
                        }
                    }
                    None => match write(channel.socket.get_ref().as_fd()) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => Ok(other?),
                    },
                }
            };
            match written {
                Ok(n) if n >= total => {
                    // It took all: stop hearing of room.
                    channel.blocked.borrow_mut().take();
                    return Poll::Ready(Ok(n));
                }
                Ok(n) => {
                    // Fell short: the socket is full, and the next write
                    // waits for room rather than fail first.
                    self.watch_for_room()?;
                    return Poll::Ready(Ok(n));
                }
                Err(_would_block) => self.watch_for_room()?,
            }
        }
    }

    /// Registers a duplicate of the socket for room to write, unless one
    /// is. Registered after a write found the socket full: room made since
    /// is signalled, as a registration reports the current state.
    fn watch_for_room(&self) -> io::Result<()> {
        let mut blocked = self.0.blocked.borrow_mut();
        if blocked.is_none() {
            let duplicate = self.0.socket.get_ref().try_clone()?;
            *blocked = Some(register(duplicate, Interest::WRITABLE)?);
        }
        Ok(())
    }

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
    use std::io::{Read, Write};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Reads all there is from `reader`, until its end.
    fn drain(reader: &mut UnixStream) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        all
    }

    /// `send(2)` of `bytes` on `fd`.
    fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
        let flags = rustix::net::SendFlags::NOSIGNAL;
        Ok(rustix::net::send(fd, bytes, flags)?)
    }

    /// Writes all of `bytes` through `writer`.
    async fn write_all(writer: &ChannelWriter, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = std::future::poll_fn(|task| {
                writer.poll_write_with(task, bytes.len(), |fd| send(fd, bytes))
            })
            .await
            .unwrap();
            bytes = &bytes[n..];
        }
    }

    /// Reads once through `reader`.
    async fn read_some(reader: &ChannelReader) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = std::future::poll_fn(|task| {
            reader.poll_read_with(task, |fd| {
                let n = rustix::io::read(fd, &mut buf)?;
                Ok((n, n < 64))
            })
        })
        .await
        .unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn bytes_cross_both_ways_and_a_dropped_writer_ends_the_peers_stream() {
        runtime().block_on(async {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let (reader, writer) = channel(ours).unwrap();
            write_all(&writer, b"ping").await;
            theirs.write_all(b"pong").unwrap();
            assert_eq!(read_some(&reader).await, b"pong");
            drop(writer);
            // The peer reads what was written, then the end of the stream.
            assert_eq!(drain(&mut theirs), b"ping");
        });
    }

    #[test]
    fn a_write_larger_than_the_socket_buffer_waits_for_room() {
        runtime().block_on(async {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (_reader, writer) = channel(ours).unwrap();
            let big = vec![7u8; 8 << 20];
            // The peer reads on a thread of its own while we write.
            let peer = std::thread::spawn(move || {
                let mut theirs = theirs;
                drain(&mut theirs).len()
            });
            write_all(&writer, &big).await;
            drop(writer);
            assert_eq!(peer.join().unwrap(), big.len());
        });
    }

    #[test]
    fn reading_from_a_closed_peer_ends_the_stream() {
        runtime().block_on(async {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let (reader, _writer) = channel(ours).unwrap();
            drop(theirs);
            assert_eq!(read_some(&reader).await, b"");
        });
    }
}
