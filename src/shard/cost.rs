//! What kept data costs in memory, as the shard's memory limits count it
//! (`[history] memory`, `[inbox] memory`): the heap bytes really allocated
//! for it, not the payload's length.
//!
//! Pure functions and constants, used by the stores on whichever shard owns
//! them. `tests/memory.rs` checks them against the bytes a counting
//! allocator hands out (the process allocator rounds up by at most an eighth
//! on top, and allocators keep some memory of their own: RSS at a full cap
//! sits that much above it).
//!
//! ```text
//! a kept frame         its buffer (exactly sized) + the shared header `bytes` allocates
//!                      when a frozen buffer is first cloned (fan-out and the store both hold it)
//! a hash map value     its slot (key, value, control byte), twice: load factor and the
//!                      headroom left when the table doubles
//! a deque              its capacity, not its length
//! ```

use crate::proto::wire::{Frames, Wire};
use bytes::Bytes;
use std::collections::VecDeque;
use std::mem::size_of;

/// `bytes`' shared header (buffer, capacity, count: 24 bytes) in its size
/// class.
const SHARED_HEADER: usize = 32;

/// A frame kept by a store.
pub fn frame(b: &Bytes) -> usize {
    b.len() + SHARED_HEADER
}

/// Both transports' forms of a push.
pub fn wire(w: &Wire) -> usize {
    frame(&w.tcp) + frame(&w.ws)
}

/// Both protocol versions' forms of a push, each in both transports'.
pub fn frames(f: &Frames) -> usize {
    wire(&f.v1) + wire(&f.v2)
}

/// A `(K, V)` entry of a hash map.
pub const fn map_slot<K, V>() -> usize {
    2 * (size_of::<(K, V)>() + 1)
}

/// An item of a queue or heap that grows by doubling.
pub const fn queue_slot<T>() -> usize {
    2 * size_of::<T>()
}

/// A deque's buffer.
pub fn deque<T>(d: &VecDeque<T>) -> usize {
    d.capacity() * size_of::<T>()
}

/// An `Arc<str>` of `len` bytes: its two counts and its text.
pub const fn arc_str(len: usize) -> usize {
    16 + len
}
