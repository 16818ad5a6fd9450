//! What a shard keeps for its rooms and users, each bounded and counted:
//! room logs (`history`: offsets, epochs, history and its limits, marks),
//! user inboxes (`inbox`), publisher message ids seen (`dedup`), and what
//! kept data costs in memory as the limits count it (`cost`).
//!
//! Pure data, owned by one shard; time arrives as ticks.

pub mod cost;
pub mod dedup;
pub mod due;
pub mod history;
pub mod inbox;
