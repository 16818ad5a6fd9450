//! Who owns which keys and users, and pushes to them: the shard's slice of
//! the key and user directory (`directory`, pure) and pushes to users
//! (`users`: live delivery, the inbox, what a new connection is owed).
//!
//! Runs on the owner shard of each key and user (`owner_of_str`,
//! `owner_of_mid`).

pub(super) mod directory;
mod users;
