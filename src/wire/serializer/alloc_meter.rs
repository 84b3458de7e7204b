//! The unit tests' allocator: the system's, counting what each thread has
//! allocated, so that a test can see how much memory a decode took at its
//! peak ([`peak_during`]) however many other tests run at the same time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Meter;

thread_local! {
    /// Bytes this thread has allocated and not yet freed (frees of memory
    /// another thread allocated may take it below zero).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The most `LIVE` has been since the last `peak_during` began.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Adds `delta` to this thread's live bytes. A thread being torn down has
/// no counters left; its allocations go uncounted.
fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to `System` unchanged; the counters are
// plain thread-local cells, which neither allocate nor need a destructor.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // At the moment of a moving realloc both blocks exist.
            count(new_size as isize);
            count(-(layout.size() as isize));
        }
        new
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// Runs `f` and returns what it returned, with the most memory this thread
/// held at any moment during it beyond what it held before.
pub(crate) fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, (peak - before).max(0) as usize)
}

#[test]
fn the_meter_sees_an_allocation_and_its_peak() {
    let ((), peak) = peak_during(|| {
        let big = vec![0u8; 1 << 20];
        std::hint::black_box(&big);
    });
    assert!(peak >= 1 << 20, "{peak}");
    let ((), peak) = peak_during(|| ());
    assert_eq!(peak, 0);
}
