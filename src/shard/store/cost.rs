//! What kept data costs in memory, as the shard's memory limits count it
//! (`[history] memory`, `[inbox] memory`): the heap bytes really allocated
//! for it, not the payload's length.
//!
//! Pure functions and constants, used by the stores on whichever shard owns
//! them. `tests/memory.rs` checks them against the bytes a counting
//! allocator hands out; what allocators keep of their own (free blocks in
//! partly used pages, metadata) is not counted: RSS at a full cap sits that
//! much above it.
//!
//! ```text
//! a kept frame         its buffer (exactly sized, in the allocator's size class) + the shared
//!                      header `bytes` allocates when a frozen buffer is first cloned (fan-out
//!                      and the store both hold it)
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

/// What an allocation of `n` bytes takes from the process allocator: its
/// size class (mimalloc's: 8-byte steps up to 64 bytes, then four classes
/// per doubling: just past a power of two a quarter more, an eighth on
/// average).
pub const fn size_class(n: usize) -> usize {
    if n <= 64 {
        return n.div_ceil(8) * 8;
    }
    let top = usize::BITS - (n - 1).leading_zeros() - 1; // 2^top < n <= 2^(top+1)
    let step = 1 << (top - 2);
    n.div_ceil(step) * step
}

/// A frame kept by a store.
pub fn frame(b: &Bytes) -> usize {
    size_class(b.len()) + SHARED_HEADER
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

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_by_at_most_a_quarter() {
        assert_eq!(
            (size_class(1), size_class(8), size_class(9), size_class(64)),
            (8, 8, 16, 64)
        );
        assert_eq!(
            (size_class(65), size_class(80), size_class(81), size_class(128)),
            (80, 80, 96, 128)
        );
        assert_eq!(
            (size_class(129), size_class(1000), size_class(1 << 20)),
            (160, 1024, 1 << 20)
        );
        for n in 65..100_000 {
            let c = size_class(n);
            assert!(c >= n && c - n < n / 4 + 8, "{n} -> {c}");
        }
    }
}
