//! A small-object allocator for guests: the SDK's global allocator on wasm32 (feature
//! `pool-alloc`, on by default).
//!
//! A batch allocates and frees a few small blocks per row (a text value, the `Vec<Row>` a
//! transform returns). wasi-libc's dlmalloc spends about as long on those as the row's actual
//! work. Here blocks of up to [`MAX_POOLED`] bytes come in 16-byte size classes; a freed block
//! goes onto its class's free list and the next allocation of that class pops it, a handful of
//! instructions each way. Larger blocks go straight to the system allocator.
//!
//! Freed small blocks are kept for reuse rather than returned, and a block never changes class,
//! so an instance holds on to the sum of each class's own peak (a batch of 16-byte blocks, freed,
//! then one of 32-byte blocks, keeps both). Rows of a pipeline are alike from batch to batch, so
//! in practice that is close to the peak small-object footprint; the host's memory cap still
//! bounds the total (an instance that reaches it is rebuilt, and its call run again). A
//! component is single-threaded (the SDK uses this allocator only without wasm threads,
//! `atomics`), which is what makes the unsynchronised free lists sound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// The largest block size served from a size class.
const MAX_POOLED: usize = 256;
/// Size-class granularity, also every pooled block's alignment.
const GRANULE: usize = 16;
const CLASSES: usize = MAX_POOLED / GRANULE;

/// The allocator: per-class free lists over [`System`].
pub struct Pool {
    /// Head of each class's free list; a free block's first word points at the next one.
    heads: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: only compiled for wasm32 without `atomics`, where a component runs on one thread, so
// the free lists are never shared.
unsafe impl Sync for Pool {}

impl Pool {
    /// An allocator with empty free lists.
    pub const fn new() -> Pool {
        Pool {
            heads: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }

    /// The size class serving `layout`, if it is small enough.
    fn class(layout: Layout) -> Option<usize> {
        (layout.size() <= MAX_POOLED && layout.align() <= GRANULE)
            .then(|| layout.size().max(1).div_ceil(GRANULE) - 1)
    }

    /// The layout every block of `class` is allocated with.
    fn class_layout(class: usize) -> Layout {
        // Sizes are multiples of 16 up to 256 with alignment 16: always a valid layout.
        Layout::from_size_align((class + 1) * GRANULE, GRANULE).expect("valid class layout")
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

// SAFETY: blocks of a class all have that class's size and alignment, which satisfy every layout
// mapped to it; a block is on at most one free list, and only while it is not allocated.
unsafe impl GlobalAlloc for Pool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Pool::class(layout) else {
            return unsafe { System.alloc(layout) };
        };
        let heads = unsafe { &mut *self.heads.get() };
        let head = heads[class];
        if head.is_null() {
            return unsafe { System.alloc(Pool::class_layout(class)) };
        }
        heads[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = Pool::class(layout) else {
            return unsafe { System.dealloc(block, layout) };
        };
        let heads = unsafe { &mut *self.heads.get() };
        unsafe { block.cast::<*mut u8>().write(heads[class]) };
        heads[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (all calls): the caller guarantees `block` was allocated with `layout` and that
        // `new_size` forms a valid layout with its alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Pool::class(layout), Pool::class(new_layout)) {
            // Both large: let the system allocator grow in place when it can.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // Same class: the block already has room.
            (Some(a), Some(b)) if a == b => block,
            _ => unsafe {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            },
        }
    }
}
