//! The durable store's start on a shard: read the journal back into the
//! memory store (from the newest whole checkpoint on), name and count what
//! could not be read, cut a torn tail off, then hand the shard its journal
//! and start the journal's driver. After a change of shard count the shard
//! reads every old folder, keeps what it owns, and writes it down as a
//! checkpoint in its new folder before it serves.
//!
//! Runs on the shard's executor at start, before its inbox loop (so
//! nothing the shard owns is answered before it is read back); awaits the
//! driver's reads. Progress goes to `Shared::recovery` for `/healthz`.

use super::state::Shard;
use super::store::durable::replay::{Applied, Owner};
use super::store::durable::Durable;
use crate::disk::driver::{self, segment_path};
use crate::disk::journal::{Journal, Sync};
use crate::disk::layout::ShardFiles;
use crate::disk::recover;
use crate::metrics::{self, ShardStats};
use glommio::TaskQueueHandle;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The journal policy `[storage]` asks for.
pub fn sync_of(c: &crate::config::StorageConfig) -> Sync {
    match c.sync {
        crate::config::SyncMode::Batch => Sync::Batch {
            window_us: c.sync_window_us,
        },
        crate::config::SyncMode::Interval => Sync::Interval {
            every_ms: c.sync_interval_ms,
        },
        crate::config::SyncMode::None => Sync::None,
    }
}

impl Shard {
    /// From now until `recover` is done, what this shard would handle
    /// inline waits in its inbox (a server taking over from another one
    /// serves its connections before the store is free to read back).
    pub fn begin_recovery(&mut self) {
        self.recovering = true;
    }
}

/// Reads the shard's store back and starts its journal (see the module
/// doc). An error is why the shard cannot start.
pub async fn recover(shard: &Rc<RefCell<Shard>>, files: ShardFiles, control: TaskQueueHandle) -> Result<(), String> {
    let (id, shared) = {
        let mut sh = shard.borrow_mut();
        sh.set_unix(metrics::unix_now());
        // Until it is loaded, what clients and the API accepted here ask of
        // this shard waits in its inbox like what other shards ask.
        sh.recovering = true;
        (sh.id, sh.shared.clone())
    };
    let started = std::time::Instant::now();
    let nr = shared.mesh.nr_shards();
    let owner = Owner { id, nr };
    let now = shard.borrow().disk_now();
    let progress = &shared.recovery;
    let mut applied = Applied::default();
    let mut lost = 0u64;
    let mut kept: Vec<(u64, u64)> = Vec::new();
    // The size of the checkpoint replay started at: the journal's next
    // checkpoint is due when the log has grown well past it.
    let mut checkpoint_bytes = 0;
    let fail = |what: &str, dir: &Path, e: std::io::Error| format!("storage: {what} in {}: {e}", dir.display());
    progress.bytes_total.fetch_add(files.bytes, Relaxed);
    for (dir, segs) in &files.replay {
        let mut start = 0;
        let mut first = None;
        for i in (0..segs.len()).rev() {
            if !begins_checkpoint(dir, segs[i])
                .await
                .map_err(|e| fail("cannot read a segment", dir, e))?
            {
                continue;
            }
            let bytes = driver::read_segment(dir, segs[i])
                .await
                .map_err(|e| fail("cannot read a segment", dir, e))?;
            if recover::whole_checkpoint(&bytes).is_some() {
                checkpoint_bytes += bytes.len() as u64;
                (start, first) = (i, Some(bytes));
                break;
            }
        }
        for (i, &n) in segs.iter().enumerate() {
            if i < start {
                // Older than the checkpoint: what it held is in the checkpoint.
                if !files.moving {
                    remove(dir, n)
                        .await
                        .map_err(|e| fail("cannot remove an old segment", dir, e))?;
                }
                continue;
            }
            let bytes = match first.take() {
                Some(b) if i == start => b,
                _ => driver::read_segment(dir, n)
                    .await
                    .map_err(|e| fail("cannot read a segment", dir, e))?,
            };
            if i > start && recover::begins_checkpoint(&bytes).is_some() {
                // A checkpoint that did not finish: everything in it is
                // also in the segments around it (those before it up to its
                // start, those after it since).
                tracing::warn!(
                    shard = id,
                    segment = n,
                    "storage: an unfinished checkpoint was left out"
                );
                if !files.moving {
                    remove(dir, n)
                        .await
                        .map_err(|e| fail("cannot remove an unfinished checkpoint", dir, e))?;
                }
                progress.bytes_read.fetch_add(bytes.len() as u64, Relaxed);
                continue;
            }
            let read = {
                let mut sh = shard.borrow_mut();
                let store = &mut sh.store;
                recover::read_segment(n, &bytes, |rec| {
                    store.apply(&rec, now, &shared.config, owner, &mut applied)
                })
            };
            for l in &read.lost {
                tracing::warn!(shard = id, dir = %dir.display(), "storage: not read back: {l}");
            }
            lost += read.lost.len() as u64;
            if read.torn && !files.moving {
                // A torn tail: cut it off so it is not met again.
                cut(dir, n, read.stop)
                    .await
                    .map_err(|e| fail("cannot cut a torn tail", dir, e))?;
                tracing::warn!(
                    shard = id,
                    segment = n,
                    at = read.stop,
                    cut = bytes.len() as u64 - read.stop,
                    "storage: a torn write at the end of the journal was cut off"
                );
            }
            kept.push((n, read.stop));
            progress.bytes_read.fetch_add(bytes.len() as u64, Relaxed);
            progress.records.fetch_add(read.records, Relaxed);
            glommio::executor().yield_if_needed().await;
        }
    }
    shared.push_floor.fetch_max(applied.max_push, Relaxed);
    let c = &shared.config.storage;
    let mut journal = Journal::new(
        sync_of(c),
        c.segment_bytes,
        c.max_bytes / nr as u64,
        if files.moving { Vec::new() } else { kept },
    );
    if !files.moving {
        journal.checkpointed(checkpoint_bytes);
    }
    {
        let mut sh = shard.borrow_mut();
        sh.recovering = false;
        let st = &shared.stats[id];
        ShardStats::add(&st.storage_replayed, applied.records);
        ShardStats::add(&st.storage_lost, lost);
        sh.store.count_history(st);
        sh.store.count_inbox(st);
        sh.store.logs.hold_told();
        sh.store.disk = Some(Durable::new(journal));
    }
    let run = driver::drive(Rc::downgrade(shard), files.dir.clone(), c.segment_bytes);
    glommio::spawn_local_into(run, control)
        .map(|t| t.detach())
        .map_err(|e| format!("cannot spawn the journal's driver: {e}"))?;
    if files.moving {
        shard.borrow_mut().checkpoint_now();
        while shard
            .borrow()
            .store
            .disk
            .as_ref()
            .is_some_and(|d| d.journal.checkpointing())
        {
            if let Some(why) = shard
                .borrow()
                .store
                .disk
                .as_ref()
                .and_then(|d| d.journal.failing().map(String::from))
            {
                return Err(format!("storage: cannot write the moved store: {why}"));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
    tracing::info!(
        shard = id,
        records = applied.records,
        elsewhere = applied.elsewhere,
        lost,
        ms = started.elapsed().as_millis() as u64,
        "storage: read back"
    );
    Ok(())
}

/// Whether segment `n` of `dir` starts with a checkpoint's `Begin` (its
/// first block is enough to tell).
async fn begins_checkpoint(dir: &Path, n: u64) -> std::io::Result<bool> {
    let f = driver::options().read(true).dma_open(segment_path(dir, n)).await?;
    let head = f.read_at(0, crate::disk::frame::BLOCK).await?;
    f.close().await?;
    Ok(recover::begins_checkpoint(&head).is_some())
}

async fn remove(dir: &Path, n: u64) -> std::io::Result<()> {
    glommio::io::remove(segment_path(dir, n)).await.map_err(Into::into)
}

/// Cuts segment `n` of `dir` at `len` bytes, durably.
async fn cut(dir: &Path, n: u64, len: u64) -> std::io::Result<()> {
    let f = driver::options().write(true).dma_open(segment_path(dir, n)).await?;
    f.truncate(len).await?;
    f.fdatasync().await?;
    f.close().await?;
    Ok(())
}

/// What recovery does with one segment's bytes, without files: every
/// readable record applied to a fresh store (the embedded defaults, one
/// shard, as of Unix time `unix`), then the store's invariants checked.
/// Returns (records applied, stretches not read). For the recovery fuzz
/// target and tests.
///
/// # Panics
/// If the store read back breaks an invariant (a bug in volley): a room's
/// messages out of offset order or past its newest offset, what it tells
/// behind what it holds, a push twice in one inbox.
pub fn replay_checked(bytes: &[u8], unix: u64) -> (u64, usize) {
    static CONFIG: std::sync::OnceLock<crate::config::Config> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(crate::config::Config::default);
    let mut store = super::store::Store::new(config, 1, |_| false);
    let now = super::store::durable::Now { tick: 0, unix };
    let owner = Owner { id: 0, nr: 1 };
    let mut applied = Applied::default();
    let read = recover::read_segment(1, bytes, |rec| store.apply(&rec, now, config, owner, &mut applied));
    for (room, log) in store.logs.each() {
        let offsets: Vec<u64> = log.entries().map(|e| e.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{room}: {offsets:?}");
        assert!(
            offsets.last().is_none_or(|&o| o <= log.last),
            "{room}: past {}",
            log.last
        );
        assert_eq!(log.told, log.last, "{room}: everything read back may be told");
        assert!(log.lost_through <= log.last, "{room}");
    }
    let mut seen = std::collections::HashSet::new();
    for (mid, e) in store.inbox.each() {
        assert!(seen.insert((mid, e.id)), "push {} twice for {mid}", e.id);
    }
    (read.records, read.lost.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_at_offset_zero_in_another_epoch_is_left_out() {
        use crate::disk::record::Record;
        let mut seg = Vec::new();
        for (epoch, offset) in [(1, 1), (2, 0), (3, 0)] {
            Record::Message {
                room: "r",
                epoch,
                offset,
                at: 1,
                ttl_end: 0,
                op: 1,
                id: "",
                payload: b"x",
            }
            .write(&mut seg);
        }
        crate::disk::frame::pad(&mut seg);
        assert_eq!(super::replay_checked(&seg, 10), (3, 0));
    }

    #[test]
    fn the_fuzz_seed_of_every_kind_replays_whole() {
        let seed = include_bytes!("../../fuzz/corpus/disk_scan/every_kind");
        // Message, Head, Push, Ack, Mark, Seen and Floor; the markers are not handed on.
        assert_eq!(super::replay_checked(seed, 1_796_000_010), (7, 0));
    }
}
