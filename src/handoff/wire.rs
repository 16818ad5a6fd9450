//! The hand-off's conversation between the running process ("old") and
//! the one taking over ("new"), over the socket pair of `fds`: `Message`s
//! in postcard, each cut into pieces that fit one socket message, with the
//! descriptors it carries spread over its pieces in order.
//!
//! ```text
//! new → old   Hello { version, pid, shards }          (after its config checked)
//! old → new   Refuse { reason }                        (version or shard count differ)
//!           | Keys, Listeners (+fds), Shard × n (+fds) (the old has gone quiet)
//! new → old   Adopted                                  (every shard took its connections)
//!           | Abort { reason }
//! old → new   Commit                                   (the old lets go and exits)
//!           | Abort { reason }                         (the old serves on)
//! piece:      flag u8 (1: more pieces follow) | up to MAX_MESSAGE - 1 bytes of the message
//! ```
//!
//! Blocking, on a thread of each process's own (never a shard). Invariant:
//! a message and its descriptors arrive whole or not at all; a peer that
//! goes away mid-message, or sends more than `MAX_BYTES` or `MAX_FDS_TOTAL`,
//! is an error, never a partial message.

use super::fds;
pub use crate::net::ListenerKind;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

pub use crate::shard::handoff::VERSION;
/// Largest message taken (a shard of a million connections is ~100 MB).
pub const MAX_BYTES: usize = 1 << 30;
/// Most descriptors one message brings.
pub const MAX_FDS_TOTAL: usize = 4 << 20;

/// One turn of the conversation. `Hello` is the first variant, with these
/// fields, in every version (a test pins its bytes).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// New → old, first, once its configuration is checked.
    Hello {
        /// Its `VERSION`.
        version: u32,
        /// Its process id.
        pid: u32,
        /// The shards it runs.
        shards: u32,
    },
    /// Old → new: no hand-off, and why; the new process exits.
    Refuse {
        /// Why.
        reason: String,
    },
    /// Old → new: the key maker's tag and secret, so that every
    /// server-assigned key handed out stays valid.
    Keys {
        /// The public tag.
        tag: u64,
        /// The secret.
        secret: Vec<u8>,
    },
    /// Old → new: the listening sockets (attached), what each is for and
    /// which shard accepted on it.
    Listeners {
        /// One per socket, in order.
        sockets: Vec<(ListenerKind, u32)>,
    },
    /// Old → new: one shard's connections (`shard::handoff::encode`), with
    /// their sockets attached in the records' order.
    Shard {
        /// Which.
        shard: u32,
        /// The records.
        records: Vec<u8>,
    },
    /// New → old: every shard took its connections.
    Adopted,
    /// Old → new: the old process has let go; serve.
    Commit,
    /// Either way: the hand-off is off, and why; the old process serves on.
    Abort {
        /// Why.
        reason: String,
    },
}

/// Bytes of a message per piece.
const PIECE: usize = fds::MAX_MESSAGE - 1;

/// Sends `msg` with `attached` descriptors.
pub fn send(sock: BorrowedFd<'_>, msg: &Message, attached: &[RawFd]) -> io::Result<()> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| io::Error::other(e.to_string()))?;
    if bytes.len() > MAX_BYTES || attached.len() > MAX_FDS_TOTAL {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a message past the hand-off's bounds",
        ));
    }
    let mut chunks = bytes.chunks(PIECE);
    let mut fd_chunks = attached.chunks(fds::MAX_FDS);
    let pieces = bytes
        .len()
        .div_ceil(PIECE)
        .max(attached.len().div_ceil(fds::MAX_FDS))
        .max(1);
    let mut buf = Vec::with_capacity(fds::MAX_MESSAGE);
    for i in 0..pieces {
        buf.clear();
        buf.push(u8::from(i + 1 < pieces));
        buf.extend_from_slice(chunks.next().unwrap_or(&[]));
        fds::send(sock, &buf, fd_chunks.next().unwrap_or(&[]))?;
    }
    Ok(())
}

/// Receives the next message and its descriptors; `None` if the peer
/// closed the socket between messages.
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; fds::MAX_MESSAGE];
    let mut bytes = Vec::new();
    let mut attached = Vec::new();
    loop {
        let Some((n, got)) = fds::recv(sock, &mut buf)? else {
            if bytes.is_empty() && attached.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer left mid-message",
            ));
        };
        attached.extend(got);
        bytes.extend_from_slice(&buf[1..n]);
        if bytes.len() > MAX_BYTES || attached.len() > MAX_FDS_TOTAL {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a message past the hand-off's bounds",
            ));
        }
        match buf[0] {
            1 => continue,
            0 => break,
            f => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("piece flag {f}"))),
        }
    }
    let msg = postcard::from_bytes(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(Some((msg, attached)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn a_message_bigger_than_a_piece_with_thousands_of_sockets_arrives_whole() {
        let (a, b) = fds::pair().unwrap();
        let files: Vec<std::fs::File> = (0..3000).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let records: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let msg = Message::Shard { shard: 1, records };
        let sender = std::thread::spawn({
            let raw = raw.clone();
            move || {
                send(
                    a.as_fd(),
                    &Message::Hello {
                        version: VERSION,
                        pid: 7,
                        shards: 2,
                    },
                    &[],
                )
                .unwrap();
                send(a.as_fd(), &msg, &raw).unwrap();
                send(a.as_fd(), &Message::Commit, &[]).unwrap();
                msg
            }
        });
        let (hello, none) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(
            hello,
            Message::Hello {
                version: VERSION,
                pid: 7,
                shards: 2
            }
        );
        assert!(none.is_empty());
        let (shard, got) = recv(b.as_fd()).unwrap().unwrap();
        let sent = sender.join().unwrap();
        assert_eq!(shard, sent);
        assert_eq!(got.len(), 3000);
        assert_eq!(recv(b.as_fd()).unwrap().unwrap().0, Message::Commit);
        assert!(recv(b.as_fd()).unwrap().is_none(), "the old process's end closed");
    }

    /// Whatever changes in later versions, `Hello` stays the first variant
    /// with these fields, so that a process of any version can read the
    /// other's and refuse it by its version.
    #[test]
    fn hello_reads_the_same_in_every_version() {
        let hello = Message::Hello {
            version: 1,
            pid: 7,
            shards: 2,
        };
        assert_eq!(postcard::to_stdvec(&hello).unwrap(), [0, 1, 7, 2]);
    }

    #[test]
    fn a_peer_gone_mid_message_or_speaking_nonsense_is_an_error_not_a_message() {
        let (a, b) = fds::pair().unwrap();
        fds::send(a.as_fd(), &[1, 0, 0], &[]).unwrap(); // "more follows", then nothing
        drop(a);
        assert_eq!(recv(b.as_fd()).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (a, b) = fds::pair().unwrap();
        fds::send(a.as_fd(), &[7, 0], &[]).unwrap();
        assert_eq!(recv(b.as_fd()).unwrap_err().kind(), io::ErrorKind::InvalidData);
        fds::send(a.as_fd(), &[0, 200, 200, 200], &[]).unwrap();
        assert_eq!(recv(b.as_fd()).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
