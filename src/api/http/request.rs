//! HTTP request parsing, separate from dispatch: what a handler gets
//! (`Req`) and gives (`Resp`, `Later`, `ok`), query strings, the native
//! JSON message bodies, and the error type every handler returns.
//!
//! Pure code on the request's shard; nothing here routes a push. A parse
//! produces a `Push` (target, operation, payload) or an `ApiError` whose
//! status and text are what the caller is answered.

use crate::api::{Meta, PublishError, Target};
use crate::shard::{Shard, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// Most messages in one `/v1/publish` batch.
pub const MAX_BATCH: usize = 10_000;

/// A request error: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub StatusCode, pub String);

/// A 400 with `msg`.
pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let status = match e {
            PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

/// Query parameters, repeated keys kept in order.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=1&b=2` (percent-decoding; `None` = empty).
    pub fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// Every value of `k`, in order.
    pub fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// Every value of `k`, each split at commas, empty items dropped.
    pub fn list<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.all(k).flat_map(|v| v.split(',')).filter(|v| !v.is_empty())
    }

    /// The first value of `k`.
    pub fn one(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    /// The first value of `k`, which must be there and not empty.
    pub fn required(&self, k: &str) -> Result<&str, ApiError> {
        self.one(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("missing query parameter `{k}`")))
    }

    /// goim's `operation` parameter.
    pub fn op(&self) -> Result<u32, ApiError> {
        let v = self.required("operation")?;
        v.parse()
            .map_err(|_| bad(format!("`operation` must be an unsigned 32-bit integer, got {v:?}")))
    }

    /// The optional `id` (message id) and `ttl` (seconds) parameters.
    pub fn meta(&self) -> Result<Meta, ApiError> {
        let ttl = match self.one("ttl") {
            None | Some("") => None,
            Some(t) => Some(
                t.parse()
                    .map_err(|_| bad(format!("`ttl` must be a number of seconds, got {t:?}")))?,
            ),
        };
        Ok(Meta {
            id: self.one("id").filter(|i| !i.is_empty()).map(String::from),
            ttl,
        })
    }

    /// A `limit` parameter (`default` when absent).
    pub fn limit(&self, default: Option<usize>) -> Result<usize, ApiError> {
        match (self.one("limit"), default) {
            (Some(l), _) => l.parse().map_err(|_| bad("`limit` must be a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(bad("missing query parameter `limit`")),
        }
    }
}

/// One push, parsed and not yet checked against the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Recipients.
    pub target: Target,
    /// Business operation code.
    pub op: u32,
    /// Payload.
    pub payload: Bytes,
    /// Message id and TTL.
    pub meta: Meta,
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
    /// The publisher's message id (carried to version-2 clients).
    id: Option<String>,
    /// Seconds a room message stays in history.
    ttl: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchReq {
    messages: Vec<PushReq>,
}

/// The body of `POST /v1/push/{kind}`.
pub fn v1_push(kind: &str, body: &[u8]) -> Result<Push, ApiError> {
    let m: PushReq = serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    m.resolve(Some(kind))
}

/// The body of `POST /v1/publish`: every message, or the first error
/// (prefixed with its index), so a batch is accepted whole or not at all.
pub fn v1_batch(body: &[u8], max_push_body: usize) -> Result<Vec<Push>, ApiError> {
    let batch: BatchReq = serde_json::from_slice(body).map_err(|e| bad(format!("bad JSON body: {e}")))?;
    if batch.messages.len() > MAX_BATCH {
        return Err(bad(format!("{} messages, limit {MAX_BATCH}", batch.messages.len())));
    }
    let mut out = Vec::with_capacity(batch.messages.len());
    for (i, m) in batch.messages.into_iter().enumerate() {
        let at = |ApiError(s, msg)| ApiError(s, format!("messages[{i}]: {msg}"));
        let p = m.resolve(None).map_err(at)?;
        crate::api::check(&p.target, &p.payload, &p.meta, max_push_body).map_err(|e| at(e.into()))?;
        out.push(p);
    }
    Ok(out)
}

impl PushReq {
    fn resolve(self, path_kind: Option<&str>) -> Result<Push, ApiError> {
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
        Ok(Push {
            target,
            op: self.op,
            payload,
            meta: Meta {
                id: self.id.filter(|i| !i.is_empty()),
                ttl: self.ttl,
            },
        })
    }
}

/// A reply.
pub type Resp = Response<Full<Bytes>>;

/// What a handler gets: the request, parsed, and where it runs.
pub struct Req<'a> {
    /// The path (matched already).
    pub path: &'a str,
    /// The query string, parsed.
    pub query: Query,
    /// The body (empty for GET).
    pub body: Bytes,
    /// The shard serving the request.
    pub shard: &'a Rc<RefCell<Shard>>,
    /// State shared by every shard.
    pub shared: &'a Shared,
    /// Whether the request carries the API key (or none is set): routes
    /// open to all (`/healthz`) say more to those that do.
    pub keyed: bool,
}

/// A route's handler.
pub type Handler = fn(&Req<'_>) -> Result<Resp, ApiError>;

/// A reply that another shard has to supply first.
pub type Later = Pin<Box<dyn Future<Output = Result<Resp, ApiError>>>>;

/// A handler that asks another shard (a room's owner) and answers when it
/// has: it checks the request at once and returns the wait.
pub type LaterHandler = fn(&Req<'_>) -> Result<Later, ApiError>;

/// A JSON reply with `status`.
pub fn json_reply(status: StatusCode, v: &Value) -> Resp {
    with_type(status, "application/json", Bytes::from(v.to_string()))
}

pub(super) fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Full::new(body))
        .expect("static headers are valid")
}

pub(super) fn ok(data: Value) -> Resp {
    let v = if data.is_null() {
        json!({"code": 0, "message": ""})
    } else {
        json!({"code": 0, "message": "", "data": data})
    };
    json_reply(StatusCode::OK, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_bodies_resolve_or_say_why_not() {
        let p = v1_push("room", br#"{"room":"live://1","op":1000,"body":"hi"}"#).unwrap();
        assert_eq!(p.target, Target::Room("live://1".into()));
        assert_eq!((p.op, &p.payload[..]), (1000, &b"hi"[..]));
        let p = v1_push("keys", br#"{"keys":["a"],"op":1,"body_base64":"AAE="}"#).unwrap();
        assert_eq!(&p.payload[..], &[0, 1]);
        for (kind, body, want) in [
            ("room", &br#"{"op":1}"#[..], "missing `room`"),
            ("keys", br#"{"target":"room","op":1}"#, "contradicts the path"),
            ("mids", br#"{"op":1}"#, "`mids` is empty"),
            ("all", br#"{"op":1,"body":"a","body_base64":"YQ=="}"#, "not both"),
            ("all", br#"{"op":1,"extra":2}"#, "unknown field"),
            ("all", b"not json", "bad JSON body"),
        ] {
            let e = v1_push(kind, body).unwrap_err();
            assert!(e.1.contains(want), "{kind} {body:?}: {e:?}");
        }
        let e = v1_batch(br#"{"messages":[{"target":"all","op":1},{"op":1}]}"#, 10).unwrap_err();
        assert!(e.1.starts_with("messages[1]: missing `target`"), "{e:?}");
        let e = v1_batch(br#"{"messages":[{"target":"all","op":1,"body":"12345678901"}]}"#, 10).unwrap_err();
        assert_eq!(e.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(v1_batch(br#"{"messages":[]}"#, 10).unwrap().len(), 0);
    }

    #[test]
    fn queries_keep_repeats_and_split_lists() {
        let q = Query::parse(Some("mids=1,2&mids=3&operation=7&limit=x&room=a%2Fb"));
        assert_eq!(q.list("mids").collect::<Vec<_>>(), vec!["1", "2", "3"]);
        assert_eq!(q.op(), Ok(7));
        assert_eq!(q.one("room"), Some("a/b"));
        assert!(q.limit(Some(3)).is_err());
        assert_eq!(Query::parse(None).limit(Some(3)), Ok(3));
        assert!(Query::parse(Some("operation=-1")).op().is_err());
        assert!(Query::parse(None).required("type").unwrap_err().1.contains("`type`"));
    }
}
