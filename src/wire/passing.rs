//! How [`SharedBytes`](crate::SharedBytes) rides through serde: the way
//! ipc-channel passes its channels. While a frame's payload is encoded for
//! a socket that can pass descriptors, a thread-local collects the
//! descriptors of the shared memory it holds, and each is serialized as
//! its index in that list; the frame carries the list. While a received
//! frame's payload is decoded, its descriptors sit in another thread-local,
//! where an index takes its own. Outside both (another format, a file, a
//! stream that passes bytes only) `SharedBytes` travels as plain bytes.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::frame::Descriptors;
use super::scm::MAX_DESCRIPTORS_PER_FRAME;

thread_local! {
    /// The descriptors of the payload being encoded, when they can pass:
    /// a pointer to the list `encoding` keeps on its stack, null outside
    /// it. (A bare pointer in a `Cell` rather than a `RefCell` holding the
    /// list: every request to a child worker is encoded inside `encoding`,
    /// and this way entering and leaving it costs two stores.)
    static OUTGOING: Cell<*mut Descriptors> = const { Cell::new(std::ptr::null_mut()) };
    /// The descriptors of the frame being decoded, and the largest shared
    /// memory a receiver maps.
    static INCOMING: RefCell<Option<(Descriptors, usize)>> = const { RefCell::new(None) };
}

/// Runs `encode` collecting the descriptors of the shared memory it
/// serializes, if `passes` (the connection can pass them); returns them
/// with its result.
pub(crate) fn encoding<R>(passes: bool, encode: impl FnOnce() -> R) -> (R, Descriptors) {
    let mut collected = Descriptors::new();
    if !passes {
        return (encode(), collected);
    }
    /// Puts back what was there, also when `encode` panics.
    struct Restore(*mut Descriptors);
    impl Drop for Restore {
        fn drop(&mut self) {
            OUTGOING.set(self.0);
        }
    }
    let restore = Restore(OUTGOING.replace(&mut collected));
    let result = encode();
    drop(restore);
    (result, collected)
}

/// The index `descriptor` travels as in the payload being encoded, if one
/// is (and it has room for one more).
pub(crate) fn offer(descriptor: &Arc<OwnedFd>) -> Option<u32> {
    let out = OUTGOING.get();
    // SAFETY: non-null only inside `encoding`, pointing at the list it
    // keeps alive on its stack for that long; nothing else refers to the
    // list meanwhile (`encoding` touches it only after `encode` returned,
    // and this reference ends with this call).
    let out = unsafe { out.as_mut() }?;
    if let Some(index) = out.iter().position(|d| Arc::ptr_eq(d, descriptor)) {
        return Some(index as u32);
    }
    if out.len() >= MAX_DESCRIPTORS_PER_FRAME {
        return None; // the rest go as bytes
    }
    out.push(descriptor.clone());
    Some(out.len() as u32 - 1)
}

/// Runs `decode` with the `descriptors` of the frame it decodes at hand,
/// mapping none larger than `max_len` bytes.
pub(crate) fn decoding<R>(
    descriptors: Descriptors,
    max_len: usize,
    decode: impl FnOnce() -> R,
) -> R {
    if descriptors.is_empty() {
        return decode();
    }
    let outer = INCOMING.with(|incoming| incoming.replace(Some((descriptors, max_len))));
    /// Puts back what was there, also when `decode` panics.
    struct Restore(Option<(Descriptors, usize)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            INCOMING.with(|incoming| *incoming.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(outer);
    decode()
}

/// Descriptor `index` of the frame being decoded, and the largest shared
/// memory to map.
///
/// # Errors
/// Why there is no such descriptor, in words.
pub(crate) fn take(index: u32) -> Result<(Arc<OwnedFd>, usize), String> {
    INCOMING.with(|incoming| {
        let incoming = incoming.borrow();
        let Some((descriptors, max_len)) = incoming.as_ref() else {
            return Err("shared memory outside a frame that carries it".to_owned());
        };
        match descriptors.get(index as usize) {
            Some(descriptor) => Ok((descriptor.clone(), *max_len)),
            None => Err(format!(
                "shared memory #{index}, but the frame carries {} descriptors",
                descriptors.len()
            )),
        }
    })
}
