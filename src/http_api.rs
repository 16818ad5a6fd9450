//! The HTTP API: goim-compatible publish and online routes, the same under
//! `/v1/` with JSON bodies (plus batch publish), and stats.
//!
//! Served by hyper's HTTP/1.1 server on every shard (the API listener is
//! SO_REUSEPORT like the client one); a request runs on the shard that
//! accepted it, encodes each push frame once, and routes it to the owner shard
//! (inline when that is this shard). Publishing is fire-and-forget, as in
//! goim: the reply says the message was accepted for delivery.
//!
//! ```text
//! POST /goim/push/keys?operation=OP&keys=K[&keys=K2]   body = payload
//! POST /goim/push/mids?operation=OP&mids=1[&mids=2]    body = payload
//! POST /goim/push/room?operation=OP&type=T&room=R      body = payload (room "T://R")
//! POST /goim/push/all?operation=OP[&speed=S]           body = payload
//! GET  /goim/online/room?type=T&rooms=R[&rooms=R2]
//! GET  /goim/online/total        GET /goim/online/top?type=T&limit=N
//! POST /v1/push/{keys,mids,room,all}   POST /v1/publish (batch)
//! GET  /v1/online/rooms?rooms=..  /v1/online/total  /v1/online/top  /v1/stats
//! ```
//!
//! Every reply is `{"code":0,"message":"","data":...}`; a bad request gets a
//! 4xx status with `code` = -400 (-401, -404, -405, -413) and a `message`
//! saying what is wrong. Not here: HTTP/2, TLS (terminate in front).

use crate::metrics::{ShardStats, StatsSnapshot};
use crate::publish::{self, PushError, Target};
use crate::shard::Shard;
use bytes::Bytes;
use fnv::FnvHashMap;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most messages in one `/v1/publish` batch.
pub const MAX_BATCH: usize = 10_000;

/// Accepts API connections until the listener is shut.
pub async fn accept(listener: TcpListener, shard: Rc<RefCell<Shard>>) {
    crate::server::accept_each(listener, shard, "api", |stream, shard| {
        let idle = Duration::from_secs(shard.borrow().shared.config.http_idle_timeout_secs);
        let _ = stream.set_read_timeout(Some(idle));
        glommio::spawn_local(serve(stream, shard.clone())).detach();
    })
    .await;
}

async fn serve(stream: TcpStream, shard: Rc<RefCell<Shard>>) {
    let svc = hyper::service::service_fn(move |req| {
        let shard = shard.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &shard).await) }
    });
    let res = hyper::server::conn::http1::Builder::new()
        // The socket's read timeout bounds idle and slow clients instead:
        // hyper's own timer needs a Send sleep, which glommio's is not.
        .header_read_timeout(None)
        .max_buf_size(64 * 1024)
        .serve_connection(HyperIo(stream), svc)
        .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "API connection ended");
    }
}

/// glommio stream → hyper's I/O traits.
struct HyperIo(TcpStream);

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut tmp = [0u8; 8192];
        // SAFETY: `remaining` only reads the cursor's capacity.
        let want = unsafe { buf.as_mut().len() }.min(tmp.len());
        match Pin::new(&mut self.0).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

type Resp = Response<Full<Bytes>>;

/// A request error: status and message.
struct ApiError(StatusCode, String);

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn reply(status: StatusCode, v: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("static headers are valid")
}

fn ok(data: Value) -> Resp {
    let v = if data.is_null() {
        json!({"code": 0, "message": ""})
    } else {
        json!({"code": 0, "message": "", "data": data})
    };
    reply(StatusCode::OK, &v)
}

async fn handle(req: Request<Incoming>, shard: &Rc<RefCell<Shard>>) -> Resp {
    match route(req, shard).await {
        Ok(r) => r,
        Err(ApiError(status, message)) => {
            let code = -i64::from(status.as_u16());
            reply(status, &json!({"code": code, "message": message}))
        }
    }
}

/// Query parameters, repeated keys kept in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn one(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn required(&self, k: &str) -> Result<&str, ApiError> {
        self.one(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("missing query parameter `{k}`")))
    }
    fn op(&self) -> Result<u32, ApiError> {
        let v = self.required("operation")?;
        v.parse()
            .map_err(|_| bad(format!("`operation` must be an unsigned 32-bit integer, got {v:?}")))
    }
}

/// The browser client, served at `/volley.js`.
const VOLLEY_JS: &str = include_str!("../web/volley.js");
/// The live-room demo page, served at `/demo` with the WebSocket port and
/// path filled in.
const DEMO_HTML: &str = include_str!("../web/demo.html");

fn page(content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

async fn route(req: Request<Incoming>, shard: &Rc<RefCell<Shard>>) -> Result<Resp, ApiError> {
    // The shared state, not a copy of the configuration, per request.
    let shared = shard.borrow().shared.clone();
    let cfg = &shared.config;
    // Public pages (no secrets in them); publishing from the demo still
    // needs the API key when one is set.
    if req.method() == Method::GET {
        match req.uri().path() {
            "/volley.js" => return Ok(page("text/javascript; charset=utf-8", VOLLEY_JS)),
            "/demo" => {
                let html = DEMO_HTML
                    .replace("__VOLLEY_WS_PORT__", &cfg.ws_listen.port().to_string())
                    .replace("__VOLLEY_WS_PATH__", &cfg.ws_path);
                return Ok(page("text/html; charset=utf-8", html));
            }
            _ => {}
        }
    }
    if let Some(key) = &cfg.api_key {
        let h = req.headers();
        let given = h.get("x-api-key").and_then(|v| v.to_str().ok()).or_else(|| {
            h.get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
        if given != Some(key.as_str()) {
            return Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong API key".into()));
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let is_post = method == Method::POST;
    let known_post = matches!(
        path.as_str(),
        "/goim/push/keys"
            | "/goim/push/mids"
            | "/goim/push/room"
            | "/goim/push/all"
            | "/v1/push/keys"
            | "/v1/push/mids"
            | "/v1/push/room"
            | "/v1/push/all"
            | "/v1/publish"
    );
    let known_get = matches!(
        path.as_str(),
        "/goim/online/room"
            | "/goim/online/total"
            | "/goim/online/top"
            | "/v1/online/rooms"
            | "/v1/online/total"
            | "/v1/online/top"
            | "/v1/stats"
            | "/healthz"
    );
    if known_post && !is_post || known_get && method != Method::GET {
        return Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}"),
        ));
    }
    if !known_post && !known_get {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no route {path}")));
    }
    let body = if is_post {
        let limited = Limited::new(req.into_body(), cfg.max_http_body);
        match limited.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return Err(ApiError(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body over {} bytes", cfg.max_http_body),
                    ));
                }
                return Err(bad(format!("cannot read body: {e}")));
            }
        }
    } else {
        Bytes::new()
    };
    let sh = shard;
    match path.as_str() {
        "/goim/push/keys" => {
            let keys: Vec<String> = q.all("keys").filter(|k| !k.is_empty()).map(String::from).collect();
            if keys.is_empty() {
                return Err(bad("missing query parameter `keys`"));
            }
            push(sh, Target::Keys(keys), q.op()?, &body, cfg.max_push_body)?;
            Ok(ok(Value::Null))
        }
        "/goim/push/mids" => {
            let mut mids = Vec::new();
            for v in q.all("mids").flat_map(|v| v.split(',')).filter(|v| !v.is_empty()) {
                mids.push(v.parse::<i64>().map_err(|_| bad(format!("bad mid {v:?}")))?);
            }
            if mids.is_empty() {
                return Err(bad("missing query parameter `mids`"));
            }
            push(sh, Target::Mids(mids), q.op()?, &body, cfg.max_push_body)?;
            Ok(ok(Value::Null))
        }
        "/goim/push/room" => {
            let room = format!("{}://{}", q.required("type")?, q.required("room")?);
            push(sh, Target::Room(room), q.op()?, &body, cfg.max_push_body)?;
            Ok(ok(Value::Null))
        }
        "/goim/push/all" => {
            push(sh, Target::All, q.op()?, &body, cfg.max_push_body)?;
            Ok(ok(Value::Null))
        }
        "/goim/online/room" => {
            let typ = q.required("type")?;
            let rooms: Vec<&str> = q
                .all("rooms")
                .flat_map(|v| v.split(','))
                .filter(|v| !v.is_empty())
                .collect();
            if rooms.is_empty() {
                return Err(bad("missing query parameter `rooms`"));
            }
            let shared = sh.borrow().shared.clone();
            let data: BTreeMap<&str, u64> = rooms
                .iter()
                .map(|r| (*r, shared.room_count(&format!("{typ}://{r}"))))
                .collect();
            Ok(ok(json!(data)))
        }
        "/goim/online/total" | "/v1/online/total" => {
            let (ips, conns) = totals(sh);
            Ok(ok(json!({"ip_count": ips, "conn_count": conns})))
        }
        "/goim/online/top" => {
            let typ = q.required("type")?;
            let limit = q
                .required("limit")?
                .parse::<usize>()
                .map_err(|_| bad("`limit` must be a number"))?;
            let prefix = format!("{typ}://");
            let tops = top(sh, &prefix, limit);
            let data: Vec<Value> = tops
                .into_iter()
                .map(|(room, count)| json!({"room_id": room[prefix.len()..], "count": count}))
                .collect();
            Ok(ok(json!(data)))
        }
        "/v1/online/rooms" => {
            let rooms: Vec<&str> = q
                .all("rooms")
                .flat_map(|v| v.split(','))
                .filter(|v| !v.is_empty())
                .collect();
            if rooms.is_empty() {
                return Err(bad(
                    "missing query parameter `rooms` (full room keys, e.g. live://1000)",
                ));
            }
            let shared = sh.borrow().shared.clone();
            let data: BTreeMap<&str, u64> = rooms.iter().map(|r| (*r, shared.room_count(r))).collect();
            Ok(ok(json!(data)))
        }
        "/v1/online/top" => {
            let limit = match q.one("limit") {
                Some(l) => l.parse::<usize>().map_err(|_| bad("`limit` must be a number"))?,
                None => 10,
            };
            let prefix = q.one("prefix").unwrap_or("");
            let data: Vec<Value> = top(sh, prefix, limit)
                .into_iter()
                .map(|(room, count)| json!({"room": room, "count": count}))
                .collect();
            Ok(ok(json!(data)))
        }
        "/v1/stats" => {
            let shared = sh.borrow().shared.clone();
            let shards: Vec<StatsSnapshot> = shared.stats.iter().map(ShardStats::snapshot).collect();
            let total = StatsSnapshot::sum(&shards);
            Ok(ok(json!({"total": total, "shards": shards})))
        }
        "/healthz" => Ok(ok(Value::Null)),
        "/v1/push/keys" | "/v1/push/mids" | "/v1/push/room" | "/v1/push/all" => {
            let m: PushReq = serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
            let kind = &path["/v1/push/".len()..];
            let (target, op, payload) = m.resolve(Some(kind))?;
            push(sh, target, op, &payload, cfg.max_push_body)?;
            Ok(ok(Value::Null))
        }
        "/v1/publish" => {
            let batch: BatchReq = serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
            if batch.messages.len() > MAX_BATCH {
                return Err(bad(format!("{} messages, limit {MAX_BATCH}", batch.messages.len())));
            }
            // Validate everything first so a batch is accepted whole or not at all.
            let mut resolved = Vec::with_capacity(batch.messages.len());
            for (i, m) in batch.messages.into_iter().enumerate() {
                let r = m
                    .resolve(None)
                    .map_err(|ApiError(s, msg)| ApiError(s, format!("messages[{i}]: {msg}")))?;
                check_push(&r.0, &r.2, cfg.max_push_body)
                    .map_err(|ApiError(s, msg)| ApiError(s, format!("messages[{i}]: {msg}")))?;
                resolved.push(r);
            }
            let n = resolved.len();
            for (target, op, payload) in resolved {
                push(sh, target, op, &payload, cfg.max_push_body)?;
            }
            Ok(ok(json!({"accepted": n})))
        }
        _ => Err(ApiError(StatusCode::NOT_FOUND, format!("no route {path}"))),
    }
}

/// One message of the native API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushReq {
    /// "keys", "mids", "room" or "all" (batch only; implied by the path).
    target: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    mids: Vec<i64>,
    room: Option<String>,
    op: u32,
    /// Payload as UTF-8 text...
    body: Option<String>,
    /// ...or as base64.
    body_base64: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchReq {
    messages: Vec<PushReq>,
}

impl PushReq {
    fn resolve(self, path_kind: Option<&str>) -> Result<(Target, u32, Bytes), ApiError> {
        let kind = match (path_kind, self.target.as_deref()) {
            (Some(p), None) => p.to_string(),
            (Some(p), Some(t)) if p == t => p.to_string(),
            (Some(p), Some(t)) => return Err(bad(format!("target {t:?} contradicts the path /v1/push/{p}"))),
            (None, Some(t)) => t.to_string(),
            (None, None) => return Err(bad("missing `target` (keys, mids, room or all)")),
        };
        let payload = match (self.body, self.body_base64) {
            (Some(b), None) => Bytes::from(b),
            (None, Some(b)) => {
                use base64::Engine;
                Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.as_bytes())
                        .map_err(|e| bad(format!("body_base64: {e}")))?,
                )
            }
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => return Err(bad("give `body` or `body_base64`, not both")),
        };
        let target = match kind.as_str() {
            "keys" if !self.keys.is_empty() => Target::Keys(self.keys),
            "keys" => return Err(bad("`keys` is empty")),
            "mids" if !self.mids.is_empty() => Target::Mids(self.mids),
            "mids" => return Err(bad("`mids` is empty")),
            "room" => Target::Room(
                self.room
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| bad("missing `room`"))?,
            ),
            "all" => Target::All,
            t => return Err(bad(format!("unknown target {t:?} (keys, mids, room or all)"))),
        };
        Ok((target, self.op, payload))
    }
}

impl From<PushError> for ApiError {
    fn from(e: PushError) -> Self {
        let status = match e {
            PushError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PushError::Bad(_) => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

fn check_push(target: &Target, payload: &[u8], max: usize) -> Result<(), ApiError> {
    Ok(publish::check(target, payload, max)?)
}

fn push(shard: &Rc<RefCell<Shard>>, target: Target, op: u32, payload: &[u8], max: usize) -> Result<(), ApiError> {
    Ok(publish::push(&mut shard.borrow_mut(), target, op, payload, max)?)
}

fn totals(shard: &Rc<RefCell<Shard>>) -> (usize, u64) {
    let shared = shard.borrow().shared.clone();
    let mut ips = fnv::FnvHashSet::default();
    for v in &shared.views {
        ips.extend(v.load().ips.iter().copied());
    }
    let conns = shared
        .stats
        .iter()
        .map(|s| s.authed.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    (ips.len(), conns)
}

/// Rooms with `prefix`, largest first, at most `limit`.
fn top(shard: &Rc<RefCell<Shard>>, prefix: &str, limit: usize) -> Vec<(String, u64)> {
    let shared = shard.borrow().shared.clone();
    let mut counts: FnvHashMap<Arc<str>, u64> = FnvHashMap::default();
    for v in &shared.views {
        for (room, n) in &v.load().rooms {
            if room.starts_with(prefix) {
                *counts.entry(room.clone()).or_default() += u64::from(*n);
            }
        }
    }
    let mut v: Vec<(String, u64)> = counts.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(limit);
    v
}
