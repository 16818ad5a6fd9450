//! What a shard keeps for its rooms and users, each bounded and counted:
//! one bounded store (`bounded`: per-key FIFO, per-key limits, the shard's
//! cap, the expiry heap, evictions by cause) under room logs (`history`:
//! offsets, epochs, history and its limits, marks) and user inboxes
//! (`inbox`); publisher message ids seen (`dedup`); what kept data costs in
//! memory as the limits count it (`cost`); and the expiry marks and
//! order-queue compaction the stores share (`due`).
//!
//! Pure data, owned by one shard; time arrives as ticks.

pub mod bounded;
pub mod cost;
pub mod dedup;
pub mod due;
pub mod history;
pub mod inbox;
