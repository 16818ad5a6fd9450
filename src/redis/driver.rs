//! The driver of a shard's Redis operations (`redis::ops`): one task per
//! shard takes what the shard emitted, runs each on its instance's link
//! (`Call` as Redis commands and scripts, `Call::Wait` as a timer) and
//! hands the answer back with the clock read when it came.
//!
//! Runs on every shard of a node with `[redis] urls`, in the shard's
//! control queue, one task per operation in flight.
//!
//! Invariants: every operation taken is answered exactly once while the
//! shard lives (an operation whose instance has no link answers
//! `RedisError::Down`); the shard never awaits, sleeps or reads a clock
//! for Redis: this file does.

use super::counts;
use super::link::{Link, RedisError};
use super::ops::{Call, Ops, Page, RedisAnswer};
use super::presence;
use super::registry;
use super::room;
use std::cell::RefCell;
use std::rc::Weak;
use std::task::Poll;

impl Call {
    /// Runs the call on `link`.
    pub async fn run(self, link: &Link) -> RedisAnswer {
        match self {
            Call::Mark {
                room,
                mid,
                offset,
                max_marks,
            } => RedisAnswer::Mark(room::mark(link, &room, mid, offset, max_marks).await),
            Call::Unread { rooms, mid } => RedisAnswer::Unread(room::unread(link, &rooms, mid).await),
            Call::Publish {
                room,
                msg,
                history,
                dedup,
            } => RedisAnswer::Publish(room::publish(link, &room, &msg, history, dedup.as_ref()).await),
            Call::ToNodes { body, nodes } => RedisAnswer::Sent(registry::to_nodes(link, &body, &nodes).await),
            Call::Route {
                target,
                head,
                payload,
                inbox,
            } => RedisAnswer::Sent(registry::route(link, &target, (&head, &payload), inbox).await),
            Call::History { room, since, count } => RedisAnswer::History(history_page(link, &room, since, count).await),
            Call::Claim { key, node } => RedisAnswer::Done(registry::claim(link, &key, &node).await.map(drop)),
            Call::Remove { entry, node } => RedisAnswer::Done(registry::remove(link, &entry, &node).await),
            Call::Add { entries, node, now } => RedisAnswer::Owed(registry::add(link, &entries, &node, now).await),
            Call::Leave {
                mid,
                node,
                owed,
                inbox,
                now,
            } => RedisAnswer::Done(registry::leave(link, mid, &node, &owed, inbox, now).await.map(drop)),
            Call::Alive { node, first } => RedisAnswer::Alive(registry::alive(link, &node, first).await),
            Call::TakeQueue { node } => RedisAnswer::Queue(registry::take_queue(link, &node).await),
            Call::Watch { key, channel, node } => RedisAnswer::Done(presence::watch(link, &key, &channel, &node).await),
            Call::Note { channel, note } => RedisAnswer::Sent(presence::publish(link, &channel, &note).await),
            Call::MarkOf { room, mid } => RedisAnswer::MarkOf(room::mark_of(link, &room, mid).await),
            Call::Range {
                room,
                epoch,
                from,
                through,
            } => RedisAnswer::Range(room::range(link, &room, epoch, from, through).await),
            Call::Sync { room } => RedisAnswer::Sync(room::sync(link, &room).await),
            Call::Counts { node, report } => RedisAnswer::Counts(counts::report(link, &node, &report).await),
            Call::Wait { ms } => wait(ms).await,
        }
    }
}

/// `Call::Wait`.
async fn wait(ms: u32) -> RedisAnswer {
    glommio::timer::sleep(std::time::Duration::from_millis(ms.into())).await;
    RedisAnswer::Waited
}

/// `Call::History`: the position, then what is stored past `since`.
async fn history_page(link: &Link, room: &str, since: u64, count: u64) -> Result<Page, RedisError> {
    let Some((last, epoch)) = room::position(link, room).await? else {
        return Ok(None);
    };
    let want = count.min(last.saturating_sub(since));
    let stored = if want > 0 {
        room::range_at_most(link, room, epoch, (since + 1, last), want).await?
    } else {
        Vec::new()
    };
    Ok(Some(((last, epoch), stored)))
}

/// Takes the operations of the shard behind `me` and runs each on its
/// instance's link, in `queue`, until the shard is gone.
pub async fn drive<S: Ops + 'static>(me: Weak<RefCell<S>>, links: Vec<Link>, queue: glommio::TaskQueueHandle) {
    loop {
        let next = std::future::poll_fn(|cx| match me.upgrade() {
            Some(s) => s.borrow_mut().poll_op(cx).map(Some),
            None => Poll::Ready(None),
        });
        let Some(op) = next.await else { return };
        let (me, link) = (me.clone(), links.get(op.instance).cloned());
        let run = async move {
            let answer = match (op.call, link) {
                (Call::Wait { ms }, _) => wait(ms).await,
                (call, Some(link)) => call.run(&link).await,
                (call, None) => call.failed(RedisError::Down(format!("instance {}", op.instance), "no link".into())),
            };
            if let Some(s) = me.upgrade() {
                s.borrow_mut().answered(op.then, answer, crate::metrics::clock_us());
            }
        };
        if let Ok(t) = glommio::spawn_local_into(run, queue) {
            t.detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::link::RedisError;
    use crate::redis::ops::{Call, OpQueue, Ops, RedisAnswer, RedisOp};
    use std::rc::Rc;
    use std::task::{Context, Poll};

    /// A shard's side reduced to its queue and what it was answered.
    #[derive(Default)]
    struct Fake {
        ops: OpQueue<u32>,
        got: Vec<(u32, RedisAnswer)>,
    }

    impl Fake {
        fn emit(&mut self, then: u32) {
            let call = Call::Mark {
                room: "r".into(),
                mid: 1,
                offset: 2,
                max_marks: 3,
            };
            // Instance 1 has no link here: answered `Down` without I/O.
            self.ops.push(RedisOp {
                instance: 1,
                call,
                then,
            });
        }
    }

    impl Ops for Fake {
        type Then = u32;
        fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<RedisOp<u32>> {
            self.ops.poll(cx)
        }
        fn answered(&mut self, then: u32, answer: RedisAnswer, _now_us: u32) {
            self.got.push((then, answer));
        }
    }

    #[test]
    fn every_operation_is_answered_once() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let fake = Rc::new(RefCell::new(Fake::default()));
                fake.borrow_mut().emit(7);
                fake.borrow_mut().emit(8);
                let queue = glommio::executor().current_task_queue();
                glommio::spawn_local(drive(Rc::downgrade(&fake), Vec::new(), queue)).detach();
                let answered = |n: usize| {
                    let fake = fake.clone();
                    async move {
                        for _ in 0..1000 {
                            if fake.borrow().got.len() >= n {
                                return;
                            }
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    }
                };
                answered(2).await;
                // Emitted while the driver waits: its waker brings it back.
                fake.borrow_mut().emit(9);
                answered(3).await;
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                let got = std::mem::take(&mut fake.borrow_mut().got);
                // Answers come as Redis gives them, not in emit order.
                let mut thens: Vec<u32> = got.iter().map(|(t, _)| *t).collect();
                thens.sort_unstable();
                assert_eq!(thens, [7, 8, 9], "each once");
                for (_, a) in got {
                    assert!(matches!(a, RedisAnswer::Mark(Err(RedisError::Down(..)))), "{a:?}");
                }
            })
            .expect("executor starts")
            .join()
            .expect("executor ends");
    }
}
