//! The `Shard` side of the durable store: appending a record for each
//! change the shard makes to what it keeps, holding what must wait for it,
//! letting that go once the journal says it is kept, refusing when the
//! journal cannot keep more, checkpoints, and the hooks of the journal's
//! driver (`disk::driver::Owner`).
//!
//! Runs on the shard that owns the rooms and users, inside its handlers
//! (never awaits).

use super::{Held, Now, CHECKPOINT_SEGMENTS};
use crate::disk::journal::{DiskOp, Journal};
use crate::disk::record::Record;
use crate::metrics::ShardStats;
use crate::shard::mesh::Reach;
use crate::shard::state::Shard;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Context;

impl Shard {
    /// The clocks records are written and read with.
    pub(in crate::shard) fn disk_now(&self) -> Now {
        Now {
            tick: self.conns.wheel.now(),
            unix: self.clock.unix,
        }
    }

    /// Whether records were appended that are not yet kept.
    pub fn unkept(&self) -> bool {
        self.store
            .disk
            .as_ref()
            .is_some_and(|d| d.journal.durable() < d.journal.appended() || d.held() > 0)
    }

    /// Whether changes are written to a journal.
    pub fn durable(&self) -> bool {
        self.store.disk.is_some()
    }

    /// Appends `rec` to the journal, if there is one.
    pub(in crate::shard) fn log(&mut self, rec: &Record<'_>) {
        if let Some(d) = &mut self.store.disk {
            d.journal.append(rec);
            d.wake();
            ShardStats::add(&self.shared.stats[self.id].storage_records, 1);
        }
    }

    /// Why what needs the journal cannot be taken now (counted), if so.
    pub(in crate::shard) fn storage_refusal(&self) -> Option<String> {
        let why = self.store.disk.as_ref()?.journal.refusal()?;
        ShardStats::add(&self.stats().storage_refused, 1);
        Some(why.to_string())
    }

    /// Does `h` once what was appended so far is kept (at once without a
    /// journal, or when it is already).
    pub(in crate::shard) fn after_kept(&mut self, h: Held) {
        let ready = match &mut self.store.disk {
            Some(d) => d.hold(h),
            None => Some(h),
        };
        if let Some(h) = ready {
            self.let_go(h);
        }
        self.count_held();
    }

    fn let_go(&mut self, h: Held) {
        match h {
            Held::Published {
                reply,
                room,
                published,
                frames,
            } => {
                if frames.is_some() {
                    self.store.logs.tell(&room, published.offset);
                }
                self.answer(reply, &room, published);
                if let Some(f) = frames {
                    self.fan_out_room(&room, &f, Reach::All);
                }
            }
            Held::Route(to, m) => self.route(to, m),
            Held::Kept(r) => r.send(Ok(())),
        }
    }

    fn count_held(&self) {
        if let Some(d) = &self.store.disk {
            self.stats().storage_held.store(d.held() as u64, Relaxed);
        }
    }

    /// The journal's driver finished an operation: what waited for it
    /// goes, in order.
    pub fn disk_done(&mut self, result: Result<(), (DiskOp, String)>) {
        let Some(d) = &mut self.store.disk else { return };
        d.journal.done(result);
        self.storage_counts();
        while let Some(h) = self.store.disk.as_mut().and_then(|d| d.next_ready()) {
            self.let_go(h);
        }
        self.count_held();
        // A journal that grows fast reaches its bound between sweeps.
        self.maybe_checkpoint();
    }

    /// The journal's counts since last asked, into the shard's stats.
    fn storage_counts(&mut self) {
        let Some(d) = &mut self.store.disk else { return };
        let c = d.journal.take_counts();
        let bytes = d.journal.disk_bytes();
        let st = &self.shared.stats[self.id];
        ShardStats::add(&st.storage_writes, c.writes);
        ShardStats::add(&st.storage_syncs, c.syncs);
        ShardStats::add(&st.storage_written_bytes, c.bytes);
        ShardStats::add(&st.storage_failures, c.failures);
        st.storage_bytes.store(bytes, Relaxed);
    }

    /// Once a tick and after each write: a checkpoint when the journal has
    /// grown enough past the last one.
    pub(in crate::shard) fn maybe_checkpoint(&mut self) {
        // Early enough that `[storage] max_bytes` is not reached first.
        let st = &self.cfg().storage;
        let share = st.max_bytes / self.nr() as u64;
        let mut growth = CHECKPOINT_SEGMENTS * st.segment_bytes;
        if share > 0 {
            growth = growth.min(share / 4);
        }
        if !self
            .store
            .disk
            .as_ref()
            .is_some_and(|d| d.journal.wants_checkpoint(growth))
        {
            return;
        }
        self.checkpoint_now();
    }

    /// Starts a checkpoint of what the shard keeps now (unless one is
    /// under way); the journal's driver has it written in pieces
    /// (`checkpoint_more`), and `Journal::checkpointing` says when it is
    /// whole and older segments are gone.
    pub(in crate::shard) fn checkpoint_now(&mut self) {
        if self.store.disk.as_ref().is_none_or(|d| d.journal.checkpointing()) {
            return;
        }
        let floor = self.shared.push_floor.load(std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        let snapshot = self.store.snapshot(floor);
        let Some(d) = &mut self.store.disk else { return };
        d.journal.begin_checkpoint();
        tracing::debug!(
            shard = self.id,
            items = snapshot.items(),
            us = started.elapsed().as_micros() as u64,
            "storage: checkpoint begun"
        );
        d.snapshot = Some(snapshot);
        d.wake();
        ShardStats::add(&self.shared.stats[self.id].storage_checkpoints, 1);
    }

    /// Adds the next records of the checkpoint under way, or ends it.
    fn checkpoint_more(&mut self) {
        let now = self.disk_now();
        // Out of the store while the store is read into it.
        let Some(mut d) = self.store.disk.take() else { return };
        // (Without a snapshot there is nothing more to give: end it rather
        // than leave the journal wanting.)
        if d.snapshot
            .as_mut()
            .is_none_or(|s| s.fill(&self.store, &mut d.journal, now))
        {
            d.journal.end_checkpoint();
            d.snapshot = None;
            tracing::debug!(shard = self.id, "storage: checkpoint's last records given");
        }
        self.store.disk = Some(d);
    }
}

impl crate::disk::driver::Owner for Shard {
    fn journal(&mut self) -> &mut Journal {
        &mut self
            .store
            .disk
            .as_mut()
            .expect("the driver runs only with a journal")
            .journal
    }

    fn park(&mut self, cx: &mut Context<'_>) {
        if let Some(d) = &mut self.store.disk {
            d.park(cx.waker());
        }
    }

    fn done(&mut self, result: Result<(), (DiskOp, String)>) {
        self.disk_done(result);
    }

    fn removed(&mut self, result: Result<(), String>) {
        let Some(d) = &mut self.store.disk else { return };
        d.journal.removed(result);
        // The driver may be waiting for it (the next removal, or the end
        // of the checkpoint).
        d.wake();
        self.storage_counts();
    }

    fn checkpoint_more(&mut self) {
        Shard::checkpoint_more(self);
    }
}
