//! Connection I/O: the only code that awaits on sockets. `tcp` drives one
//! client connection, raw TCP or WebSocket; `outbound` is its bounded,
//! coalescing write queue.

pub mod outbound;
pub mod tcp;
