//! The HTTP API's reads that ask a room's owner (in a cluster: Redis or
//! every node): `GET /v1/history`, `/v1/presence` and `/v1/unread`. Where
//! each question goes is `shard::router`'s to decide; here a request is
//! checked and the answers are put together.
//!
//! Runs on the shard that accepted the request.

use super::request::{bad, ok, ApiError, Later, Req};
use crate::proto::v2;
use crate::shard::mesh::{HistoryPage, NodesPage, Reply};
use crate::shard::router::PresenceAsked;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most messages one history page returns.
pub const MAX_HISTORY_PAGE: usize = 1000;

/// `GET /v1/history?room=&since=&limit=`: asks the room's owner.
pub(super) fn v1_history(r: &Req<'_>) -> Result<Later, ApiError> {
    let room = r.query.required("room")?.to_string();
    if room.len() > crate::proto::body::MAX_ROOM_LEN {
        return Err(bad("room key over 256 bytes"));
    }
    let since = match r.query.one("since") {
        None | Some("") => 0,
        Some(s) => s
            .parse()
            .map_err(|_| bad(format!("`since` must be an offset, got {s:?}")))?,
    };
    let limit = r.query.limit(Some(100))?.min(MAX_HISTORY_PAGE);
    let (reply, wait) = Reply::pair();
    let name: Arc<str> = Arc::from(room.as_str());
    r.shard.borrow_mut().ask_history(name, since, limit, reply);
    Ok(Box::pin(async move {
        let page = wait.await.ok_or_else(|| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the room's shard (in a cluster: its Redis instance) did not answer".into(),
            )
        })?;
        Ok(ok(history_json(&room, page)))
    }))
}

/// `GET /v1/presence?room=&limit=`: every shard's members of the room
/// (in a cluster: every node's), the first `limit` (at most `[client]
/// presence_limit`) listed.
pub(super) fn v1_presence(r: &Req<'_>) -> Result<Later, ApiError> {
    let room = r.query.required("room")?.to_string();
    if room.is_empty() || room.len() > crate::proto::body::MAX_ROOM_LEN {
        return Err(bad("`room` must be 1 to 256 bytes"));
    }
    let max = r.shared.config.client.presence_limit;
    let limit = r.query.limit(Some(max))?.min(max);
    let cluster_count = r.shared.online_room(&room, None) as usize;
    let asked = r.shard.borrow_mut().ask_presence(&room, limit);
    Ok(Box::pin(async move {
        let page = match asked {
            PresenceAsked::Shards(waits) => {
                let mut page = NodesPage {
                    complete: true,
                    ..NodesPage::default()
                };
                for w in waits {
                    let unanswered = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "a shard did not answer".into());
                    let (n, list) = w.await.ok_or_else(unanswered)?;
                    page.add(n, list, limit);
                }
                page
            }
            PresenceAsked::Nodes(wait) => wait.await.flatten().ok_or_else(|| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the room's Redis instance is unreachable".into(),
                )
            })?,
        };
        // Nodes that did not answer in time still count (as the cluster's
        // counts have them).
        let count = if page.complete {
            page.count
        } else {
            page.count.max(cluster_count)
        };
        let truncated = page.members.len() < count;
        Ok(ok(json!({"room": room, "count": count, "members": page.members,
            "truncated": truncated, "complete": page.complete})))
    }))
}

/// Most rooms one unread query may name.
pub const MAX_UNREAD_ROOMS: usize = 1000;

/// `GET /v1/unread?mid=&rooms=`: asks each room's owner for the user's
/// read mark and the room's newest offset.
pub(super) fn v1_unread(r: &Req<'_>) -> Result<Later, ApiError> {
    let mid: i64 = r
        .query
        .required("mid")?
        .parse()
        .map_err(|_| bad("`mid` must be a user id (i64)"))?;
    let rooms: Vec<String> = r.query.list("rooms").map(String::from).collect();
    if rooms.is_empty() || rooms.len() > MAX_UNREAD_ROOMS {
        return Err(bad(format!("`rooms` must name 1 to {MAX_UNREAD_ROOMS} rooms")));
    }
    if rooms.iter().any(|room| room.len() > crate::proto::body::MAX_ROOM_LEN) {
        return Err(bad("room key over 256 bytes"));
    }
    let waits = r.shard.borrow_mut().ask_unread(mid, &rooms);
    Ok(Box::pin(async move {
        let mut data = serde_json::Map::new();
        for (rooms, wait) in waits {
            let marks = wait.await.ok_or_else(|| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no answer for some rooms (their shard, or in a cluster their Redis instance)".into(),
                )
            })?;
            for (room, m) in rooms.iter().zip(marks) {
                let v = m.map_or(
                    Value::Null,
                    // A mark may be above a room's newest offset when Redis
                    // lost the offset counter but kept the marks.
                    |(mark, last)| json!({"unread": last.saturating_sub(mark), "offset": last, "read": mark}),
                );
                data.insert(room.to_string(), v);
            }
        }
        Ok(ok(json!({ "mid": mid, "rooms": data })))
    }))
}

pub(super) fn history_json(room: &str, page: Option<HistoryPage>) -> Value {
    use base64::Engine;
    let Some(page) = page else {
        return json!({"room": room, "epoch": Value::Null, "offset": 0, "messages": []});
    };
    let messages: Vec<Value> = page
        .entries
        .iter()
        .filter_map(|e| {
            let (f, _) = crate::proto::binary::decode(&e.wire.tcp, usize::MAX >> 1)
                .ok()
                .flatten()?;
            let env = v2::decode_push(f.body).ok()?;
            let mut m = json!({
                "offset": e.offset,
                "op": env.op,
                "body_base64": base64::engine::general_purpose::STANDARD.encode(env.payload),
            });
            if !env.id.is_empty() {
                m["id"] = env.id.into();
            }
            Some(m)
        })
        .collect();
    json!({"room": room, "epoch": v2::fmt_epoch(page.epoch), "offset": page.last, "messages": messages})
}
