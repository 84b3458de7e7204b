//! The read mark: a counter in a small file shared by the host and one
//! worker process, which the worker bumps for each request frame it reads,
//! before it dispatches the request. Once the worker has died, a request
//! the host wrote on the connection with a number above the mark was never
//! read, so none of its handler ran: the host sends it to the fresh worker
//! whatever its crash policy.
//!
//! A request that comes in chunks (see `wire::writer`) counts as read
//! when its first chunk is, so that the count follows the order the host
//! wrote (and numbered) requests in, though a small one may be whole
//! before a large one written earlier.
//!
//! The count is per connection: the worker sets it to 0 before it greets
//! a host, and the host numbers each connection's requests from 1. So a
//! request lost with a dropped connection cannot shift the numbers of
//! later ones. Until the worker first sets it, the mark reads
//! [`UNTAKEN`]: a worker that did not take the mark up (an older build, a
//! descriptor closed by the user's `pre_exec` hook) counts as having read
//! everything, which is what the host assumes without a mark.
//!
//! Linux only: a sealed memfd that the child inherits. Elsewhere (and for
//! workers this host did not spawn) there is no mark, and every request
//! written counts as possibly started.

use std::os::fd::{OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(target_os = "linux")]
use linux as platform;
#[cfg(not(target_os = "linux"))]
use unsupported as platform;

/// The mark as the host makes it: more than any request count, so that
/// every request counts as read until the worker takes the mark up.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // made on Linux only
pub(crate) const UNTAKEN: u64 = u64::MAX;

/// A mapping of the shared counter, in the host or in the worker.
pub(crate) struct ReadMark {
    /// Page-aligned (mmap), so aligned for the atomic; unmapped on drop.
    counter: NonNull<AtomicU64>,
}

impl std::fmt::Debug for ReadMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReadMark").field(&self.load()).finish()
    }
}

impl ReadMark {
    /// For the host, before it spawns a worker: a fresh mark, and the
    /// descriptor for the child to inherit (close-on-exec in this process,
    /// so no other child gets it; the child clears the flag on its copy).
    /// `None` where no mark can be made.
    pub(crate) fn create() -> Option<(Self, OwnedFd)> {
        match platform::create() {
            Ok(made) => Some(made),
            Err(e) => {
                tracing::debug!("no read mark for this worker: {e}");
                None
            }
        }
    }

    /// For the worker: maps the mark the host passed as descriptor
    /// `number`, and closes the descriptor (code the worker starts must
    /// not inherit it). `None`, leaving the descriptor alone, unless it is
    /// a sealed memfd of the mark's size.
    pub(crate) fn inherited(number: &str) -> Option<Self> {
        Self::inherited_fd(number.parse().ok().filter(|fd| *fd >= 0)?)
    }

    /// [`inherited`](Self::inherited), for descriptor `fd` itself (one the
    /// host sent over the channel).
    pub(crate) fn inherited_fd(fd: RawFd) -> Option<Self> {
        match platform::inherit(fd) {
            Ok(mark) => Some(mark),
            Err(e) => {
                eprintln!("isolated-workers: ignoring the read mark passed as fd {fd}: {e}");
                None
            }
        }
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: `counter` points into a live shared mapping this value
        // owns (see `linux::map`), only ever accessed atomically.
        unsafe { self.counter.as_ref() }
    }

    /// Worker: one more request frame read. Stored before the request is
    /// dispatched, so no handler runs for a request the mark does not
    /// count. (The worker's server is the only writer: a load and a
    /// store, no locked add.)
    pub(crate) fn bump(&self) {
        let counter = self.counter();
        let read = counter.load(Ordering::Relaxed).wrapping_add(1);
        counter.store(read, Ordering::Release);
    }

    /// Worker: a new connection, whose requests the host numbers from 1.
    pub(crate) fn reset(&self) {
        self.counter().store(0, Ordering::Release);
    }

    /// Host: how many request frames the worker read on the current
    /// connection, as it says (a hostile worker may write anything).
    pub(crate) fn load(&self) -> u64 {
        self.counter().load(Ordering::Acquire)
    }
}

impl Drop for ReadMark {
    fn drop(&mut self) {
        platform::unmap(self);
    }
}

/// Where no mark can be made: nothing is shared, nothing is passed.
#[cfg(not(target_os = "linux"))]
mod unsupported {
    use std::io;
    use std::os::fd::{OwnedFd, RawFd};

    use super::ReadMark;

    pub(super) fn create() -> io::Result<(ReadMark, OwnedFd)> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn inherit(_: RawFd) -> io::Result<ReadMark> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn unmap(_: &mut ReadMark) {}
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::ptr::NonNull;

    use rustix::fs::{FileType, MemfdFlags, SealFlags};
    use rustix::mm::{MapFlags, ProtFlags};

    use super::{ReadMark, UNTAKEN};

    /// Size of the shared file: the one `u64` counter.
    const LEN: usize = std::mem::size_of::<u64>();

    /// Neither side can resize the file: touching a mapping past the end
    /// of its file faults (SIGBUS), so a worker must not be able to
    /// shrink the host's.
    const SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

    pub(super) fn create() -> io::Result<(ReadMark, OwnedFd)> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = rustix::fs::memfd_create("isolated-workers-read-mark", flags)?;
        rustix::fs::ftruncate(&fd, LEN as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SEALS | SealFlags::SEAL)?;
        let mark = map(fd.as_fd())?;
        mark.counter()
            .store(UNTAKEN, std::sync::atomic::Ordering::Release);
        Ok((mark, fd))
    }

    pub(super) fn unmap(mark: &mut ReadMark) {
        // SAFETY: the mapping `map` made, of `LEN` bytes; the mark is being
        // dropped, so no reference into it is left.
        unsafe {
            let _ = rustix::mm::munmap(mark.counter.as_ptr().cast(), LEN);
        }
    }

    pub(super) fn inherit(number: RawFd) -> io::Result<ReadMark> {
        // SAFETY: `worker_entry` asks first thing, before anything in this
        // process could close the descriptor the host passed under this
        // number (a number that is not open fails the calls below).
        let fd = unsafe { BorrowedFd::borrow_raw(number) };
        let stat = rustix::fs::fstat(fd)?;
        let file = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile;
        if !file || stat.st_size != LEN as i64 {
            return Err(io::Error::other("not a file of the mark's size"));
        }
        if !rustix::fs::fcntl_get_seals(fd)?.contains(SEALS) {
            return Err(io::Error::other("its size is not sealed"));
        }
        let mark = map(fd)?;
        // SAFETY: checked above to be the mark the host made for this
        // worker, which nothing else in this process uses; the mapping
        // outlives it.
        drop(unsafe { OwnedFd::from_raw_fd(number) });
        Ok(mark)
    }

    /// Maps the counter of mark file `fd`.
    fn map(fd: BorrowedFd<'_>) -> io::Result<ReadMark> {
        let access = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new shared mapping of `LEN` bytes of a file sealed at
        // that size, at an address the kernel picks, so aliasing nothing;
        // the `ReadMark` owns it and unmaps it on drop.
        let at = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), LEN, access, MapFlags::SHARED, fd, 0)?
        };
        let counter = NonNull::new(at.cast()).ok_or_else(|| io::Error::other("mapped at 0"))?;
        Ok(ReadMark { counter })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::Write;
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::{ReadMark, UNTAKEN};

    #[test]
    fn the_worker_counts_what_the_host_reads_once_taken_up() {
        let (host, fd) = ReadMark::create().expect("a mark on Linux");
        assert_eq!(host.load(), UNTAKEN, "counts everything as read at first");
        // The worker's side takes the descriptor over (and closes it).
        let worker = ReadMark::inherited(&fd.into_raw_fd().to_string()).expect("inherited");
        worker.reset();
        assert_eq!(host.load(), 0);
        worker.bump();
        worker.bump();
        assert_eq!(host.load(), 2);
        drop(worker);
        assert_eq!(host.load(), 2, "the host's mapping outlives the worker's");
    }

    #[test]
    fn anything_but_a_sealed_mark_is_refused_and_left_open() {
        for number in ["", "x", "-1", "99999"] {
            assert!(ReadMark::inherited(number).is_none(), "{number:?}");
        }
        let (reader, mut writer) = std::io::pipe().expect("a pipe");
        assert!(ReadMark::inherited(&reader.as_raw_fd().to_string()).is_none());
        // An unsealed file of the right size: a worker could be made to
        // fault by its shrinking.
        let mut file = tempfile::tempfile().expect("a file");
        file.write_all(&[0; 8]).expect("written");
        assert!(ReadMark::inherited(&file.as_raw_fd().to_string()).is_none());
        // Both still open: refusing closed nothing.
        file.write_all(b"more").expect("still open");
        writer.write_all(b"x").expect("the pipe is still open");
    }
}
