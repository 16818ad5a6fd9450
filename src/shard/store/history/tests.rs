use super::*;
use crate::proto::v2::{Resume, Unrecovered};

const P: Policy = Policy {
    messages: 3,
    max_age: 100,
    bytes: 1 << 20,
};

fn frame(offset: u64, _epoch: u64) -> Wire {
    Wire::encode(2, 44, 0, &offset.to_be_bytes())
}

fn offsets(w: &[Wire]) -> Vec<u64> {
    w.iter()
        .map(|w| u64::from_be_bytes(w.tcp[16..24].try_into().unwrap()))
        .collect()
}

fn resume(logs: &mut Logs, room: &Arc<str>, offset: u64, epoch: u64, now: u32) -> Result<Vec<u64>, Unrecovered> {
    logs.resume(room, P, now, Some(Resume { offset, epoch }), 0)
        .replay
        .map(|w| offsets(&w))
}

#[test]
fn offsets_count_up_and_a_resume_replays_exactly_what_was_missed() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "live://1".into();
    let first = logs.resume(&room, P, 0, None, 0);
    assert_eq!((first.last, first.replay.unwrap().len()), (0, 0));
    let epoch = first.epoch;
    assert_ne!(epoch, 0);
    for i in 1..=3u64 {
        assert_eq!(logs.publish(&room, P, 1, None, frame).0, i);
    }
    assert_eq!(resume(&mut logs, &room, 1, epoch, 2), Ok(vec![2, 3]));
    assert_eq!(resume(&mut logs, &room, 3, epoch, 2), Ok(vec![]));
    assert_eq!(resume(&mut logs, &room, 0, epoch, 2), Ok(vec![1, 2, 3]));
    assert_eq!(resume(&mut logs, &room, 4, epoch, 2), Err(Unrecovered::OffsetAhead));
    assert_eq!(
        resume(&mut logs, &room, 1, epoch ^ 1, 2),
        Err(Unrecovered::EpochChanged)
    );
    // A fourth message pushes the first out: offset 0 can no longer be
    // served, offset 1 still can.
    logs.publish(&room, P, 2, None, frame);
    assert_eq!(resume(&mut logs, &room, 0, epoch, 2), Err(Unrecovered::HistoryGone));
    assert_eq!(resume(&mut logs, &room, 1, epoch, 2), Ok(vec![2, 3, 4]));
    assert_eq!(logs.take_evicted().limit, 1);
}

#[test]
fn age_and_ttl_expire_but_only_age_is_a_gap() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "r".into();
    let epoch = logs.resume(&room, P, 0, None, 0).epoch;
    // 1: stored during tick 10 with a TTL of 5 s; tick 15 may begin less
    // than 5 s after it came, so it stays through tick 15.
    logs.publish(&room, P, 10, Some(5), frame);
    logs.publish(&room, P, 10, None, frame); // 2
    logs.expire(15);
    assert_eq!(resume(&mut logs, &room, 0, epoch, 15), Ok(vec![1, 2]));
    assert_eq!(logs.page("r", 0, 10, 15).unwrap().2.len(), 2);
    logs.expire(16);
    assert_eq!(
        logs.take_evicted(),
        Evicted {
            ttl: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        resume(&mut logs, &room, 0, epoch, 16),
        Ok(vec![2]),
        "an expired message is skipped, not lost"
    );
    // Age limit 100: at tick 110 message 2 is gone, and that is a gap.
    assert_eq!(
        resume(&mut logs, &room, 1, epoch, 110),
        Err(Unrecovered::HistoryGone),
        "aged, not yet swept"
    );
    logs.expire(110);
    assert_eq!(logs.take_evicted().limit, 1);
    assert_eq!(resume(&mut logs, &room, 1, epoch, 110), Err(Unrecovered::HistoryGone));
    assert_eq!(resume(&mut logs, &room, 2, epoch, 110), Ok(vec![]));
    assert_eq!((logs.bytes(), logs.messages()), (0, 0));
}

#[test]
fn the_memory_cap_evicts_the_oldest_message_of_any_room() {
    // What three messages in two rooms cost, logs included.
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let mut probe = Logs::new(usize::MAX);
    for r in [&a, &b, &a] {
        probe.publish(r, P, 0, None, frame);
    }
    // And b's deque growing from one slot to four, as a's did (a slot
    // holds an entry and its place in the store's order).
    let cap = probe.charged() + 3 * std::mem::size_of::<(u64, Entry)>();
    let mut logs = Logs::new(cap);
    let ea = logs.resume(&a, P, 0, None, 0).epoch;
    logs.publish(&a, P, 0, None, frame);
    logs.publish(&b, P, 0, None, frame);
    logs.publish(&a, P, 0, None, frame);
    assert_eq!((logs.charged(), logs.take_evicted().memory), (probe.charged(), 0));
    logs.publish(&b, P, 0, None, frame);
    assert_eq!(logs.take_evicted().memory, 1);
    assert!(logs.charged() <= cap);
    assert_eq!(logs.messages(), 3);
    assert_eq!(
        resume(&mut logs, &a, 0, ea, 0),
        Err(Unrecovered::HistoryGone),
        "a's first went"
    );
    assert_eq!(resume(&mut logs, &a, 1, ea, 0), Ok(vec![2]));
    assert_eq!(logs.get("b").unwrap().len(), 2);
}

#[test]
fn history_off_still_counts_offsets_and_never_recovers_a_gap() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "tmp://x".into();
    let epoch = logs.resume(&room, Policy::OFF, 0, None, 0).epoch;
    logs.publish(&room, Policy::OFF, 0, None, frame);
    logs.publish(&room, Policy::OFF, 0, None, frame);
    assert_eq!((logs.get("tmp://x").unwrap().last, logs.bytes()), (2, 0));
    let r = logs.resume(&room, Policy::OFF, 0, Some(Resume { offset: 1, epoch }), 0);
    assert_eq!(r.replay.unwrap_err(), Unrecovered::HistoryGone);
    let r = logs.resume(&room, Policy::OFF, 0, Some(Resume { offset: 2, epoch }), 0);
    assert!(r.replay.unwrap().is_empty(), "nothing missed, nothing to replay");
}

#[test]
fn pages_and_idle_logs() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "r".into();
    for _ in 0..3 {
        logs.publish(&room, P, 0, None, frame);
    }
    let (_, last, page) = logs.page("r", 1, 1, 0).unwrap();
    assert_eq!((last, page.len(), page[0].offset), (3, 1, 2));
    assert!(logs.page("nope", 0, 10, 0).is_none());
    let idle: Arc<str> = "idle".into();
    logs.resume(&idle, P, 0, None, 0);
    logs.gc(IDLE_TICKS - 1);
    assert!(logs.get("idle").is_some());
    let members = std::rc::Rc::new(std::cell::Cell::new(true));
    let m = members.clone();
    logs.set_in_use(move |r| r == "idle" && m.get());
    logs.gc(IDLE_TICKS);
    assert!(logs.get("idle").is_some(), "somebody is in it");
    members.set(false);
    let before = logs.charged();
    logs.gc(IDLE_TICKS);
    assert!(logs.get("idle").is_none());
    assert!(logs.charged() < before, "its cost went with it");
    assert!(logs.get("r").is_some(), "it has history");
}

#[test]
fn read_marks_only_move_forward_and_are_bounded() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "r".into();
    for _ in 0..5 {
        logs.publish(&room, P, 0, None, frame);
    }
    assert_eq!(logs.unread("r", 7), Some((0, 5)));
    assert_eq!(logs.mark(&room, 0, 7, 3, 2), Some((3, 5)));
    assert_eq!(logs.mark(&room, 0, 7, 1, 2), Some((3, 5)), "never back");
    assert_eq!(logs.mark(&room, 0, 7, 99, 2), Some((5, 5)), "clamped to the newest");
    assert_eq!(logs.mark(&room, 0, 8, 1, 2), Some((1, 5)));
    assert_eq!(logs.mark(&room, 0, 9, 1, 2), None, "a third user passes max_marks");
    assert_eq!(logs.resume(&room, P, 0, None, 8).mark, Some(1));
    assert_eq!(logs.resume(&room, P, 0, None, 0).mark, None);
    assert_eq!(logs.unread("nope", 7), None);
}

#[test]
fn a_cluster_cache_takes_redis_offsets_and_knows_where_it_starts() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "live://c".into();
    // Synced at offset 10 of epoch 7: nothing before it here.
    logs.sync(&room, P, 0, 7, 10);
    let log = logs.get(&room).unwrap();
    assert_eq!((log.epoch, log.last, log.lost_through), (7, 10, 10));
    assert_eq!(resume(&mut logs, &room, 10, 7, 0), Ok(vec![]));
    assert_eq!(resume(&mut logs, &room, 9, 7, 0), Err(Unrecovered::HistoryGone));
    // Messages in order are stored; one the cache has passed is not.
    assert!(logs.store(&room, P, 0, (11, 7), None, frame(11, 7)));
    assert!(logs.store(&room, P, 0, (12, 7), None, frame(12, 7)));
    assert!(!logs.store(&room, P, 0, (12, 7), None, frame(12, 7)));
    assert!(!logs.store(&room, P, 0, (3, 7), None, frame(3, 7)));
    assert_eq!(resume(&mut logs, &room, 10, 7, 0), Ok(vec![11, 12]));
    // A gap: resumes from before it are refused, never gapped.
    assert!(logs.store(&room, P, 0, (15, 7), None, frame(15, 7)));
    assert_eq!(resume(&mut logs, &room, 12, 7, 0), Err(Unrecovered::HistoryGone));
    assert_eq!(resume(&mut logs, &room, 14, 7, 0), Ok(vec![15]));
    // Synced again at the same place: the cache stays.
    logs.sync(&room, P, 0, 7, 15);
    assert_eq!(resume(&mut logs, &room, 14, 7, 0), Ok(vec![15]));
    // Synced further on (messages missed while unsubscribed): it starts over.
    logs.sync(&room, P, 0, 7, 20);
    assert_eq!(resume(&mut logs, &room, 15, 7, 0), Err(Unrecovered::HistoryGone));
    assert_eq!((logs.messages(), logs.get(&room).unwrap().last), (0, 20));
    // Another epoch (Redis lost the room): over again, marks gone too.
    logs.mark(&room, 0, 1, 20, 10);
    assert!(logs.store(&room, P, 0, (1, 8), None, frame(1, 8)));
    let log = logs.get(&room).unwrap();
    assert_eq!((log.epoch, log.last, log.lost_through), (8, 1, 0));
    assert_eq!(logs.unread(&room, 1), Some((0, 1)));
    assert_eq!(resume(&mut logs, &room, 0, 8, 0), Ok(vec![1]));
    assert_eq!(resume(&mut logs, &room, 0, 7, 0), Err(Unrecovered::EpochChanged));
}

#[test]
fn a_mark_creates_nothing_and_costs_are_counted() {
    let mut logs = Logs::new(1 << 20);
    let room: Arc<str> = "r".into();
    assert_eq!(logs.mark(&room, 0, 7, 5, 10), Some((0, 0)), "nothing to read up to");
    assert_eq!((logs.rooms(), logs.charged()), (0, 0), "no log, nothing counted");
    logs.publish(&room, P, 0, None, frame);
    let one = logs.charged();
    assert!(one > logs.bytes(), "the log itself costs");
    for mid in 1..100 {
        logs.mark(&room, 0, mid, 1, 1000);
    }
    assert!(
        logs.charged() > one + 99 * 16,
        "marks cost: {} then {}",
        one,
        logs.charged()
    );
    assert_eq!(logs.charged(), logs.recount(), "the running count is the sum");
}

#[test]
fn past_the_cap_idle_logs_go_first_least_recently_used_and_rooms_in_use_stay() {
    let busy: Arc<str> = "busy".into();
    // Room for the busy room's messages and a few logs.
    let mut probe = Logs::new(usize::MAX);
    for _ in 0..3 {
        probe.publish(&busy, P, 0, None, frame);
    }
    let idle_cost = {
        let mut one = Logs::new(usize::MAX);
        one.resume(&"x0".into(), P, 0, None, 0);
        one.charged()
    };
    let mut logs = Logs::new(probe.charged() + 10 * idle_cost);
    logs.set_in_use(|r| r == "member");
    let member: Arc<str> = "member".into();
    logs.resume(&member, P, 0, None, 0);
    for _ in 0..3 {
        logs.publish(&busy, P, 1, None, frame);
    }
    // A thousand joins of ever-new rooms.
    for i in 0..1000 {
        let r: Arc<str> = format!("x{i}").into();
        logs.resume(&r, P, 2 + i / 100, None, 0);
    }
    let e = logs.take_evicted();
    assert!(e.rooms >= 990, "{e:?}");
    assert_eq!(e.memory, 0, "no message went for empty logs");
    assert_eq!(logs.get("busy").unwrap().len(), 3);
    assert!(logs.get("member").is_some(), "a room with members keeps its log");
    assert!(logs.get("x999").is_some() && logs.get("x0").is_none(), "oldest first");
    assert!(logs.charged() <= probe.charged() + 10 * idle_cost);
    assert_eq!(logs.charged(), logs.recount());
}
