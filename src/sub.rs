//! `volley sub`: a subscriber for people at a terminal. It connects to a
//! volley server's TCP client port, speaks version 2 (docs/PROTOCOL.md),
//! joins the rooms it is given, prints every push on a line of its own,
//! and when the connection ends reconnects and resumes each room from the
//! last offset it printed, so nothing published meanwhile is missed while
//! the room's history holds it.
//!
//! Runs on the `volley` binary's main thread with blocking sockets; it is
//! a client of the server, not a part of it. What arrives is printed to
//! stdout, what happens to the connection to stderr.

use crate::proto::binary::{self, op, VERSION_NATIVE};
use crate::proto::v2::{self, Kind};
use bytes::BytesMut;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Heartbeat every this often; the server's default deadline is 600 s and
/// goim's JavaScript client beats every 30 s.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// The longest frame accepted from the server.
const MAX_FRAME: usize = 16 << 20;

/// Arguments of `volley sub`.
#[derive(Debug, clap::Args)]
pub struct SubArgs {
    /// Rooms (or room patterns) to join, e.g. `live://1000`.
    #[arg(required = true)]
    pub rooms: Vec<String>,
    /// The server's TCP client listener.
    #[arg(long, default_value = "127.0.0.1:3101")]
    pub target: SocketAddr,
    /// User id to authenticate as (0: none; pushes to a user need one).
    #[arg(long, default_value_t = 0)]
    pub mid: i64,
    /// Connection key to ask for (empty: the server assigns one).
    #[arg(long, default_value = "")]
    pub key: String,
    /// Token, when the server runs with `[auth] mode = "jwt"`.
    #[arg(long)]
    pub token: Option<String>,
    /// Exit after printing this many pushes (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Exit when the connection ends instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// Where the subscriber is in each room: what to resume from.
#[derive(Debug, Default, Clone, Copy)]
struct Mark {
    offset: u64,
    epoch: u64,
}

/// Runs until interrupted, `count` pushes were printed, or (with
/// `no_reconnect`) the connection ends; errors only for what retrying
/// cannot mend (a refused auth).
pub fn run(args: &SubArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut marks: HashMap<String, Mark> = HashMap::new();
    let mut printed = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        let began = Instant::now();
        match session(args, &mut marks, &mut printed, out) {
            Ok(()) => return Ok(()),
            Err(End::Refused(why)) => anyhow::bail!("{why}"),
            Err(End::Lost(why)) => {
                eprintln!("volley sub: {why}");
                if args.no_reconnect {
                    anyhow::bail!("{why}");
                }
                // A connection that lived a while starts the backoff over.
                if began.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(250);
                }
                eprintln!("volley sub: reconnecting in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Why a session ended.
enum End {
    /// The server refused what retrying would send again.
    Refused(String),
    /// The connection went; a new one may resume.
    Lost(String),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Lost(format!("connection lost: {e}"))
    }
}

/// One connection: auth, join (resuming where a mark is), then print
/// pushes; `Ok` once `count` pushes were printed.
fn session(
    args: &SubArgs,
    marks: &mut HashMap<String, Mark>,
    printed: &mut u64,
    out: &mut impl Write,
) -> Result<(), End> {
    let mut s =
        TcpStream::connect(args.target).map_err(|e| End::Lost(format!("cannot connect to {}: {e}", args.target)))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut auth = json!({"mid": args.mid, "key": args.key, "platform": "volley-sub"});
    if let Some(t) = &args.token {
        auth["token"] = t.clone().into();
    }
    send(&mut s, op::AUTH, 1, auth.to_string().as_bytes())?;
    for (i, room) in args.rooms.iter().enumerate() {
        let mut join = json!({ "room": room });
        if let Some(m) = marks.get(room) {
            join["offset"] = m.offset.into();
            join["epoch"] = v2::fmt_epoch(m.epoch).into();
        }
        send(&mut s, v2::op::JOIN, 2 + i as u32, join.to_string().as_bytes())?;
    }
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let mut beat = Instant::now();
    loop {
        if beat.elapsed() >= HEARTBEAT {
            send(&mut s, op::HEARTBEAT, 0, b"")?;
            beat = Instant::now();
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(End::Lost("the server closed the connection".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.into()),
        }
        while let Some((frame, used)) =
            binary::decode(&buf, MAX_FRAME).map_err(|e| End::Lost(format!("undecodable frame: {e}")))?
        {
            let done = handle(args, marks, printed, out, frame.op, frame.body)?;
            let _ = buf.split_to(used);
            if done {
                return Ok(());
            }
        }
    }
}

fn send(s: &mut TcpStream, op: u32, seq: u32, body: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::new();
    binary::encode(&mut b, VERSION_NATIVE, op, seq, body);
    s.write_all(&b)
}

/// Acts on one frame from the server; `true` once `count` pushes were
/// printed.
fn handle(
    args: &SubArgs,
    marks: &mut HashMap<String, Mark>,
    printed: &mut u64,
    out: &mut impl Write,
    frame_op: u32,
    body: &[u8],
) -> Result<bool, End> {
    let text = String::from_utf8_lossy(body);
    match frame_op {
        op::AUTH_REPLY => {
            let v: Value = serde_json::from_slice(body).unwrap_or_default();
            eprintln!(
                "volley sub: connected to {} as key {} (mid {})",
                args.target, v["key"], v["mid"]
            );
        }
        v2::op::JOIN_REPLY => {
            let v: Value = serde_json::from_slice(body).unwrap_or_default();
            let room = v["room"].as_str().unwrap_or_default().to_string();
            let offset = v["offset"].as_u64();
            let epoch = v["epoch"].as_str().and_then(v2::parse_epoch);
            let how = match (v["recovered"].as_bool(), v["reason"].as_str()) {
                (Some(true), _) => ", resumed: what was missed follows".to_string(),
                (Some(false), Some(why)) => format!(", not resumed ({why}): messages since are lost to it"),
                _ => String::new(),
            };
            match (offset, epoch) {
                (Some(offset), Some(epoch)) => {
                    eprintln!("volley sub: joined {room} at offset {offset}{how}");
                    // A fresh join (or one that could not resume) starts
                    // at the room's newest offset; a resume keeps its own.
                    if v["recovered"].as_bool() != Some(true) {
                        marks.insert(room, Mark { offset, epoch });
                    }
                }
                _ => eprintln!("volley sub: joined pattern {room}"),
            }
        }
        v2::op::PUSH => {
            let e = v2::decode_push(body).map_err(|e| End::Lost(format!("bad push: {e}")))?;
            let payload = String::from_utf8_lossy(e.payload);
            let id = if e.id.is_empty() {
                String::new()
            } else {
                format!(" id {}", e.id)
            };
            let line = match e.kind {
                Kind::Room => {
                    marks.insert(
                        e.room.to_string(),
                        Mark {
                            offset: e.offset,
                            epoch: e.epoch,
                        },
                    );
                    format!("{} #{} op {}{id}: {payload}", e.room, e.offset, e.op)
                }
                Kind::User => format!("user push {} op {}{id}: {payload}", e.offset, e.op),
                Kind::Direct => format!("push op {}{id}: {payload}", e.op),
            };
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| End::Refused(format!("cannot write: {e}")))?;
            *printed += 1;
            return Ok(args.count != 0 && *printed >= args.count);
        }
        v2::op::ERROR => {
            let v: Value = serde_json::from_slice(body).unwrap_or_default();
            let why = format!("refused: {} ({})", v["reason"], v["message"]);
            // Worth another try: a busy server, or a cluster whose Redis
            // is away; anything else would be refused again.
            return Err(match v["reason"].as_str() {
                Some("unavailable" | "rate_limited") => End::Lost(why),
                _ => End::Refused(why),
            });
        }
        op::DISCONNECT => {
            let why = text.to_string();
            let refused = [
                "bad_auth",
                "token_",
                "room_not_allowed",
                "key_not_allowed",
                "key_in_use",
            ];
            if refused.iter().any(|r| why.starts_with(r)) {
                return Err(End::Refused(format!("the server refused: {why}")));
            }
            return Err(End::Lost(format!("the server closed the connection: {why}")));
        }
        _ => {}
    }
    Ok(false)
}
