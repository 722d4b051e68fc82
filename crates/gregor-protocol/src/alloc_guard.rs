//! A global allocator that makes hostile capacity requests harmless.
//!
//! `kafka-protocol` 0.18 decodes an array by reading its element count off the wire and calling
//! `Vec::with_capacity(count)` before it has checked that the input holds that many elements.
//! A 5-byte Metadata body that claims 2^31-1 topics therefore asks the allocator for hundreds of
//! gigabytes. The system allocator refuses (the kernel's overcommit heuristic rejects a mapping
//! larger than RAM + swap), and Rust turns a refused allocation into a process abort, which no
//! `catch_unwind` can stop.
//!
//! [`GuardedAllocator`] serves every allocation of [`HUGE_ALLOCATION_BYTES`] or more with an
//! anonymous `MAP_NORESERVE` mapping instead. Such a mapping only reserves address space: no
//! page is backed by memory until it is touched, and the codec touches at most as many elements
//! as the (size-limited) frame actually contains before it fails with "not enough bytes". The
//! mapping is returned to the kernel when the vector is dropped. Memory actually used therefore
//! stays bounded by the frame size limit, not by the count a client claims.
//!
//! Legitimate allocations that large do not happen in Gregor: requests are capped by
//! `socket.request.max.bytes` (100 MiB by default) and batches by `message.max.bytes`.
//!
//! This is a defence in depth for a known upstream defect, not a licence to decode unchecked
//! input elsewhere: Gregor's own code validates counts against the bytes that remain.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are served by `mmap(MAP_NORESERVE)`.
pub const HUGE_ALLOCATION_BYTES: usize = 1 << 30;

/// Page size assumed for alignment: mappings are always page aligned, so any alignment up to
/// this value is satisfied by `mmap`.
const PAGE_ALIGN: usize = 4096;

/// See the module documentation.
pub struct GuardedAllocator;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_ALLOCATION_BYTES && layout.align() <= PAGE_ALIGN
}

/// Map `size` bytes of anonymous, zero-filled, unreserved memory, or return null.
fn map_huge(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with a null hint has no preconditions; the kernel
    // either returns a fresh page-aligned region of at least `size` bytes that nothing else
    // references, or MAP_FAILED, which we translate to null (the GlobalAlloc failure value).
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

// SAFETY: every method upholds the GlobalAlloc contract:
// - huge layouts (decided by `is_huge`, a pure function of the layout, so alloc and dealloc of
//   the same layout always take the same path) get a fresh page-aligned mapping of exactly
//   `layout.size()` bytes, which satisfies any alignment <= PAGE_ALIGN, and are released with
//   `munmap` of the same address and size;
// - every other layout is forwarded unchanged to `System`, which upholds the contract itself;
// - `realloc` never hands a pointer from one path to the other path's release function: when
//   either side is huge it allocates the new block through `alloc`, copies the smaller of the
//   two sizes, and releases the old block through `dealloc` with its original layout.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            map_huge(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees (non-zero size layout).
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled by the kernel.
            map_huge(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from `map_huge(layout.size())` (same layout ⇒ same path) and is
            // released exactly once, as the caller guarantees.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is non-zero and does not overflow when
        // rounded to `layout.align()`, so this layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: both blocks live on the System path.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_layout` is valid (see above).
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both regions are valid for min(old, new) bytes and do not overlap, since
            // `new_ptr` is a fresh allocation; the old block is released exactly once.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_layout_maps_and_unmaps_without_touching_memory() {
        let layout = Layout::from_size_align(512 << 30, 8).unwrap();
        let alloc = GuardedAllocator;
        // SAFETY: non-zero size layout; the pointer is released with the same layout.
        unsafe {
            let p = alloc.alloc(layout);
            assert!(!p.is_null(), "a 512 GiB unreserved mapping must succeed");
            p.write(7);
            assert_eq!(p.read(), 7);
            alloc.dealloc(p, layout);
        }
    }

    #[test]
    fn realloc_across_the_threshold_keeps_contents() {
        let alloc = GuardedAllocator;
        let small = Layout::from_size_align(16, 8).unwrap();
        // SAFETY: standard alloc/realloc/dealloc sequence with matching layouts.
        unsafe {
            let p = alloc.alloc(small);
            p.write_bytes(0xAB, 16);
            let q = alloc.realloc(p, small, HUGE_ALLOCATION_BYTES);
            assert!(!q.is_null());
            assert_eq!(*q.add(15), 0xAB);
            let huge = Layout::from_size_align(HUGE_ALLOCATION_BYTES, 8).unwrap();
            let r = alloc.realloc(q, huge, 32);
            assert_eq!(*r.add(15), 0xAB);
            alloc.dealloc(r, Layout::from_size_align(32, 8).unwrap());
        }
    }
}
