//! The driver of a shard's journal (`disk::journal`): one task per shard
//! takes the operations the journal emits and runs them on glommio's DMA
//! files (O_DIRECT, on the shard's own ring: writes, fdatasync, fallocate
//! and unlink are ring operations, so the shard never blocks on the disk),
//! then hands back how each went; at start it reads segments back for
//! recovery.
//!
//! Runs on every shard of a node with `[storage] mode = "disk"`, in the
//! shard's control queue. Owns the open files of the log's segment written
//! now and of a checkpoint's, and asks the shard for a checkpoint's next
//! records when the journal wants them (`Owner::checkpoint_more`).
//!
//! Invariants: one write or sync at a time, in the order taken, and beside
//! it at most one removal (a task of its own); a segment is
//! created, preallocated and its directory synced before its first write
//! counts; the log's segment left behind is synced before the next is
//! written, so a sync of the newest covers every older one; a checkpoint's
//! segment is synced by its last piece; an operation's error is
//! handed back with the operation (the journal retries it), never dropped;
//! what a segment file holds past its last record is zeros (written ahead
//! with a record, `ZERO_AHEAD`), which read as its end.

use crate::disk::journal::{DiskOp, Journal, Sync};
use glommio::io::{DmaFile, OpenOptions};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Weak;
use std::task::{Context, Poll};
use std::time::Duration;

/// Bytes read from a segment per DMA read at recovery.
const READ_PIECE: usize = 8 << 20;

/// How long a failed operation waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// A write that reaches past what the segment file holds (its size) also
/// writes zeros up to the next multiple of this, so that the writes after
/// it, up to there, overwrite blocks the file already has. ext4 runs a
/// write that grows a file on an io_uring worker thread, and its fdatasync
/// must commit the new size; an overwrite is issued on the ring at once and
/// its fdatasync is a cache flush. One write per MiB of journal carries the
/// zeros; acknowledged publishes from one pipelined TCP publisher with
/// `batch` rose from 66,900 to 80,600 a second on one shard, p50 905 to
/// 708 µs (BENCHMARKS.md).
const ZERO_AHEAD: u64 = 1 << 20;

/// Options for every journal file: its I/O stays on the ring the reactor
/// can sleep on. (On a device with polled queues glommio would put DMA I/O
/// on its IOPOLL ring, and a reactor with polled I/O in flight spins until
/// it completes: with a write or an fdatasync out most of the time, one
/// shard's core went to spinning — 4,114 group commits' worth of publishes
/// a second on one shard where 16,789 fit, BENCHMARKS.md.)
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.polled(false);
    o
}

/// The file name of segment `n` in a shard's folder.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.seg"))
}

/// The segment numbers in a shard's folder, oldest first (other files are
/// left alone). Read with the standard library: called once at start,
/// before the shard serves.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads segment `n` of `dir` whole.
pub async fn read_segment(dir: &Path, n: u64) -> std::io::Result<Vec<u8>> {
    let f = options().read(true).dma_open(segment_path(dir, n)).await?;
    let size = f.file_size().await? as usize;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let want = READ_PIECE.min(size - out.len());
        let got = f.read_at(out.len() as u64, want).await?;
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    f.close().await?;
    Ok(out)
}

/// Removes segments `segments` of `dir` (one already gone counts as removed).
async fn remove(dir: &Path, segments: &[u64]) -> std::io::Result<()> {
    for &n in segments {
        if let Err(e) = glommio::io::remove(segment_path(dir, n)).await {
            let e = std::io::Error::from(e);
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// What the driver works for: the shard that owns a journal.
pub trait Owner {
    /// Its journal.
    fn journal(&mut self) -> &mut Journal;
    /// Registers the driver's waker, woken when the journal has work.
    fn park(&mut self, cx: &mut Context<'_>);
    /// An operation ended (the journal is told first); what waited for it
    /// may go on.
    fn done(&mut self, result: Result<(), (DiskOp, String)>);
    /// A removal ended (`Journal::removed`).
    fn removed(&mut self, result: Result<(), String>);
    /// The journal wants the next records of the checkpoint under way
    /// (`Journal::wants_pieces`): add some, or end it.
    fn checkpoint_more(&mut self);
}

/// A segment's open file and how many bytes it holds.
type Open = Option<(u64, DmaFile, u64)>;

/// A shard's open segments.
struct Files {
    dir: PathBuf,
    segment_bytes: u64,
    /// The log's segments are opened O_DSYNC (`batch`): a write returns
    /// once it is on disk, so a write that must be synced needs no
    /// fdatasync after it — one ring operation and one wake-up per group
    /// commit instead of two. A checkpoint's are not: its pieces need no
    /// sync but the last one's.
    dsync: bool,
    /// The log's segment written now.
    log: Open,
    /// The segment of the checkpoint under way.
    checkpoint: Open,
}

impl Files {
    async fn run(&mut self, op: &DiskOp) -> std::io::Result<()> {
        match op {
            DiskOp::Write {
                segment,
                checkpoint,
                create,
                at,
                bytes,
                sync,
            } => {
                let segment_bytes = self.segment_bytes;
                let dsync = self.dsync && !checkpoint;
                let (f, size) = self.file(*segment, *create, *checkpoint).await?;
                let end = at + bytes.len() as u64;
                // Zeros after the records read as the end of the segment
                // (`disk::frame`), so they may go out with them. (Not with
                // a checkpoint's pieces: they are not synced one by one.)
                let len = if end > *size && !checkpoint {
                    end.next_multiple_of(ZERO_AHEAD).min(segment_bytes.max(end)) - at
                } else {
                    bytes.len() as u64
                } as usize;
                let mut buf = f.alloc_dma_buffer(len);
                let b = buf.as_bytes_mut();
                b[..bytes.len()].copy_from_slice(bytes);
                b[bytes.len()..].fill(0);
                let n = f.write_at(buf, *at).await?;
                if n != len {
                    return Err(std::io::Error::other(format!("short write: {n} of {len} bytes")));
                }
                *size = (*size).max(at + len as u64);
                if *sync && !dsync {
                    f.fdatasync().await?;
                }
                if *checkpoint && *sync {
                    // Its last piece: the file is done with.
                    if let Some((_, f, _)) = self.checkpoint.take() {
                        f.close().await?;
                    }
                }
                Ok(())
            }
            DiskOp::Sync { segment } => match self.file(*segment, false, false).await {
                Ok((f, _)) => Ok(f.fdatasync().await?),
                // Removed: a whole checkpoint holds what it held.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            // `drive` runs removals beside the other operations.
            DiskOp::Remove { .. } => unreachable!("a removal runs in a task of its own"),
        }
    }

    /// The file of `segment` (the log's, or a checkpoint's) and how many
    /// bytes it holds: the open one, the last one of a recovered store
    /// (opened to append), or a new one.
    async fn file(&mut self, segment: u64, create: bool, checkpoint: bool) -> std::io::Result<(&DmaFile, &mut u64)> {
        let dsync = self.dsync && !checkpoint;
        let slot = if checkpoint {
            &mut self.checkpoint
        } else {
            &mut self.log
        };
        if slot.as_ref().is_none_or(|(n, ..)| *n != segment) {
            if let Some((_, old, _)) = slot.take() {
                old.fdatasync().await?;
                old.close().await?;
            }
            let path = segment_path(&self.dir, segment);
            let mut o = options();
            if dsync {
                o.custom_flags(libc::O_DSYNC);
            }
            let (f, size) = if create {
                let f = o
                    .write(true)
                    .read(true)
                    .create(true)
                    .truncate(true)
                    .dma_open(&path)
                    .await?;
                // The space is the segment's from the start (a full disk
                // shows here, not halfway through it); the file's size
                // grows as it is written.
                f.pre_allocate(self.segment_bytes, true).await?;
                glommio::io::Directory::open(&self.dir).await?.sync().await?;
                (f, 0)
            } else {
                let f = o.write(true).read(true).dma_open(&path).await?;
                let size = f.file_size().await?;
                (f, size)
            };
            *slot = Some((segment, f, size));
        }
        let (_, f, size) = slot.as_mut().expect("opened just above");
        Ok((f, size))
    }
}

/// Runs the journal of the shard behind `me`, whose segments live in
/// `dir`, until the shard is gone.
pub async fn drive<S: Owner + 'static>(me: Weak<RefCell<S>>, dir: PathBuf, segment_bytes: u64) {
    let dsync = me
        .upgrade()
        .is_some_and(|s| matches!(s.borrow_mut().journal().sync(), Sync::Batch { .. }));
    let mut files = Files {
        dir,
        segment_bytes,
        dsync,
        log: None,
        checkpoint: None,
    };
    let mut next_sync = std::time::Instant::now();
    loop {
        let Some(sync) = me.upgrade().map(|s| s.borrow_mut().journal().sync()) else {
            return;
        };
        let work = std::future::poll_fn(|cx| match me.upgrade() {
            Some(s) => {
                let mut s = s.borrow_mut();
                if s.journal().has_work() {
                    return Poll::Ready(true);
                }
                s.park(cx);
                Poll::Pending
            }
            None => Poll::Ready(false),
        });
        let op = match sync {
            Sync::Interval { every_ms } => {
                let left = next_sync.saturating_duration_since(std::time::Instant::now());
                let wait = async {
                    glommio::timer::sleep(left).await;
                    true
                };
                futures_lite::future::or(work, wait).await;
                let Some(s) = me.upgrade() else { return };
                let mut s = s.borrow_mut();
                let now = std::time::Instant::now();
                let synced = if now >= next_sync {
                    next_sync = now + Duration::from_millis(every_ms.into());
                    s.journal().take_sync()
                } else {
                    None
                };
                synced.or_else(|| next(&mut *s))
            }
            Sync::Batch { window_us } => {
                if !work.await {
                    return;
                }
                if window_us > 0 {
                    glommio::timer::sleep(Duration::from_micros(window_us.into())).await;
                }
                let Some(s) = me.upgrade() else { return };
                let op = next(&mut *s.borrow_mut());
                op
            }
            Sync::None => {
                if !work.await {
                    return;
                }
                let Some(s) = me.upgrade() else { return };
                let op = next(&mut *s.borrow_mut());
                op
            }
        };
        let Some(op) = op else { continue };
        if let DiskOp::Remove { segments } = op {
            // Beside the log's writes, in a task of its own.
            let (me, dir) = (me.clone(), files.dir.clone());
            let removing = async move {
                let result = remove(&dir, &segments).await.map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(error = %e, "storage: removing an old segment failed; retrying");
                    // Still out meanwhile, so it is not asked again at once.
                    glommio::timer::sleep(RETRY_AFTER).await;
                }
                if let Some(s) = me.upgrade() {
                    s.borrow_mut().removed(result);
                }
            };
            glommio::spawn_local(removing).detach();
            continue;
        }
        let result = files.run(&op).await;
        let failed = result.is_err();
        if let Err(e) = &result {
            // A segment's handle may be what failed; open them again.
            (files.log, files.checkpoint) = (None, None);
            tracing::error!(error = %e, "storage: a journal write failed; retrying");
        }
        let Some(s) = me.upgrade() else { return };
        s.borrow_mut().done(result.map_err(|e| (op, e.to_string())));
        if failed {
            glommio::timer::sleep(RETRY_AFTER).await;
        }
    }
}

/// The journal's next operation, with the checkpoint under way given its
/// next records first if it wants them.
fn next<S: Owner>(s: &mut S) -> Option<DiskOp> {
    if s.journal().wants_pieces() {
        s.checkpoint_more();
    }
    s.journal().take()
}
