//! Descriptor passing on a Unix stream socket (`SCM_RIGHTS`): one
//! `recvmsg` that reads bytes and takes the descriptors sent with them,
//! and one `sendmsg` that sends descriptors with the first of its bytes.
//!
//! The receiving call is `libc`'s rather than `rustix`'s: `rustix`'s
//! `recvmsg` reads into `&mut [IoSliceMut]`, which the spare capacity of a
//! read buffer is not (it is uninitialized, and zeroing it first would cost
//! a pass over every large frame), while `recvmsg(2)` takes a raw pointer.
//! What it received is taken apart by `rustix`, as everything else here.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use bytes::{BufMut, BytesMut};
use rustix::cmsg_space;
use rustix::net::{
    sendmsg, AncillaryDrain, RecvAncillaryMessage, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

/// The most descriptors one frame may carry, and so the most one read
/// takes: a writer sends each frame's descriptors with a `sendmsg` of their
/// own, and the kernel never hands out two such batches in one read.
pub(crate) const MAX_DESCRIPTORS_PER_FRAME: usize = 64;

/// Room for one batch of descriptors, in 8-byte words (aligned as
/// `cmsghdr` needs): a 16-byte header and 4 bytes per descriptor. Exactly
/// that: with more, a peer could pass more descriptors than a frame may
/// carry without the kernel truncating them (see [`recv`]).
const CONTROL_WORDS: usize = 2 + MAX_DESCRIPTORS_PER_FRAME / 2;

/// Reads into the spare capacity of `buf` (which must have some), pushing
/// the descriptors that came with the bytes onto `descriptors`, received
/// close-on-exec. `Ok(0)` is the end of the stream.
///
/// # Errors
/// The read's error (`WouldBlock` when nothing is there), or
/// `InvalidData` when the peer sent more descriptors at once than a frame
/// may carry (the kernel dropped the rest).
pub(crate) fn recv(
    socket: BorrowedFd<'_>,
    buf: &mut BytesMut,
    descriptors: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // Written by the kernel, read only as far as it says it wrote.
    let mut control = [std::mem::MaybeUninit::<u64>::uninit(); CONTROL_WORDS];
    // SAFETY: a zeroed `msghdr` is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
    // SAFETY: `msg` points at the spare capacity of `buf` (writable, of
    // the length given) and at `control`, both alive for the call.
    let read = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    // Owned at once, so that none leaks whatever happens next.
    // SAFETY: the kernel wrote `msg_controllen` bytes of control messages
    // at the start of `control`.
    let received = unsafe {
        std::slice::from_raw_parts_mut(control.as_mut_ptr().cast::<u8>(), msg.msg_controllen as _)
    };
    // SAFETY: as above: valid control messages, as `recvmsg` wrote them.
    for message in unsafe { AncillaryDrain::parse(received) } {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            descriptors.extend(fds);
        }
    }
    // SAFETY: the kernel wrote `read` bytes into the spare capacity.
    unsafe { buf.advance_mut(read as usize) };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer sent more than {MAX_DESCRIPTORS_PER_FRAME} descriptors at once"),
        ));
    }
    Ok(read as usize)
}

/// Writes `slices` with `descriptors` attached to their first byte (a
/// plain `send` or `writev` when there are none, which cost less).
///
/// # Errors
/// The write's error (`WouldBlock` when the socket is full: then nothing
/// was sent, descriptors included).
pub(crate) fn send(
    socket: BorrowedFd<'_>,
    slices: &[io::IoSlice<'_>],
    descriptors: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    if descriptors.is_empty() {
        return Ok(match slices {
            [one] => rustix::net::send(socket, one, flags)?,
            // Rust programs ignore SIGPIPE: a closed peer is `EPIPE` here.
            _ => rustix::io::writev(socket, slices)?,
        });
    }
    let mut space = vec![MaybeUninit::uninit(); cmsg_space!(ScmRights(descriptors.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let pushed = control.push(SendAncillaryMessage::ScmRights(descriptors));
    debug_assert!(pushed, "the space is made for these descriptors");
    Ok(sendmsg(socket, slices, &mut control, flags)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Sends `bytes` with `fds` from `from`, and receives on `to` into a
    /// fresh buffer: what was read, and the descriptors taken.
    fn pass(
        from: &UnixStream,
        to: &UnixStream,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> (io::Result<Vec<u8>>, Vec<OwnedFd>) {
        let sent = send(from.as_fd(), &[io::IoSlice::new(bytes)], fds).expect("sent");
        assert_eq!(sent, bytes.len());
        let mut buf = BytesMut::with_capacity(64);
        let mut descriptors = Vec::new();
        let read = recv(to.as_fd(), &mut buf, &mut descriptors).map(|_| buf.to_vec());
        (read, descriptors)
    }

    #[test]
    fn descriptors_arrive_with_their_byte_close_on_exec() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let (read, fds) = pass(&ours, &theirs, b"frame", &[writer.as_fd()]);
        assert_eq!(read.unwrap(), b"frame");
        let [received] = <[OwnedFd; 1]>::try_from(fds).unwrap();
        let flags = rustix::io::fcntl_getfd(&received).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        // The very pipe: what is written through the copy comes out.
        drop(writer);
        std::fs::File::from(received).write_all(b"!").unwrap();
        let mut got = [0u8; 1];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"!");
    }

    #[test]
    fn more_descriptors_at_once_than_a_frame_may_carry_are_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_reader, writer) = std::io::pipe().unwrap();
        let many = vec![writer.as_fd(); MAX_DESCRIPTORS_PER_FRAME + 1];
        let (read, fds) = pass(&ours, &theirs, b"x", &many);
        let error = read.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("more than 64"), "{error}");
        // Those that fit are owned (and closed with the vector).
        assert!(fds.len() <= MAX_DESCRIPTORS_PER_FRAME, "{}", fds.len());
    }

    #[test]
    fn bytes_without_descriptors_and_the_end_of_the_stream() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (read, fds) = pass(&ours, &theirs, b"plain", &[]);
        assert_eq!(read.unwrap(), b"plain");
        assert!(fds.is_empty());
        drop(ours);
        let mut buf = BytesMut::with_capacity(8);
        assert_eq!(recv(theirs.as_fd(), &mut buf, &mut Vec::new()).unwrap(), 0);
    }
}
