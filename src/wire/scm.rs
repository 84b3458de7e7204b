//! Descriptor passing on a Unix stream socket (`SCM_RIGHTS`): one
//! `recvmsg` that reads bytes and takes the descriptors sent with them,
//! and one `sendmsg` that sends descriptors with the first of its bytes.
//!
//! The receiving side is written on `libc` rather than `nix`: `nix`'s
//! `recvmsg` reads into `&mut [u8]`, which the spare capacity of a read
//! buffer is not (it is uninitialized, and zeroing it first would cost a
//! pass over every large frame), while `recvmsg(2)` takes a raw pointer.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bytes::{BufMut, BytesMut};
use nix::libc;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The most descriptors one frame may carry, and so the most one read
/// takes: a writer sends each frame's descriptors with a `sendmsg` of their
/// own, and the kernel never hands out two such batches in one read.
pub(crate) const MAX_DESCRIPTORS_PER_FRAME: usize = 64;

/// Room for one batch of descriptors, in 8-byte words (aligned as
/// `cmsghdr` needs): a 16-byte header and 4 bytes per descriptor.
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
    // SAFETY: the kernel filled `msg`'s control buffer; CMSG_* walk it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    (header.cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    descriptors.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        // SAFETY: the kernel wrote `read` bytes into the spare capacity.
        buf.advance_mut(read as usize);
    }
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
    descriptors: &[RawFd],
) -> io::Result<usize> {
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    if descriptors.is_empty() {
        return Ok(match slices {
            [one] => nix::sys::socket::send(socket.as_raw_fd(), one, flags)?,
            // Rust programs ignore SIGPIPE: a closed peer is `EPIPE` here.
            _ => nix::sys::uio::writev(socket, slices)?,
        });
    }
    let rights = [ControlMessage::ScmRights(descriptors)];
    Ok(sendmsg::<()>(
        socket.as_raw_fd(),
        slices,
        &rights,
        flags,
        None,
    )?)
}
