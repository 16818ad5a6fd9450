//! `POST /v1/drain` and `GET /v1/drain`: draining this node (`volley
//! drain`), and what `/healthz` says while it runs and after; `POST
//! /v1/upgrade` and `GET /v1/upgrade`: asking for an upgrade (`volley
//! upgrade`, `handoff::process`) and how it went.
//!
//! Runs on the shard that took the request; the drain itself runs on
//! every shard (`shard::conns::drain`), begun by a `Drain` message each.
//! Invariant: a node drains once — `begun` is never unset, so a second
//! request is refused (409) and `/healthz` answers 503 from the first on.

use super::request::{bad, json_reply, ok, ApiError, Req, Resp};
use crate::shard::mesh::ShardMsg;
use crate::shard::view::{DrainProgress, Shared};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

/// The window when the request names none.
pub const DEFAULT_OVER_SECS: u64 = 30;
/// The longest window taken: a day.
const MAX_OVER_SECS: u64 = 86_400;

/// Begins draining: every client connection open now is told to reconnect
/// at its own moment of the next `over` seconds.
pub fn v1_drain(r: &Req<'_>) -> Result<Resp, ApiError> {
    let over: u64 = match r.query.one("over") {
        None | Some("") => DEFAULT_OVER_SECS,
        Some(s) => s
            .parse()
            .ok()
            .filter(|&s| s <= MAX_OVER_SECS)
            .ok_or_else(|| bad(format!("`over` must be whole seconds, at most {MAX_OVER_SECS}")))?,
    };
    let d = &r.shared.drain;
    if d.begun.swap(true, SeqCst) {
        return Ok(json_reply(
            StatusCode::CONFLICT,
            &json!({"code": -409, "message": "this node is draining already", "data": status(r.shared)}),
        ));
    }
    d.over_ms.store(over * 1000, Relaxed);
    d.began_ms.store(unix_ms(), Relaxed);
    for shard in 0..r.shared.mesh.nr_shards() {
        let seed = fastrand::u64(..);
        r.shared.mesh.send(
            shard,
            ShardMsg::Drain {
                over_ms: over * 1000,
                seed,
            },
        );
    }
    tracing::info!(
        over_secs = over,
        "draining: every client is told to reconnect over the window"
    );
    Ok(ok(status(r.shared)))
}

/// Where the drain stands.
pub fn v1_drain_status(r: &Req<'_>) -> Result<Resp, ApiError> {
    Ok(ok(status(r.shared)))
}

/// `/healthz`'s 503 message while draining or drained; `None` otherwise.
pub fn unhealthy(shared: &Shared) -> Option<(String, Value)> {
    let d = &shared.drain;
    if !d.begun.load(Relaxed) {
        return None;
    }
    let s = status(shared);
    let message = if s["done"] == true {
        "drained: every client was told to reconnect elsewhere".to_string()
    } else {
        format!(
            "draining: {} of {} clients told to reconnect, {} s of the window left",
            s["told"], s["planned"], s["left_secs"]
        )
    };
    Some((message, json!({ "drain": s })))
}

fn status(shared: &Shared) -> Value {
    let d: &DrainProgress = &shared.drain;
    let begun = d.begun.load(Relaxed);
    let (told, planned) = (d.told.load(Relaxed), d.planned.load(Relaxed));
    let started = d.shards_started.load(Relaxed);
    let over = d.over_ms.load(Relaxed);
    let elapsed = unix_ms().saturating_sub(d.began_ms.load(Relaxed));
    json!({
        "begun": begun,
        "done": begun && started == shared.mesh.nr_shards() && told >= planned,
        "over_secs": over / 1000,
        "elapsed_secs": if begun { elapsed / 1000 } else { 0 },
        "left_secs": if begun { over.saturating_sub(elapsed).div_ceil(1000) } else { 0 },
        "told": told,
        "planned": planned,
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `POST /v1/upgrade`: hands every connection to a new process of this
/// process's binary (as it was named at start: replace the file first),
/// as SIGUSR2 does. Answered at once (202); `GET /v1/upgrade` tells how
/// it went (`pid` changes once the new process answers).
pub fn v1_upgrade(r: &Req<'_>) -> Result<Resp, ApiError> {
    let binary = r
        .query
        .one("binary")
        .filter(|b| !b.is_empty())
        .map(std::path::Path::new);
    match crate::handoff::process::request(binary) {
        Ok(()) => Ok(json_reply(
            StatusCode::ACCEPTED,
            &json!({"code": 0, "message": "", "data": upgrade_status()}),
        )),
        Err(why) => {
            let status = match why {
                crate::handoff::process::Refused::NotHere => StatusCode::NOT_IMPLEMENTED,
                crate::handoff::process::Refused::Running => StatusCode::CONFLICT,
                crate::handoff::process::Refused::Binary(_) => StatusCode::BAD_REQUEST,
            };
            let code = -i64::from(status.as_u16());
            Ok(json_reply(
                status,
                &json!({"code": code, "message": why.to_string(), "data": upgrade_status()}),
            ))
        }
    }
}

/// `GET /v1/upgrade`: this process and its last upgrade.
pub fn v1_upgrade_status(_: &Req<'_>) -> Result<Resp, ApiError> {
    Ok(ok(upgrade_status()))
}

fn upgrade_status() -> Value {
    let s = crate::handoff::process::status().clone();
    json!({
        "pid": std::process::id(),
        "running": s.running,
        "failed": s.failed,
        "last_error": s.last_error,
        "binary": s.binary,
    })
}
