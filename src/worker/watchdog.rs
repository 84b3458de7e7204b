//! A worker process's last resort: once it begins to stop (SIGTERM, which
//! is also its parent-death signal, so the host's death; or any reason of
//! the worker's own), it has its grace period to exit by itself; then a
//! timer signal ends the process, removing its attach directory first. A
//! handler that blocks the worker's thread (a CPU-bound job, the first use
//! of a worker) can thus delay the worker's end by the grace period at most.
//!
//! Signals rather than a thread of its own: a second thread would cost the
//! worker a lock on every allocation (glibc's allocator takes none while a
//! process has one thread), measured at about 6 % of the time of pipelined
//! requests; a signal handler runs on the one thread whatever it is doing.
//!
//! Everything here that runs in a signal handler is async-signal-safe:
//! atomics, `setitimer`, `unlink`, `rmdir`, `write` and `_exit`. The
//! deadline takes the process's `ITIMER_REAL` once armed; a SIGALRM that
//! comes before (user code's own timer) is not taken for it.
//!
//! Written on `libc`: `rustix` has neither `setitimer` nor (outside its
//! experimental runtime module) `_exit`, and the handler's calls are best
//! kept to the C library's documented async-signal-safe ones.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

/// How long past its grace period a stopping worker is given to flush its
/// last frames and exit by itself before it is ended.
const FLUSH_MARGIN: Duration = Duration::from_millis(250);

/// Exit code of a worker ended here, as if SIGTERM's default action had
/// ended it (128 + 15, as a shell reports it).
const FORCED_EXIT_CODE: i32 = 143;

/// What is said on stderr when the deadline passes.
const ENDING: &[u8] =
    b"isolated-workers: the worker did not stop within its grace period; ending it\n";

/// The grace period plus [`FLUSH_MARGIN`], in microseconds; 0 until
/// [`install`] ran (then nothing is armed).
static DEADLINE_US: AtomicU64 = AtomicU64::new(0);
/// Set once the deadline is armed: it is armed once.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The attach socket and its directory, as C strings, once the worker made
/// them (leaked: they live as long as the process).
static ATTACH: AtomicPtr<AttachPaths> = AtomicPtr::new(std::ptr::null_mut());

struct AttachPaths {
    socket: CString,
    dir: CString,
}

/// Gives this worker process `grace` to exit once it begins to stop, and
/// makes SIGTERM begin it. Call once, before serving.
pub(crate) fn install(grace: Duration) -> std::io::Result<()> {
    let deadline = (grace + FLUSH_MARGIN).as_micros().max(1);
    DEADLINE_US.store(
        u64::try_from(deadline).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    // SAFETY: both actions are async-signal-safe (see the module doc); they
    // run beside the actions of others (tokio's SIGTERM stream, through the
    // same registry).
    unsafe {
        signal_hook_registry::register(libc::SIGTERM, arm)?;
        signal_hook_registry::register(libc::SIGALRM, end_now)?;
    }
    Ok(())
}

/// The worker has begun to stop: it is ended if it has not exited within
/// its grace period. Async-signal-safe.
pub(crate) fn arm() {
    let deadline = DEADLINE_US.load(Ordering::Relaxed);
    if deadline == 0 || ARMED.swap(true, Ordering::AcqRel) {
        return;
    }
    let micros = |us: u64| libc::timeval {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_usec: (us % 1_000_000) as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: micros(0),
        it_value: micros(deadline),
    };
    // SAFETY: a plain system call on a valid, initialised value.
    unsafe {
        libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
    }
}

/// Remembers the attach socket this worker made, to remove it (and its
/// directory) as the process exits, by itself or ended here (see
/// [`remove_attach_socket`]).
pub(crate) fn attach_socket_made(socket: &Path) {
    let Some(dir) = socket.parent() else {
        return;
    };
    let (Ok(socket), Ok(dir)) = (
        CString::new(socket.as_os_str().as_bytes()),
        CString::new(dir.as_os_str().as_bytes()),
    ) else {
        return;
    };
    let paths = Box::into_raw(Box::new(AttachPaths { socket, dir }));
    let old = ATTACH.swap(paths, Ordering::AcqRel);
    if !old.is_null() {
        // SAFETY: made by `Box::into_raw` above, in an earlier call, and no
        // longer reachable through `ATTACH`. (A worker makes one socket.)
        drop(unsafe { Box::from_raw(old) });
    }
}

/// The deadline passed: removes the attach socket and its directory, says
/// so, and exits. Async-signal-safe.
fn end_now() {
    if !ARMED.load(Ordering::Acquire) {
        return; // someone else's timer: not the deadline
    }
    remove_attach_socket();
    // SAFETY: write and _exit are async-signal-safe system calls.
    unsafe {
        libc::write(2, ENDING.as_ptr().cast(), ENDING.len());
        libc::_exit(FORCED_EXIT_CODE);
    }
}

/// Removes the attach socket this worker made, and its directory, if it
/// made one. Async-signal-safe; whoever comes second (the host, which
/// removes it too once the worker is gone) finds nothing.
pub(crate) fn remove_attach_socket() {
    let paths = ATTACH.load(Ordering::Acquire);
    // SAFETY: `paths`, if set, is a leaked `AttachPaths` that stays valid;
    // unlink and rmdir are async-signal-safe system calls.
    unsafe {
        if let Some(paths) = paths.as_ref() {
            libc::unlink(paths.socket.as_ptr());
            libc::rmdir(paths.dir.as_ptr());
        }
    }
}
