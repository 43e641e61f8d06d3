//! `tikv_jemallocator::Jemalloc`, backed by the system allocator (see
//! Cargo.toml for why this exists).

use std::alloc::{GlobalAlloc, Layout, System};

pub struct Jemalloc;

unsafe impl GlobalAlloc for Jemalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}
