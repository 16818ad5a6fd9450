//! The HTTP API's routes: one table row per route (method, path, whether it
//! needs the API key, handler), and the handlers, each a small sync function
//! from a parsed request to a reply.
//!
//! Runs on the shard that accepted the request (`http::handle` finds the
//! row, checks the key, reads the body, then calls the handler). docs/API.md
//! is the contract; every reply is `{"code":0,"message":"","data":...}`.

use super::drain::{v1_drain, v1_drain_status, v1_upgrade, v1_upgrade_status};
use super::reads::{v1_history, v1_presence, v1_unread};
use super::request::{
    bad, json_reply, ok, v1_batch, v1_push, with_type, ApiError, Handler, Later, LaterHandler, Req, Resp,
};
use crate::api::{publish, Meta, Target};
use crate::metrics::{prometheus, ShardStats, StatsSnapshot};
use crate::proto::v2;
use crate::shard::mesh::Published;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How a route is answered.
#[derive(Clone, Copy)]
pub enum Run {
    /// On the spot.
    Now(Handler),
    /// After another shard answers.
    Later(LaterHandler),
}

/// One row of the route table.
pub struct Route {
    /// The method served.
    pub method: Method,
    /// The exact path.
    pub path: &'static str,
    /// Whether the API key (when configured) is required.
    pub keyed: bool,
    /// What answers it.
    pub run: Run,
}

const fn get(path: &'static str, handler: Handler) -> Route {
    Route {
        method: Method::GET,
        path,
        keyed: true,
        run: Run::Now(handler),
    }
}

const fn get_later(path: &'static str, handler: LaterHandler) -> Route {
    Route {
        method: Method::GET,
        path,
        keyed: true,
        run: Run::Later(handler),
    }
}

const fn post(path: &'static str, handler: Handler) -> Route {
    Route {
        method: Method::POST,
        path,
        keyed: true,
        run: Run::Now(handler),
    }
}

const fn post_later(path: &'static str, handler: LaterHandler) -> Route {
    Route {
        method: Method::POST,
        path,
        keyed: true,
        run: Run::Later(handler),
    }
}

/// The development token endpoint: no API key (the demo page calls it),
/// and answered 404 unless `[auth] dev_tokens` is on.
const fn dev(path: &'static str, handler: Handler) -> Route {
    Route {
        method: Method::POST,
        path,
        keyed: false,
        run: Run::Now(handler),
    }
}

const fn page(path: &'static str, handler: Handler) -> Route {
    Route {
        method: Method::GET,
        path,
        keyed: false,
        run: Run::Now(handler),
    }
}

/// Every route. Pages carry no secrets, so they need no key (publishing
/// from the demo still does); nor does `/healthz`, which load balancers
/// ask without one and which then says no more than whether the node is
/// healthy.
pub const ROUTES: &[Route] = &[
    post_later("/goim/push/keys", goim_push_keys),
    post_later("/goim/push/mids", goim_push_mids),
    post_later("/goim/push/room", goim_push_room),
    post_later("/goim/push/all", goim_push_all),
    get("/goim/online/room", goim_online_room),
    get("/goim/online/total", online_total),
    get("/goim/online/top", goim_online_top),
    post_later("/v1/push/keys", v1_push_one),
    post_later("/v1/push/mids", v1_push_one),
    post_later("/v1/push/room", v1_push_one),
    post_later("/v1/push/all", v1_push_one),
    post_later("/v1/publish", v1_publish),
    get("/v1/online/rooms", v1_online_rooms),
    get("/v1/online/total", online_total),
    get("/v1/online/top", v1_online_top),
    get_later("/v1/history", v1_history),
    get_later("/v1/unread", v1_unread),
    get_later("/v1/presence", v1_presence),
    dev("/v1/dev/token", dev_token),
    post("/v1/drain", v1_drain),
    get("/v1/drain", v1_drain_status),
    post("/v1/upgrade", v1_upgrade),
    get("/v1/upgrade", v1_upgrade_status),
    get("/v1/stats", v1_stats),
    get("/metrics", metrics),
    page("/healthz", healthz),
    page("/volley.js", volley_js),
    page("/demo", demo),
];

/// Routes one push and answers as `answer` says: with a room push's
/// offset once its owner has given it one (and kept it, with the durable
/// store; `published_json`), once kept without data, or as soon as it is
/// routed (goim's fire-and-forget reply, which does not wait on a shard
/// busy fanning out).
fn push(r: &Req<'_>, target: Target, op: u32, payload: &[u8], meta: Meta, answer: Answer) -> Result<Later, ApiError> {
    let wait = answer != Answer::Routed;
    let wait = publish(&mut r.shard.borrow_mut(), target, op, payload, meta, wait)?;
    Ok(Box::pin(async move {
        Ok(match wait {
            Some(w) => match published_json(w.outcome().await)? {
                Some(v) if answer == Answer::Offset => ok(v),
                _ => ok(Value::Null),
            },
            None => ok(Value::Null),
        })
    }))
}

/// When a push is answered, and with what.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Once routed, without data (goim's way).
    Routed,
    /// Once kept (the durable store), without data.
    Kept,
    /// Once kept, a room push with its offset.
    Offset,
}

/// A goim route's push: answered with the offset only when it carries a
/// message id (an idempotent publish wants to know whether it was a
/// retry); otherwise as goim answers, once routed — or, with the durable
/// store, once kept (still without data).
fn goim_push(r: &Req<'_>, target: Target) -> Result<Later, ApiError> {
    let meta = r.query.meta()?;
    let answer = if meta.id.is_some() {
        Answer::Offset
    } else if r.shard.borrow().durable() {
        Answer::Kept
    } else {
        Answer::Routed
    };
    push(r, target, r.query.op()?, &r.body, meta, answer)
}

/// A room push's answer: `{"offset": n, "epoch": "…", "duplicate": false}`;
/// when it was not published, 507 if the durable store is full
/// (`[storage] max_bytes`, or the disk), else 503 (the store failing;
/// cluster mode: Redis did not take it).
fn published_json(p: Result<Option<Published>, String>) -> Result<Option<Value>, ApiError> {
    let p = p.map_err(|why| {
        let full = why.starts_with("storage full") || why.contains("No space left");
        let status = if full {
            StatusCode::INSUFFICIENT_STORAGE
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        ApiError(status, why)
    })?;
    Ok(p.map(|p| json!({"offset": p.offset, "epoch": v2::fmt_epoch(p.epoch), "duplicate": p.duplicate})))
}

fn goim_push_keys(r: &Req<'_>) -> Result<Later, ApiError> {
    let keys: Vec<String> = r
        .query
        .all("keys")
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect();
    if keys.is_empty() {
        return Err(bad("missing query parameter `keys`"));
    }
    goim_push(r, Target::Keys(keys))
}

fn goim_push_mids(r: &Req<'_>) -> Result<Later, ApiError> {
    let mids = r
        .query
        .list("mids")
        .map(|v| v.parse::<i64>().map_err(|_| bad(format!("bad mid {v:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if mids.is_empty() {
        return Err(bad("missing query parameter `mids`"));
    }
    goim_push(r, Target::Mids(mids))
}

fn goim_push_room(r: &Req<'_>) -> Result<Later, ApiError> {
    let room = format!("{}://{}", r.query.required("type")?, r.query.required("room")?);
    goim_push(r, Target::Room(room))
}

fn goim_push_all(r: &Req<'_>) -> Result<Later, ApiError> {
    goim_push(r, Target::All)
}

/// Room counts for `rooms` (each prefixed with `prefix`), keyed as given.
fn room_counts(r: &Req<'_>, prefix: &str, missing: &str) -> Result<Resp, ApiError> {
    let rooms: Vec<&str> = r.query.list("rooms").collect();
    if rooms.is_empty() {
        return Err(bad(missing));
    }
    let data: BTreeMap<&str, u64> = rooms
        .iter()
        .map(|room| (*room, r.shared.online_room(&format!("{prefix}{room}"), None)))
        .collect();
    Ok(ok(json!(data)))
}

fn goim_online_room(r: &Req<'_>) -> Result<Resp, ApiError> {
    let prefix = format!("{}://", r.query.required("type")?);
    room_counts(r, &prefix, "missing query parameter `rooms`")
}

fn v1_online_rooms(r: &Req<'_>) -> Result<Resp, ApiError> {
    room_counts(
        r,
        "",
        "missing query parameter `rooms` (full room keys, e.g. live://1000)",
    )
}

fn online_total(r: &Req<'_>) -> Result<Resp, ApiError> {
    let (ips, conns) = r.shared.online();
    Ok(ok(json!({"ip_count": ips, "conn_count": conns})))
}

fn goim_online_top(r: &Req<'_>) -> Result<Resp, ApiError> {
    let prefix = format!("{}://", r.query.required("type")?);
    let limit = r.query.limit(None)?;
    let data: Vec<Value> = r
        .shared
        .online_top(&prefix, limit)
        .into_iter()
        .map(|(room, count)| json!({"room_id": room[prefix.len()..], "count": count}))
        .collect();
    Ok(ok(json!(data)))
}

fn v1_online_top(r: &Req<'_>) -> Result<Resp, ApiError> {
    let limit = r.query.limit(Some(10))?;
    let prefix = r.query.one("prefix").unwrap_or("");
    let data: Vec<Value> = r
        .shared
        .online_top(prefix, limit)
        .into_iter()
        .map(|(room, count)| json!({"room": room, "count": count}))
        .collect();
    Ok(ok(json!(data)))
}

fn v1_push_one(r: &Req<'_>) -> Result<Later, ApiError> {
    let kind = r.path.trim_start_matches("/v1/push/");
    let p = v1_push(kind, &r.body)?;
    push(r, p.target, p.op, &p.payload, p.meta, Answer::Offset)
}

/// `POST /v1/publish`: the batch is checked whole, then routed in order;
/// answered once every room message in it has its offset (and, with the
/// durable store, every push in it is kept).
fn v1_publish(r: &Req<'_>) -> Result<Later, ApiError> {
    let all = v1_batch(&r.body, r.shared.config.api.max_push_body)?;
    let n = all.len();
    let mut waits = Vec::with_capacity(n);
    {
        let mut sh = r.shard.borrow_mut();
        for p in all {
            waits.push(publish(&mut sh, p.target, p.op, &p.payload, p.meta, true)?);
        }
    }
    Ok(Box::pin(async move {
        let mut results = Vec::with_capacity(n);
        for w in waits {
            results.push(match w {
                Some(w) => published_json(w.outcome().await)?.unwrap_or(Value::Null),
                None => Value::Null,
            });
        }
        Ok(ok(json!({"accepted": n, "results": results})))
    }))
}

/// `POST /v1/dev/token?mid=&name=&rooms=&publish=&ttl=`: a token signed
/// with the first `[auth] jwt_secret`, for development (the demo signs in
/// with it). 404 unless `[auth] dev_tokens` is on.
fn dev_token(r: &Req<'_>) -> Result<Resp, ApiError> {
    let not_here = || ApiError(StatusCode::NOT_FOUND, "no route".into());
    if !r.shared.config.auth.dev_tokens {
        return Err(not_here());
    }
    let verifier = r.shared.verifier.as_ref().ok_or_else(not_here)?;
    let mid: i64 = r
        .query
        .required("mid")?
        .parse()
        .ok()
        .filter(|&m: &i64| m != 0)
        .ok_or_else(|| bad("`mid` must be a non-zero user id"))?;
    let list = |k: &str| -> Vec<String> {
        let v: Vec<String> = r.query.list(k).map(String::from).collect();
        if v.is_empty() {
            vec![">".to_string()]
        } else {
            v
        }
    };
    let ttl: u64 = match r.query.one("ttl") {
        None | Some("") => 3600,
        Some(s) => s.parse().map_err(|_| bad("`ttl` must be seconds"))?,
    };
    let now = crate::metrics::unix_now();
    let mut claims = json!({
        "sub": mid.to_string(),
        "exp": now + ttl.min(86_400),
        "rooms": list("rooms"),
        "publish": list("publish"),
    });
    if let Some(name) = r.query.one("name").filter(|n| !n.is_empty()) {
        claims["info"] = json!({ "name": name });
    }
    let token = verifier
        .sign_dev(&claims)
        .ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign".into()))?;
    Ok(ok(json!({ "token": token, "exp": claims["exp"] })))
}

fn snapshots(r: &Req<'_>) -> Vec<StatsSnapshot> {
    r.shared.stats.iter().map(ShardStats::snapshot).collect()
}

fn v1_stats(r: &Req<'_>) -> Result<Resp, ApiError> {
    let shards = snapshots(r);
    let total = StatsSnapshot::sum(&shards);
    Ok(ok(json!({"total": total, "shards": shards})))
}

fn metrics(r: &Req<'_>) -> Result<Resp, ApiError> {
    let text = prometheus::render(&snapshots(r));
    Ok(with_type(StatusCode::OK, prometheus::CONTENT_TYPE, Bytes::from(text)))
}

/// 200 while the node can do its job; 503 with the reason while the
/// durable store is read back at start (with progress), from the moment a
/// drain begins (so that load balancers send new clients elsewhere; with
/// progress), or while a Redis
/// instance of the cluster is unreachable from some shard (publishes fail
/// meanwhile; client connections stay up). Without the API key (when one
/// is set) the 503 does not name the instances.
fn healthz(r: &Req<'_>) -> Result<Resp, ApiError> {
    let rec = &r.shared.recovery;
    let left = rec.shards_left.load(std::sync::atomic::Ordering::Relaxed);
    if left > 0 {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let (read, total) = (load(&rec.bytes_read), load(&rec.bytes_total));
        let message = format!("recovering: {read} of {total} bytes of the journal read back, {left} shard(s) left");
        let data = json!({"recovering": {"shards_left": left, "bytes_read": read, "bytes_total": total, "records": load(&rec.records)}});
        return Ok(json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": 503, "message": message, "data": data}),
        ));
    }
    if let Some((message, data)) = super::drain::unhealthy(r.shared) {
        return Ok(json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": 503, "message": message, "data": data}),
        ));
    }
    let Some(health) = &r.shared.cluster else {
        return Ok(ok(Value::Null));
    };
    let down = health.down();
    if down.is_empty() && health.joined() {
        return Ok(ok(Value::Null));
    }
    if down.is_empty() {
        let message = "joining the cluster: not yet subscribed to this node's channel";
        return Ok(json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": 503, "message": message, "data": {"redis": []}}),
        ));
    }
    if !r.keyed {
        return Ok(json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"code": 503, "message": "redis unreachable (the API key shows which instance and why)"}),
        ));
    }
    let now = crate::metrics::unix_now();
    let urls = &r.shared.config.redis.urls;
    let redis: Vec<Value> = down
        .iter()
        .map(|(i, reason, since)| {
            let url = crate::redis::RedisUrl::shown(&urls[*i]);
            json!({"url": url, "reason": reason, "down_secs": now.saturating_sub(*since)})
        })
        .collect();
    let message = format!(
        "redis unreachable: {}",
        redis
            .iter()
            .map(|d| format!(
                "{} ({})",
                d["url"].as_str().unwrap_or(""),
                d["reason"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(json_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"code": 503, "message": message, "data": {"redis": redis}}),
    ))
}

/// The JavaScript client (an ES module, docs/CLIENT.md), served at
/// `/volley.js`.
const VOLLEY_JS: &str = include_str!("../../../web/volley.js");
/// The live-room demo page, served at `/demo` with the WebSocket port and
/// path filled in.
const DEMO_HTML: &str = include_str!("../../../web/demo.html");

fn volley_js(_: &Req<'_>) -> Result<Resp, ApiError> {
    Ok(with_type(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        Bytes::from_static(VOLLEY_JS.as_bytes()),
    ))
}

fn demo(r: &Req<'_>) -> Result<Resp, ApiError> {
    let cfg = &r.shared.config;
    let html = DEMO_HTML
        .replace("__VOLLEY_WS_PORT__", &cfg.ws.listen.port().to_string())
        .replace("__VOLLEY_WS_PATH__", &cfg.ws.path);
    Ok(with_type(StatusCode::OK, "text/html; charset=utf-8", Bytes::from(html)))
}
