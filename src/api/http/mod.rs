//! The HTTP API: goim-compatible publish and online routes, the same under
//! `/v1/` with JSON bodies (plus batch publish), stats as JSON and as
//! Prometheus text, and the demo pages.
//!
//! Served by hyper's HTTP/1.1 server on every shard (the API listener is
//! SO_REUSEPORT like the client ones); a request runs on the shard that
//! accepted it. This file is the glue: accept, hyper over glommio's streams,
//! and `handle` — find the route (`routes::ROUTES`), check the API key, read
//! the body within `[api] max_body`, call the handler. What a handler gets
//! and gives, and parsing, live in `request`; the route table and most
//! handlers in `routes`; the reads that ask a room's owner (history,
//! presence, unread) in `reads`; draining the node in `drain`. Publishing is fire-and-forget, as in
//! goim: the reply says the message was accepted for delivery.
//!
//! ```text
//! POST /goim/push/{keys,mids,room,all}?operation=..   body = payload
//! GET  /goim/online/{room,total,top}
//! POST /v1/push/{keys,mids,room,all}   POST /v1/publish (batch)
//! GET  /v1/online/{rooms,total,top}  /v1/history  /v1/stats  /metrics  /healthz
//! POST /v1/drain?over=SECS   GET /v1/drain   POST /v1/upgrade   GET /v1/upgrade
//! ```
//!
//! Every JSON reply is `{"code":0,"message":"","data":...}`; a bad request
//! gets a 4xx status with `code` = minus the status and a `message` saying
//! what is wrong. Not here: HTTP/2, TLS (terminate in front).

mod drain;
mod reads;
pub mod request;
pub mod routes;

use super::conns;
use crate::auth::{api_key_ok, http_presented_key};
use crate::metrics::ShardStats;
use crate::net::{accept_each, ListenerKind};
use crate::shard::Shard;
use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use request::{bad, ApiError, Query};
use request::{json_reply, Req, Resp};
use routes::{Run, ROUTES};
use serde_json::json;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Accepts API connections until the listener is shut.
pub async fn accept(listener: TcpListener, shard: Rc<RefCell<Shard>>) {
    accept_each(listener, shard, ListenerKind::Api, |stream, shard| {
        glommio::spawn_local(serve(stream, shard.clone())).detach();
    })
    .await;
}

/// Answers a connection turned away at the connection cap.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Connection: close\r\nContent-Length: 74\r\n\r\n{\"code\":-503,\"message\":\"[api] max_conns connections are in requests\"}";

async fn serve(mut stream: TcpStream, shard: Rc<RefCell<Shard>>) {
    let (cap, api) = {
        let sh = shard.borrow();
        let api = sh.shared.config.api.clone();
        ((api.max_conns / sh.nr_shards()).max(1), api)
    };
    let admitted = match conns::admit(cap, conns::after(api.idle_timeout_secs)) {
        conns::Admission::In { admitted, evicted } => {
            if evicted {
                ShardStats::add(&shard.borrow().stats().api_evicted, 1);
            }
            admitted
        }
        conns::Admission::Full => {
            ShardStats::add(&shard.borrow().stats().api_refused, 1);
            let _ = futures_lite::AsyncWriteExt::write_all(&mut stream, FULL).await;
            return;
        }
    };
    let conn = admitted.conn.clone();
    let stats_of = shard.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (shard, conn) = (shard.clone(), conn.clone());
        conn.busy(conns::after(api.request_timeout_secs));
        async move {
            let resp = handle(req, &shard).await;
            // A refusal closes the connection (`handle`); a second gives
            // hyper the time to write it, however much of a refused body
            // the client still sends.
            let next = if resp.status().is_success() {
                api.idle_timeout_secs
            } else {
                1
            };
            conn.waiting(std::time::Instant::now(), conns::after(next));
            let mut resp = resp;
            if conns::letting_go() {
                // The next process takes over: this answer is the
                // connection's last, however soon the client would send
                // its next request on it (its next goes to the new one).
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        // `conns` bounds the time to a request's headers, to its answer and
        // between requests: hyper's own header timer needs a Send sleep,
        // which glommio's is not.
        .header_read_timeout(None)
        .max_buf_size(64 * 1024)
        .serve_connection(
            HyperIo {
                stream,
                conn: admitted.conn.clone(),
                header: std::time::Duration::from_secs(api.header_timeout_secs),
            },
            svc,
        );
    let ended = async {
        let evicted = admitted.conn.ended().await;
        Err(evicted)
    };
    match futures_lite::future::or(async { Ok(http.await) }, ended).await {
        Ok(Err(e)) => tracing::debug!(error = %e, "API connection ended"),
        Ok(Ok(())) | Err(true) => {}
        // Dropping the connection closes the socket, whatever it was
        // doing: headers not in by the header deadline, an answer not
        // ready by the request deadline, no next request by the idle one.
        Err(false) => ShardStats::add(&stats_of.borrow().stats().api_timeouts, 1),
    }
}

/// glommio stream → hyper's I/O traits.
/// glommio stream → hyper's I/O traits; what it reads starts a request's
/// header deadline (`ApiConn::heard`).
struct HyperIo {
    stream: TcpStream,
    conn: Rc<conns::ApiConn>,
    header: std::time::Duration,
}

impl hyper::rt::Read for HyperIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut tmp = [0u8; 8192];
        // SAFETY: `remaining` only reads the cursor's capacity.
        let want = unsafe { buf.as_mut().len() }.min(tmp.len());
        match Pin::new(&mut self.stream).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.conn.heard(|| std::time::Instant::now() + self.header);
                }
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

async fn handle(req: Request<Incoming>, shard: &Rc<RefCell<Shard>>) -> Resp {
    match dispatch(req, shard).await {
        Ok(r) => r,
        Err(ApiError(status, message)) => {
            let code = -i64::from(status.as_u16());
            let mut r = json_reply(status, &json!({"code": code, "message": message}));
            // A refusal may come before the body was read (key, size,
            // body memory): the connection closes after it rather than
            // read a body it refused.
            r.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

async fn dispatch(req: Request<Incoming>, shard: &Rc<RefCell<Shard>>) -> Result<Resp, ApiError> {
    // The shared state, not a copy of the configuration, per request.
    let shared = shard.borrow().shared.clone();
    let path = req.uri().path().to_string();
    // HEAD is GET without the body (hyper leaves it out of the answer).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    // Pages need no key; anything else, known route or not, does first.
    let page = ROUTES.iter().any(|r| r.path == path && r.method == method && !r.keyed);
    let keyed = api_key_ok(shared.config.api.key.as_deref(), http_presented_key(req.headers()));
    if !page && !keyed {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "missing or wrong API key".into()));
    }
    let mut on_path = ROUTES.iter().filter(|r| r.path == path).peekable();
    if on_path.peek().is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no route {path}")));
    }
    let Some(route) = on_path.find(|r| r.method == method) else {
        return Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}"),
        ));
    };
    let query = Query::parse(req.uri().query());
    // The lease lives as long as the body: until the answer.
    let (body, _lease) = if method == Method::POST {
        let max = shared.config.api.max_body;
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // Refused before the body is read, so a client that asked for
        // `100 Continue` is never told to send what would be refused.
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large(max));
        }
        let share = (shared.config.api.body_memory / shared.mesh.nr_shards().max(1)).max(max);
        // What a body holds beyond what every connection may always read.
        let want = declared.map_or(max, |n| n as usize).saturating_sub(conns::FREE_BODY);
        let Some(lease) = conns::lease_body(want, share) else {
            ShardStats::add(&shard.borrow().stats().api_refused, 1);
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "[api] body_memory is taken by request bodies being read; retry".into(),
            ));
        };
        let body = match Limited::new(req.into_body(), max).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large(max)),
            Err(e) => return Err(bad(format!("cannot read body: {e}"))),
        };
        (body, Some(lease))
    } else {
        (Bytes::new(), None)
    };
    let r = Req {
        path: &path,
        query,
        body,
        shard,
        shared: &shared,
        keyed,
    };
    match route.run {
        Run::Now(h) => h(&r),
        Run::Later(h) => {
            let later = h(&r)?;
            drop(r);
            later.await
        }
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {max} bytes"))
}
