//! A counting global allocator: the bench binary installs it so the zero-copy
//! scenario can report allocations and bytes allocated per delivered frame.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Wraps the system allocator and counts while counting is on.
pub struct CountingAlloc;

static ON: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        if ON.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocation counts over a section.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Allocations (and reallocations).
    pub allocs: u64,
    /// Bytes requested.
    pub bytes: u64,
}

/// Whether `CountingAlloc` is the global allocator of this process.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Counts the allocations made while `f` runs (on any thread).
pub fn count<T>(f: impl FnOnce() -> T) -> (T, Counts) {
    let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    ON.store(true, Ordering::SeqCst);
    let out = f();
    ON.store(false, Ordering::SeqCst);
    let counts = Counts { allocs: ALLOCS.load(Ordering::Relaxed) - a0, bytes: BYTES.load(Ordering::Relaxed) - b0 };
    (out, counts)
}
