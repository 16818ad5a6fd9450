//! Who owns which keys and users, and pushes to them: the shard's slice of
//! the key and user directory (`directory`, pure), registering connections
//! there (`registry`: replaced keys, the user limit, the inbox owed), and
//! pushes to users (`users`: live delivery, the inbox, acks).
//!
//! Runs on the owner shard of each key and user (`owner_of_str`,
//! `owner_of_mid`).

pub(super) mod directory;
mod registry;
mod users;

/// What a shard keeps as the owner of its keys and users.
#[derive(Debug, Default)]
pub(in crate::shard) struct Owners {
    /// This shard's slice of the key and user directory.
    pub(in crate::shard) dir: directory::Directory,
    /// Pushes to users that entered the process at this shard (their ids).
    pub(in crate::shard) push_seq: u64,
}
