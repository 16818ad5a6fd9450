//! The journal's state machine, driven by hand: what it asks the driver to
//! do after each append and each answer.

use super::*;

fn mark(offset: u64) -> Record<'static> {
    Record::Mark {
        room: "room",
        mid: 7,
        offset,
    }
}

fn batch() -> Journal {
    Journal::new(Sync::Batch { window_us: 0 }, 64 << 10, 0, Vec::new())
}

fn message(payload: &[u8]) -> Record<'_> {
    Record::Message {
        room: "r",
        epoch: 1,
        offset: 1,
        at: 0,
        ttl_end: 0,
        op: 1,
        id: "",
        payload,
    }
}

/// A write's (segment, create, at, bytes, sync), and whether it is a
/// checkpoint's piece.
fn write_or_piece(op: &DiskOp) -> (bool, (u64, bool, u64, usize, bool)) {
    match op {
        DiskOp::Write {
            segment,
            checkpoint,
            create,
            at,
            bytes,
            sync,
        } => (*checkpoint, (*segment, *create, *at, bytes.len(), *sync)),
        o => panic!("{o:?}"),
    }
}

fn write_of(op: &DiskOp) -> (u64, bool, u64, usize, bool) {
    let (piece, w) = write_or_piece(op);
    assert!(!piece, "a write of the log");
    w
}

fn piece_of(op: &DiskOp) -> (u64, bool, u64, usize, bool) {
    let (piece, w) = write_or_piece(op);
    assert!(piece, "a checkpoint's piece");
    w
}

#[test]
fn one_write_and_sync_carries_everything_appended_meanwhile() {
    let mut j = batch();
    assert!(!j.has_work() && j.take().is_none());
    assert_eq!((j.append(&mark(1)), j.append(&mark(2))), (1, 2));
    let op = j.take().expect("a write");
    assert_eq!(write_of(&op), (1, true, 0, frame::BLOCK, true));
    // While it is out, more arrives and waits; nothing else is taken.
    j.append(&mark(3));
    j.append(&mark(4));
    assert!(j.take().is_none() && !j.has_work());
    assert_eq!(j.durable(), 0);
    j.done(Ok(()));
    assert_eq!(j.durable(), 2);
    let op = j.take().expect("the next write");
    assert_eq!(write_of(&op), (1, false, frame::BLOCK as u64, frame::BLOCK, true));
    j.done(Ok(()));
    assert_eq!(
        (j.durable(), j.synced(), j.disk_bytes()),
        (4, 4, 2 * frame::BLOCK as u64)
    );
}

#[test]
fn interval_and_none_count_a_record_once_written_and_interval_syncs_apart() {
    for sync in [Sync::Interval { every_ms: 10 }, Sync::None] {
        let mut j = Journal::new(sync, 64 << 10, 0, Vec::new());
        j.append(&mark(1));
        let op = j.take().expect("a write");
        assert!(!write_of(&op).4, "no sync with the write");
        j.done(Ok(()));
        assert_eq!((j.durable(), j.synced()), (1, 0));
        assert!(j.unsynced());
        assert_eq!(j.take_sync(), Some(DiskOp::Sync { segment: 1 }));
        j.done(Ok(()));
        assert_eq!(j.synced(), 1);
        assert!(j.take_sync().is_none());
    }
}

#[test]
fn a_write_past_the_segment_size_starts_the_next_segment() {
    let mut j = Journal::new(Sync::None, 2 * frame::BLOCK as u64, 0, vec![(4, frame::BLOCK as u64)]);
    let payload = vec![7u8; 5000];
    let big = message(&payload);
    j.append(&big);
    let op = j.take().expect("a write");
    assert_eq!(write_of(&op), (5, true, 0, 2 * frame::BLOCK, false));
    j.done(Ok(()));
    j.append(&mark(1));
    let op = j.take().expect("a write");
    assert_eq!(write_of(&op), (6, true, 0, frame::BLOCK, false));
    j.done(Ok(()));
    assert_eq!(j.segments(), 3);
}

#[test]
fn a_checkpoint_has_a_segment_of_its_own_is_synced_in_any_mode_and_then_older_segments_go() {
    let mut j = Journal::new(Sync::None, 64 << 10, 0, vec![(1, 8192), (2, 4096)]);
    j.append(&mark(1));
    j.begin_checkpoint();
    assert!(j.wants_pieces());
    j.checkpoint_record(&mark(1));
    j.end_checkpoint();
    assert!(!j.wants_pieces());
    j.append(&mark(2));
    let op = j.take().expect("the write from before the checkpoint");
    assert_eq!(
        write_of(&op),
        (3, true, 0, frame::BLOCK, false),
        "never after what was read back"
    );
    j.done(Ok(()));
    let op = j.take().expect("the checkpoint");
    assert_eq!(piece_of(&op), (4, true, 0, frame::BLOCK, true));
    assert!(j.checkpointing());
    j.done(Ok(()));
    assert_eq!(j.durable(), 1, "a piece is no record of the log");
    // Removing what it made old starts at once, beside the log's writes.
    assert_eq!(j.take(), Some(DiskOp::Remove { segments: vec![1] }));
    let op = j.take().expect("the write from after it, with the removal out");
    assert_eq!(
        write_of(&op),
        (5, true, 0, frame::BLOCK, false),
        "after the checkpoint's"
    );
    j.done(Ok(()));
    assert!(j.take().is_none() && !j.has_work(), "one removal at a time");
    j.removed(Ok(()));
    for old in 2..=3 {
        assert_eq!(j.take(), Some(DiskOp::Remove { segments: vec![old] }));
        j.removed(Ok(()));
    }
    assert!(j.take().is_none() && !j.checkpointing());
    assert_eq!((j.durable(), j.segments()), (2, 2));
    assert!(!j.wants_checkpoint(0), "just checkpointed");
    for i in 0..2 {
        j.append(&mark(i));
        j.take().expect("a write");
        j.done(Ok(()));
    }
    assert!(j.wants_checkpoint(0), "the log grew past twice the checkpoint");
}

#[test]
fn a_big_checkpoint_goes_in_pieces_between_writes_of_the_log() {
    let mut j = batch();
    j.append(&mark(0));
    j.take().expect("a write");
    j.done(Ok(()));
    j.append(&mark(1));
    j.begin_checkpoint();
    let payload = vec![3u8; 1000];
    let big = message(&payload);
    let mut pieces_made = 0;
    let mut records = 0;
    // The shard fills while the journal wants; the log goes on meanwhile.
    let mut ops = Vec::new();
    let mut lsn = 1;
    loop {
        while j.wants_pieces() && records < 1000 {
            j.checkpoint_record(&big);
            records += 1;
        }
        if records == 1000 && !j.checkpoint.as_ref().expect("under way").ended {
            j.end_checkpoint();
        }
        lsn = j.append(&mark(lsn + 1));
        let Some(op) = j.take() else { break };
        if let DiskOp::Write { checkpoint, .. } = op {
            pieces_made += usize::from(checkpoint);
            ops.push(write_or_piece(&op));
        }
        finish(&mut j, &op);
        if !j.checkpointing() {
            break;
        }
    }
    assert!(pieces_made >= 4, "{pieces_made} pieces");
    // The write from before the checkpoint first, to the log's segment.
    assert_eq!(ops[0], (false, (1, false, frame::BLOCK as u64, frame::BLOCK, true)));
    // Then turns: a piece, then the log (in the segment after the
    // checkpoint's), never two pieces while the log has records waiting.
    assert!(ops[1].0);
    let ckpt = ops[1].1 .0;
    assert_eq!(ckpt, 2);
    for w in ops[1..].windows(2) {
        assert!(!(w[0].0 && w[1].0), "two pieces in a row: {ops:?}");
    }
    for (piece, (seg, ..)) in &ops[1..] {
        assert_eq!(*seg, if *piece { ckpt } else { ckpt + 1 }, "{ops:?}");
    }
    let last = ops.iter().rev().find(|o| o.0).expect("pieces");
    assert!(last.1 .4, "the last piece is synced");
    while let Some(op) = j.take() {
        finish(&mut j, &op);
    }
    assert_eq!(j.durable(), j.appended());
    assert_eq!(j.segments(), 2, "the checkpoint's and the one after it");
}

#[test]
fn a_failed_write_is_retried_as_it_was_and_refuses_meanwhile() {
    let mut j = batch();
    j.append(&mark(1));
    let op = j.take().expect("a write");
    let again = op.clone();
    j.done(Err((op, "No space left on device".into())));
    assert_eq!(j.refusal(), Some(Refusal::Failing("No space left on device".into())));
    assert_eq!(j.durable(), 0);
    j.append(&mark(2));
    assert_eq!(j.take(), Some(again), "the same write first");
    j.done(Ok(()));
    assert_eq!((j.refusal(), j.durable()), (None, 1));
    j.take().expect("then the rest");
    j.done(Ok(()));
    assert_eq!(j.durable(), 2);
}

#[test]
fn max_bytes_refuses_until_space_is_freed() {
    let mut j = Journal::new(Sync::None, 64 << 10, 2 * frame::BLOCK as u64, Vec::new());
    for i in 0..2 {
        assert_eq!(j.refusal(), None);
        j.append(&mark(i));
        j.take().expect("a write");
        j.done(Ok(()));
    }
    assert_eq!(j.refusal(), Some(Refusal::Full));
}

/// Tells the journal `op` went well.
fn finish(j: &mut Journal, op: &DiskOp) {
    match op {
        DiskOp::Remove { .. } => j.removed(Ok(())),
        _ => j.done(Ok(())),
    }
}
