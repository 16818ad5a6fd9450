//! A server started from what a previous process handed over (`volley
//! upgrade`): the listening sockets it was given, as bound ones, and the
//! durable store, opened once the previous process lets go of its lock.
//!
//! Runs on the caller's thread (listeners) and on a thread of its own (the
//! wait for the store); each shard takes its part of the store as it comes.

use super::StartError;
use crate::config::Config;
use crate::net::{self, ListenerKind, ListenerSpec};
use std::sync::Arc;
use std::time::Duration;

/// Where a shard's part of the durable store comes from.
pub(super) enum StoreFiles {
    /// Opened before the shards started.
    Now(crate::disk::layout::ShardFiles),
    /// Once the previous process lets go of the store (taking over).
    Later(std::sync::mpsc::Receiver<crate::disk::layout::ShardFiles>),
}

/// How long a server taking over waits for the previous one to let go of
/// the durable store.
const STORE_WAIT: Duration = Duration::from_secs(120);

/// Opens the durable store in `dir` as soon as its lock is free (the
/// previous process holds it until it lets go), on a thread of its own;
/// each shard's part goes down `to`, the store (and its lock) into `held`.
pub(super) fn take_store_later(
    dir: std::path::PathBuf,
    n: usize,
    to: Vec<std::sync::mpsc::Sender<crate::disk::layout::ShardFiles>>,
    held: Arc<std::sync::Mutex<Option<crate::disk::layout::Store>>>,
) {
    let wait = move || {
        let until = std::time::Instant::now() + STORE_WAIT;
        loop {
            match crate::disk::layout::open(&dir, n) {
                Ok(store) => {
                    for (tx, files) in to.iter().zip(&store.shards) {
                        let _ = tx.send(files.clone());
                    }
                    *held.lock().unwrap_or_else(|p| p.into_inner()) = Some(store);
                    return;
                }
                Err(crate::disk::layout::LayoutError::Locked(_)) if std::time::Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot take the durable store over");
                    return;
                }
            }
        }
    };
    if let Err(e) = std::thread::Builder::new().name("volley-store".into()).spawn(wait) {
        tracing::error!(error = %e, "cannot start waiting for the durable store");
    }
}

/// The shard's part of the store once it comes; `None` if it never will.
pub(super) async fn wait_for(
    rx: std::sync::mpsc::Receiver<crate::disk::layout::ShardFiles>,
) -> Option<crate::disk::layout::ShardFiles> {
    loop {
        match rx.try_recv() {
            Ok(files) => return Some(files),
            Err(std::sync::mpsc::TryRecvError::Empty) => glommio::timer::sleep(Duration::from_millis(5)).await,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
        }
    }
}

/// The listening sockets a previous process handed over, as bound ones:
/// one of each kind per shard.
pub(super) fn adopted_listeners(
    config: &Config,
    listeners: Vec<(ListenerKind, usize, std::os::fd::OwnedFd)>,
    n: usize,
) -> Result<Vec<net::Bound>, StartError> {
    let mut bound: Vec<net::Bound> = ListenerSpec::from_config(config)
        .into_iter()
        .map(|spec| net::Bound {
            spec,
            sockets: Vec::with_capacity(n),
        })
        .collect();
    let mut at: Vec<Vec<Option<socket2::Socket>>> = bound.iter().map(|_| (0..n).map(|_| None).collect()).collect();
    for (kind, shard, fd) in listeners {
        let k = bound
            .iter()
            .position(|b| b.spec.kind == kind)
            .expect("every kind is configured");
        let slot = at[k]
            .get_mut(shard)
            .ok_or_else(|| StartError::Handoff(format!("a {} listener for shard {shard} of {n}", kind.name())))?;
        *slot = Some(socket2::Socket::from(fd));
    }
    for (b, sockets) in bound.iter_mut().zip(at) {
        for (shard, s) in sockets.into_iter().enumerate() {
            let s =
                s.ok_or_else(|| StartError::Handoff(format!("no {} listener for shard {shard}", b.spec.kind.name())))?;
            if shard == 0 {
                if let Some(addr) = s.local_addr().ok().and_then(|a| a.as_socket()) {
                    b.spec.addr = addr;
                }
            }
            b.sockets.push(s);
        }
    }
    Ok(bound)
}
