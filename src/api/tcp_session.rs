//! `PublisherSession`: what a TCP publisher connection does with each frame
//! it sends and with the passing of time, without the socket.
//!
//! Runs on the shard that accepted the connection, called by `api::tcp`
//! once per decoded frame and once per quiet second; it routes pushes into
//! that shard and appends replies to a buffer the caller writes. Time is the
//! shard's tick (seconds), given in, never read.
//!
//! ```text
//! before auth:  op 7 with the API key as body → op 8      anything else → auth_required
//! after:        op 2 → op 3 (everything before it is routed)
//!               op 20/22/24/26 → routed (and, with the durable store, kept before
//!               any later reply is written); op + 1 back when the sequence is non-zero
//!               (frame version 2: the body starts with a message id and a TTL)
//!               op 9 → each inner frame in order (no op 9 inside)
//!               op 6 → closed (client_disconnect)        op 7 → protocol_error
//! time:         no auth within handshake_timeout_secs of the connection → handshake_timeout
//!               nothing within heartbeat_timeout_secs → heartbeat_timeout
//! ```
//!
//! Invariant: frames are handled in arrival order and each is routed before
//! the next, so an ack or an op 3 covers everything before it.

use crate::auth::api_key_ok;
use crate::config::ApiConfig;
use crate::proto::batch::{Batch, BatchError};
use crate::proto::binary::{self, op as client_op, Frame};
use crate::proto::close::CloseReason;
use crate::proto::publish::{self as body, op};
use crate::shard::handoff::PublisherState;
use crate::shard::Shard;
use bytes::BytesMut;

use super::{PublishError, Wait};

/// Largest auth frame body before auth (or the API key's length, if longer).
pub const AUTH_FRAME_MAX: usize = 1024;

/// Why a publisher connection ends, and what it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The reason (op 6 body and counter).
    pub reason: CloseReason,
    /// Detail after the reason in the op 6 body.
    pub detail: String,
}

impl Ended {
    pub(super) fn new(reason: CloseReason, detail: impl Into<String>) -> Self {
        Ended {
            reason,
            detail: detail.into(),
        }
    }
}

/// One publisher connection's protocol state.
#[derive(Debug)]
pub struct PublisherSession {
    authed: bool,
    /// Tick of the last bytes received (or of the connection).
    last_heard: u32,
    /// Tick the connection opened: auth is due within the handshake
    /// timeout of it, however the bytes trickle.
    opened: u32,
    /// With the durable store: what the publishes since the last write of
    /// replies wait for (each must be kept before any reply after it goes).
    waits: Vec<Wait>,
}

impl PublisherSession {
    /// A session that starts at tick `now`.
    pub fn new(now: u32) -> Self {
        PublisherSession {
            authed: false,
            last_heard: now,
            opened: now,
            waits: Vec::new(),
        }
    }

    /// The session as a hand-off carries it, with `unparsed` (what was
    /// read and not handled). Taken between two reads, every reply
    /// written: nothing waits.
    pub fn saved(&self, unparsed: &[u8]) -> PublisherState {
        debug_assert!(self.waits.is_empty(), "parked with replies waiting");
        PublisherState {
            authed: self.authed,
            opened: self.opened,
            last_heard: self.last_heard,
            unparsed: unparsed.to_vec(),
        }
    }

    /// A session handed over by the previous process (ticks carry over:
    /// the new shard's wheel goes on from the old one's).
    pub fn restored(p: &PublisherState) -> Self {
        PublisherSession {
            authed: p.authed,
            last_heard: p.last_heard,
            opened: p.opened,
            waits: Vec::new(),
        }
    }

    /// What the replies written so far wait for (see `waits`).
    pub fn take_waits(&mut self) -> Vec<Wait> {
        std::mem::take(&mut self.waits)
    }

    /// Whether the publisher has authenticated.
    pub fn authed(&self) -> bool {
        self.authed
    }

    /// Largest frame body taken now: before auth, what an auth frame (the
    /// API key) needs, so that whoever reaches the port cannot make it hold
    /// more; after, `[api] max_body`.
    pub fn max_frame(&self, api: &ApiConfig) -> usize {
        if self.authed {
            api.max_body
        } else {
            api.key.as_ref().map_or(0, String::len).max(AUTH_FRAME_MAX)
        }
    }

    /// Bytes arrived at tick `now`.
    pub fn heard(&mut self, now: u32) {
        self.last_heard = now;
    }

    /// Whether the connection has been quiet too long at tick `now`. Ticks
    /// are whole seconds and an event's tick began up to a second before
    /// it, so T seconds have surely passed only after T+1 ticks: a deadline
    /// of T never closes before T.
    pub fn check_quiet(&self, now: u32, sh: &Shard) -> Result<(), Ended> {
        let cfg = &sh.shared.config.client;
        let quiet = now.saturating_sub(self.last_heard);
        if !self.authed && now.saturating_sub(self.opened) > cfg.handshake_timeout_secs {
            let t = cfg.handshake_timeout_secs;
            return Err(Ended::new(
                CloseReason::HandshakeTimeout,
                format!("no auth within {t} s"),
            ));
        }
        if quiet > cfg.heartbeat_timeout_secs {
            let t = cfg.heartbeat_timeout_secs;
            return Err(Ended::new(CloseReason::HeartbeatTimeout, format!("nothing for {t} s")));
        }
        Ok(())
    }

    /// Handles one frame: routes what it publishes into `sh`, appends any
    /// reply to `out`.
    pub fn handle_frame(&mut self, f: Frame<'_>, sh: &mut Shard, out: &mut BytesMut) -> Result<(), Ended> {
        if f.ver != binary::VERSION_GOIM && f.ver != binary::VERSION_NATIVE {
            return Err(Ended::new(
                CloseReason::UnsupportedVersion,
                format!("version {}, the publisher protocol is version 1 or 2", f.ver),
            ));
        }
        let reply = |out: &mut BytesMut, op| binary::encode(out, f.ver, op, f.seq, &[]);
        if !self.authed {
            if f.op != client_op::AUTH {
                return Err(Ended::new(
                    CloseReason::AuthRequired,
                    format!("first frame was op {}", f.op),
                ));
            }
            if !api_key_ok(sh.shared.config.api.key.as_deref(), Some(f.body)) {
                return Err(Ended::new(CloseReason::BadApiKey, "missing or wrong API key"));
            }
            self.authed = true;
            reply(out, client_op::AUTH_REPLY);
            return Ok(());
        }
        match f.op {
            client_op::HEARTBEAT => reply(out, client_op::HEARTBEAT_REPLY),
            client_op::DISCONNECT => return Err(Ended::new(CloseReason::ClientDisconnect, "")),
            client_op::AUTH => return Err(Ended::new(CloseReason::ProtocolError, "auth sent twice")),
            client_op::RAW => {
                let max_frame = sh.shared.config.api.max_body;
                for inner in Batch::new(f.body, max_frame) {
                    match inner {
                        Ok(inner) => self.handle_frame(inner, sh, out)?,
                        Err(BatchError::Frame(e)) => {
                            return Err(Ended::new(CloseReason::from(&e), format!("in op 9: {e}")))
                        }
                        Err(e) => return Err(Ended::new(CloseReason::ProtocolError, e.to_string())),
                    }
                }
            }
            op::PUSH_KEYS | op::PUSH_MIDS | op::PUSH_ROOM | op::PUSH_ALL => {
                let bad = |e: body::BodyError| Ended::new(CloseReason::BadBody, e.to_string());
                let (meta, rest) = if f.ver == binary::VERSION_NATIVE {
                    body::parse_meta(f.body).map_err(bad)?
                } else {
                    (body::Meta::default(), f.body)
                };
                let p = body::parse(f.op, rest).map_err(bad)?;
                let meta = super::Meta {
                    id: meta.id.map(str::to_owned),
                    ttl: meta.ttl,
                };
                // With the durable store every publish is kept before the
                // replies after it are written (and a refusal ends the
                // connection with its reason).
                let kept = sh.durable();
                let wait = super::publish(sh, p.target, p.op, p.payload, meta, kept).map_err(|e| {
                    let reason = match e {
                        PublishError::TooLarge { .. } => CloseReason::BodyTooLarge,
                        PublishError::Unavailable(_) => CloseReason::Unavailable,
                        _ => CloseReason::BadBody,
                    };
                    Ended::new(reason, e.to_string())
                })?;
                self.waits.extend(wait);
                if f.seq != 0 {
                    reply(out, f.op + 1);
                }
            }
            other => {
                return Err(Ended::new(
                    CloseReason::ProtocolError,
                    format!("operation {other} is not served on the publisher port"),
                ))
            }
        }
        Ok(())
    }
}
