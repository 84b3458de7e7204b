//! [`SharedBytes`]: immutable bytes in shared memory, which a message or
//! reply carries to a child worker as a descriptor rather than through the
//! byte stream. The memory is a sealed memfd, mapped read-only on both
//! sides; how it rides through serde is [`passing`](super::passing).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::passing;

/// Immutable bytes that cross to a child worker without being copied
/// through its socket: they live in a sealed memfd (Linux), which travels
/// with the frame as a descriptor, and the worker maps it. On a thread
/// worker a `SharedBytes` is simply moved, like any value.
///
/// Cheap to clone (a reference count), `Send` and `Sync`, and a
/// `Deref<Target = [u8]>`. Declare it as a field of a message or reply:
///
/// ```
/// use isolated_workers::SharedBytes;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Serialize, Deserialize)]
/// struct Thumbnail {
///     image: SharedBytes,
/// }
/// isolated_workers::contract! { Images { Thumbnail => SharedBytes } }
///
/// // Written straight into the shared memory: no copy at all.
/// let image = SharedBytes::with_len(4, |buf| buf.copy_from_slice(b"\x89PNG"));
/// assert_eq!(&image[..], b"\x89PNG");
/// let message = Thumbnail { image: image.clone() };
/// # let _ = message;
/// ```
///
/// # How it travels
/// Encoded for a child worker's socket (the [`ChildProcess`] driver), its
/// memfd goes as a descriptor (`SCM_RIGHTS`) and the payload holds only its
/// index: at most 64 per frame (the rest go as bytes). Anywhere else (a
/// custom stream driver, `serde_json` to a file, an event) it is plain
/// bytes, and plain bytes decode into one too (then in ordinary memory).
///
/// # Trust
/// The sender seals the memfd (it can no longer shrink, grow or be
/// written) before it sends it. A receiver refuses anything else: a
/// descriptor that is not a sealed memfd, or one larger than the frame
/// limit ([`WorkerOptions::max_frame_len`]), which bounds what a peer can
/// make the receiver map as it bounds what it can make it read. So a
/// mapping is never cut short under its reader, and the decode fails
/// with a clear error instead.
///
/// Where no memfd can be made (not Linux, or the call fails) a
/// `SharedBytes` holds ordinary memory and travels as bytes.
///
/// [`ChildProcess`]: crate::ChildProcess
/// [`WorkerOptions::max_frame_len`]: crate::WorkerOptions::max_frame_len
#[derive(Clone)]
pub struct SharedBytes {
    backing: Backing,
}

/// Where the bytes are.
#[derive(Clone)]
enum Backing {
    /// Ordinary memory: empty, decoded from plain bytes, or where no memfd
    /// could be made.
    Heap(Bytes),
    /// A sealed memfd, mapped read-only.
    Mapped(Arc<platform::Mapping>),
}

impl SharedBytes {
    /// No bytes.
    pub fn new() -> Self {
        Self {
            backing: Backing::Heap(Bytes::new()),
        }
    }

    /// `len` bytes of shared memory that `fill` writes, before they are
    /// sealed: the way to make a large payload without copying it at all.
    /// The buffer starts zeroed.
    pub fn with_len(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        if len == 0 {
            fill(&mut []);
            return Self::new();
        }
        let mut fill = Some(fill);
        match platform::Mapping::filled(len, &mut |buf| (fill.take().expect("called once"))(buf)) {
            Ok(mapping) => Self::mapped(mapping),
            Err(e) => {
                tracing::debug!("no shared memory for {len} bytes: {e}");
                let mut heap = vec![0; len];
                if let Some(fill) = fill {
                    fill(&mut heap);
                }
                Self::heap(heap.into())
            }
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are in shared memory (and so cross to a child
    /// worker as a descriptor), rather than in ordinary memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.backing {
            Backing::Heap(bytes) => bytes,
            Backing::Mapped(mapping) => mapping.bytes(),
        }
    }

    fn heap(bytes: Bytes) -> Self {
        Self {
            backing: Backing::Heap(bytes),
        }
    }

    fn mapped(mapping: platform::Mapping) -> Self {
        Self {
            backing: Backing::Mapped(Arc::new(mapping)),
        }
    }
}

impl Default for SharedBytes {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<&[u8]> for SharedBytes {
    /// Copies `bytes` into shared memory.
    fn from(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Self::new();
        }
        match platform::Mapping::copied(bytes) {
            Ok(mapping) => Self::mapped(mapping),
            Err(e) => {
                tracing::debug!("no shared memory for {} bytes: {e}", bytes.len());
                Self::heap(Bytes::copy_from_slice(bytes))
            }
        }
    }
}

impl From<Vec<u8>> for SharedBytes {
    /// Copies `bytes` into shared memory.
    fn from(bytes: Vec<u8>) -> Self {
        Self::from(&bytes[..])
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SharedBytes {}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// The serialized form: the bytes themselves, or the index of the
/// descriptor that carries them in the frame's list.
#[derive(Serialize)]
#[serde(rename = "SharedBytes")]
enum Outgoing<'a> {
    Bytes(Raw<'a>),
    Shared(u32),
}

/// [`Outgoing`], read.
#[derive(Deserialize)]
#[serde(rename = "SharedBytes")]
enum Incoming {
    Bytes(RawBuf),
    Shared(u32),
}

/// Bytes serialized as a byte string (what `serde_bytes` does; written
/// here so that its types do not join the list of `Serialize` types rustc
/// offers when a message is not one, see `tests/ui`).
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// [`Raw`], read: a byte string, or a sequence of bytes (as JSON has it).
struct RawBuf(Vec<u8>);

impl<'de> Deserialize<'de> for RawBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes bytes in either form.
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<RawBuf, E> {
                Ok(RawBuf(bytes.to_vec()))
            }
            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<RawBuf, E> {
                Ok(RawBuf(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawBuf, A::Error> {
                // Grown as bytes arrive, not from a length the input claims.
                let mut bytes = Vec::new();
                while let Some(byte) = seq.next_element()? {
                    bytes.push(byte);
                }
                Ok(RawBuf(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = match &self.backing {
            Backing::Mapped(mapping) => passing::offer(mapping.descriptor()),
            Backing::Heap(_) => None,
        };
        match index {
            Some(index) => Outgoing::Shared(index).serialize(serializer),
            None => Outgoing::Bytes(Raw(self.as_slice())).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Incoming::deserialize(deserializer)? {
            Incoming::Bytes(RawBuf(bytes)) => Ok(Self::heap(bytes.into())),
            Incoming::Shared(index) => {
                let (descriptor, max_len) =
                    passing::take(index).map_err(serde::de::Error::custom)?;
                let mapping = platform::Mapping::received(descriptor, max_len)
                    .map_err(|e| serde::de::Error::custom(format!("refused shared memory: {e}")))?;
                Ok(Self::mapped(mapping))
            }
        }
    }
}

#[cfg(target_os = "linux")]
use linux as platform;
#[cfg(not(target_os = "linux"))]
use unsupported as platform;

/// Where no memfd can be made: every `SharedBytes` is ordinary memory.
#[cfg(not(target_os = "linux"))]
mod unsupported {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;

    pub(super) enum Mapping {}

    impl Mapping {
        pub(super) fn filled(_: usize, _: &mut dyn FnMut(&mut [u8])) -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(super) fn copied(_: &[u8]) -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(super) fn received(_: Arc<OwnedFd>, _: usize) -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(super) fn bytes(&self) -> &[u8] {
            match *self {}
        }

        pub(super) fn descriptor(&self) -> &Arc<OwnedFd> {
            match *self {}
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::ptr::NonNull;
    use std::sync::Arc;

    use rustix::fs::{FileType, MemfdFlags, SealFlags};
    use rustix::mm::{MapFlags, ProtFlags};

    /// What makes a memfd immutable: it can neither shrink (touching a
    /// mapping past the end of its file faults with SIGBUS), grow nor be
    /// written. A receiver refuses a descriptor without all three.
    const SEALS: SealFlags = SealFlags::SHRINK
        .union(SealFlags::GROW)
        .union(SealFlags::WRITE);

    /// [`SEALS`], for the tests.
    #[cfg(test)]
    pub(super) const SEALS_FOR_TESTS: SealFlags = SEALS;

    /// A sealed memfd and its read-only mapping, unmapped on drop.
    pub(super) struct Mapping {
        descriptor: Arc<OwnedFd>,
        at: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the mapping is read-only and its file sealed against writes
    // and resizing: its bytes never change, so sharing them between
    // threads is sharing an immutable slice.
    unsafe impl Send for Mapping {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// A memfd of `len` bytes that `fill` writes through a writable
        /// mapping, then sealed and mapped read-only.
        pub(super) fn filled(len: usize, fill: &mut dyn FnMut(&mut [u8])) -> io::Result<Self> {
            let memfd = create(len)?;
            let access = ProtFlags::READ | ProtFlags::WRITE;
            // SAFETY: a new shared mapping of a file of `len` bytes nobody
            // else holds, at an address the kernel picks (aliasing nothing),
            // unmapped below before anything else can see it.
            unsafe {
                let at = rustix::mm::mmap(
                    std::ptr::null_mut(),
                    len,
                    access,
                    MapFlags::SHARED,
                    &memfd,
                    0,
                )?;
                fill(std::slice::from_raw_parts_mut(at.cast::<u8>(), len));
                // Sealing against writes needs no writable mapping left.
                rustix::mm::munmap(at, len)?;
            }
            Self::sealed(memfd, len)
        }

        /// A memfd holding a copy of `bytes`, sealed and mapped read-only.
        pub(super) fn copied(bytes: &[u8]) -> io::Result<Self> {
            let memfd = create(bytes.len())?;
            let mut written = 0;
            while written < bytes.len() {
                written += rustix::io::pwrite(&memfd, &bytes[written..], written as u64)?;
            }
            Self::sealed(memfd, bytes.len())
        }

        /// Checks what a peer sent and maps it: a memfd sealed as
        /// [`SEALS`] says, of at most `max_len` bytes.
        pub(super) fn received(descriptor: Arc<OwnedFd>, max_len: usize) -> io::Result<Self> {
            let fd = descriptor.as_fd();
            let stat = rustix::fs::fstat(fd)?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(io::Error::other("the descriptor is not a memfd"));
            }
            // Only memfds (and other shmem files) keep seals: anything else
            // fails here, or has none.
            let seals = rustix::fs::fcntl_get_seals(fd)
                .map_err(|_| io::Error::other("the descriptor is not a memfd"))?;
            if !seals.contains(SEALS) {
                return Err(io::Error::other(
                    "the memfd is not sealed against shrinking, growing and writing",
                ));
            }
            let len = usize::try_from(stat.st_size).unwrap_or(usize::MAX);
            if len > max_len {
                return Err(io::Error::other(format!(
                    "{len} bytes of shared memory, over the limit of {max_len}"
                )));
            }
            if len == 0 {
                return Err(io::Error::other("an empty memfd (empty bytes go as bytes)"));
            }
            Self::map(descriptor, len)
        }

        pub(super) fn bytes(&self) -> &[u8] {
            // SAFETY: a live read-only mapping of `len` bytes of a file
            // sealed at that size and against writes (see `map`).
            unsafe { std::slice::from_raw_parts(self.at.as_ptr(), self.len) }
        }

        pub(super) fn descriptor(&self) -> &Arc<OwnedFd> {
            &self.descriptor
        }

        fn sealed(memfd: OwnedFd, len: usize) -> io::Result<Self> {
            rustix::fs::fcntl_add_seals(&memfd, SEALS | SealFlags::SEAL)?;
            Self::map(Arc::new(memfd), len)
        }

        /// Maps `len` bytes of sealed memfd `descriptor`, read-only.
        fn map(descriptor: Arc<OwnedFd>, len: usize) -> io::Result<Self> {
            let fd: BorrowedFd<'_> = descriptor.as_fd();
            // SAFETY: a new read-only shared mapping of a file sealed at
            // `len` bytes (so never cut short: no SIGBUS) and against
            // writes, at an address the kernel picks; unmapped on drop.
            let at = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    len,
                    ProtFlags::READ,
                    MapFlags::SHARED,
                    fd,
                    0,
                )?
            };
            let at = NonNull::new(at.cast()).ok_or_else(|| io::Error::other("mapped at 0"))?;
            Ok(Self {
                descriptor,
                at,
                len,
            })
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping `map` made; no reference into it outlives
            // `self` (`bytes` borrows it).
            unsafe {
                let _ = rustix::mm::munmap(self.at.as_ptr().cast(), self.len);
            }
        }
    }

    /// A fresh memfd of `len` bytes that can be sealed.
    fn create(len: usize) -> io::Result<OwnedFd> {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let memfd = rustix::fs::memfd_create("isolated-workers-shared", flags)?;
        rustix::fs::ftruncate(&memfd, len as u64)?;
        Ok(memfd)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};

    use super::*;

    #[test]
    fn made_in_place_or_copied_the_bytes_are_shared_and_sealed() {
        let made = SharedBytes::with_len(3, |buf| buf.copy_from_slice(b"abc"));
        let copied = SharedBytes::from(&b"abc"[..]);
        for bytes in [&made, &copied] {
            assert!(bytes.is_shared());
            assert_eq!(&bytes[..], b"abc");
        }
        let Backing::Mapped(mapping) = &made.backing else {
            unreachable!()
        };
        let fd = mapping.descriptor().as_fd();
        assert!(rustix::fs::fcntl_get_seals(fd)
            .unwrap()
            .contains(linux::SEALS_FOR_TESTS));
        assert!(
            rustix::io::pwrite(fd, b"x", 0).is_err(),
            "sealed against writes"
        );
        assert!(
            rustix::fs::ftruncate(fd, 1).is_err(),
            "sealed against shrinking"
        );
    }

    #[test]
    fn outside_a_socket_encode_it_is_plain_bytes_both_ways() {
        let shared = SharedBytes::from(vec![1, 2, 3]);
        let json = serde_json::to_string(&shared).unwrap();
        assert_eq!(json, r#"{"Bytes":[1,2,3]}"#);
        let back: SharedBytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, shared);
        assert!(!back.is_shared(), "decoded from bytes, in ordinary memory");
        let orphan = serde_json::from_str::<SharedBytes>(r#"{"Shared":0}"#).unwrap_err();
        assert!(orphan.to_string().contains("outside a frame"), "{orphan}");
    }

    #[test]
    fn in_a_socket_encode_it_is_an_index_and_its_descriptor_maps_again() {
        let shared = SharedBytes::from(vec![9; 10_000]);
        let empty = SharedBytes::new();
        let (encoded, descriptors) = passing::encoding(true, || {
            rmp_serde::to_vec(&(&shared, &empty, &shared)).unwrap()
        });
        assert_eq!(descriptors.len(), 1, "one descriptor, twice referred to");
        assert!(
            encoded.len() < 32,
            "indexes, not bytes: {} bytes",
            encoded.len()
        );
        let decoded: (SharedBytes, SharedBytes, SharedBytes) =
            passing::decoding(descriptors.clone(), 1 << 20, || {
                rmp_serde::from_slice(&encoded).unwrap()
            });
        assert_eq!(decoded, (shared.clone(), empty, shared));
        assert!(decoded.0.is_shared());
        let refused = passing::decoding(descriptors, 100, || {
            rmp_serde::from_slice::<(SharedBytes, SharedBytes, SharedBytes)>(&encoded).unwrap_err()
        });
        assert!(refused.to_string().contains("over the limit"), "{refused}");
    }

    #[test]
    fn an_unsealed_memfd_or_another_file_is_refused() {
        let unsealed = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 16).unwrap();
        let error = linux::Mapping::received(Arc::new(unsealed), 1 << 20)
            .err()
            .unwrap();
        assert!(error.to_string().contains("not sealed"), "{error}");
        let file: OwnedFd = tempfile::tempfile().unwrap().into();
        let error = linux::Mapping::received(Arc::new(file), 1 << 20)
            .err()
            .unwrap();
        assert!(error.to_string().contains("not"), "{error}");
        let (pipe, _other) = std::io::pipe().unwrap();
        let error = linux::Mapping::received(Arc::new(pipe.into()), 1 << 20)
            .err()
            .unwrap();
        assert!(error.to_string().contains("not a memfd"), "{error}");
    }

    use rustix::fs::MemfdFlags;
}
