//! A shard's connections handed to the next process (`volley upgrade`):
//! `Shard::export` takes them from a quiet shard as plain records
//! (`ShardState`); `Shard::import` puts them into a fresh shard of the new
//! process at the same slots and generations.
//!
//! Same slots and generations keep every address that names a connection
//! true: the directory slices handed over with them (keys and users →
//! `GlobalConn`), server-assigned keys (they spell the address; the new
//! process signs with the old one's secret, which the process hand-off
//! carries), presence watches. Room and pattern indexes are rebuilt from
//! the records: a member's position in a room's list is this process's
//! business. Nothing is announced while importing — no presence join, no
//! directory registration, no inbox replay — since, for the clients,
//! nothing happened.
//!
//! What travels per connection: its protocol state (version, user, key,
//! token grant and timers, rooms, patterns, accepts, rate buckets), its
//! heartbeat deadline, whether it is closing and why, and the frames
//! queued or held for it and not yet written. What does not: its socket
//! (sent beside the records by SCM_RIGHTS, in the records' order), what
//! history and inboxes hold (read back from the durable store by the new
//! process), the bytes its driver holds (`conn::driver`). The shard's TCP
//! publisher connections travel beside them (`PublisherState`, filled in
//! by `api::tcp_handoff`, their sockets after the connections'), and in
//! cluster mode where each room the shard owns stands (`cluster_rooms`).
//!
//! Files: this one (the records, their encoding, what is refused),
//! `export` (taking them from a quiet shard), `import` (putting them into
//! a fresh one).
//!
//! Sans-IO; used by the hand-off runtime on every shard. Invariants:
//! export only from a quiet shard — no join waiting for its owner (refused
//! otherwise); import only into a shard that holds no connection; export,
//! encode, decode and import give back the same connections (tests in
//! `shard::sim::handoff_tests`).

use super::conns::Transport;
use super::mesh::{ConnRef, GlobalConn};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The hand-off's format version (these records and `handoff::wire`'s
/// messages): both processes must speak the same one. Bumped on any change
/// to either; a test pins the encoding of a sample.
pub const VERSION: u32 = 5;

/// Everything one shard hands over.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// The shard's index (the new process runs as many shards).
    pub shard: u32,
    /// Its wheel's tick: deadlines, token timers and rate buckets count in
    /// these ticks.
    pub tick: u32,
    /// The generation it would give the next slot it fills.
    pub next_gen: u32,
    /// Its connections; the i-th socket sent beside is the i-th one's.
    pub conns: Vec<ConnState>,
    /// Its slice of the directory: client-chosen keys with their holder and
    /// the holder's user.
    pub keys: Vec<(String, GlobalConn, i64)>,
    /// And users with their connections (each: whether it speaks version 2).
    pub users: Vec<(i64, Vec<(GlobalConn, bool)>)>,
    /// Pushes to users that entered the process at this shard.
    pub push_seq: u64,
    /// Rooms whose presence this shard's connections watch, and who.
    pub watching: Vec<(String, Vec<ConnRef>)>,
    /// Its TCP publisher connections (`api::tcp`); their sockets follow
    /// the connections' ones, in this order.
    pub publishers: Vec<PublisherState>,
    /// Cluster mode: the rooms this shard owns with members on the node,
    /// each with the epoch and the last offset its members were sent, so
    /// that the next process reads what came after from the room's Stream
    /// (empty on a single node).
    pub cluster_rooms: Vec<(String, u64, u64)>,
}

/// A TCP publisher connection, parked between two reads with every reply
/// written (`api::tcp_handoff`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublisherState {
    /// Passed auth (the API key).
    pub authed: bool,
    /// The tick it connected at: auth is due within the handshake timeout.
    pub opened: u32,
    /// The tick its last bytes arrived at.
    pub last_heard: u32,
    /// What it read and has not handled: an incomplete frame.
    pub unparsed: Vec<u8>,
}

/// One connection.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnState {
    /// Its slot and generation.
    pub conn: ConnRef,
    /// Its wire.
    pub transport: Transport,
    /// Passed auth.
    pub authed: bool,
    /// Protocol version.
    pub ver: u16,
    /// Client-chosen key (`None`: the assigned one, or not authenticated).
    pub key: Option<String>,
    /// User id, 0 = anonymous.
    pub mid: i64,
    /// Peer IP.
    pub ip: IpAddr,
    /// Tick by which it must show a sign of life.
    pub deadline: u32,
    /// A WebSocket ping is out for a passed deadline.
    pub pinged: bool,
    /// Its socket refused the last write.
    pub blocked: bool,
    /// Why it is closing (`CloseReason::name`), if it is.
    pub close: Option<String>,
    /// Its token's grant and timers.
    pub token: Option<TokenState>,
    /// Its protocol version's state.
    pub session: SessionState,
    /// Queued, not yet written: the first from where writing stopped.
    pub out: Vec<Vec<u8>>,
    /// What its driver read and has not handed on yet.
    pub input: Input,
}

/// A connection's bytes read and not yet handled (`conn::driver`): an
/// incomplete frame or upgrade request, and the WebSocket session.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The incomplete frame (or HTTP upgrade request) read so far.
    pub partial: Vec<u8>,
    /// The WebSocket session (`None`: raw TCP).
    pub ws: Option<crate::proto::ws::session::Saved>,
}

/// What a protocol version keeps.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionState {
    /// Version 1 (and connections not yet authenticated).
    V1 {
        /// Its room.
        room: Option<String>,
        /// Accepted operation codes, sorted.
        accepts: Vec<u32>,
    },
    /// Version 2.
    V2 {
        /// Rooms joined.
        rooms: Vec<String>,
        /// Room patterns held.
        patterns: Vec<String>,
        /// Frames held behind the queue (a replay), in order.
        held: Vec<Vec<u8>>,
        /// The outbound limit the queue is refilled up to.
        limit: u64,
        /// Client publishes left in its bucket at tick `publish_at`.
        publish_left: u32,
        /// Tick of `publish_left`.
        publish_at: u32,
        /// Joins and read marks left at tick `ops_at`.
        ops_left: u32,
        /// Tick of `ops_left`.
        ops_at: u32,
    },
}

/// A verified token: what it grants and its timers.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenState {
    /// `sub`.
    pub mid: i64,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// Rooms and patterns it may join (`None`: any).
    pub rooms: Option<Vec<String>>,
    /// Rooms and patterns it may publish to.
    pub publish: Vec<String>,
    /// Keys it may choose.
    pub keys: Vec<String>,
    /// Presence info, raw JSON.
    pub info: Option<String>,
    /// Tick of the refresh request.
    pub refresh_at: u32,
    /// Tick of the close unless refreshed.
    pub expire_at: u32,
    /// The refresh request went out.
    pub asked: bool,
}

/// Why a shard cannot be exported or imported.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum HandoffError {
    /// A join waits for its owner's answer: the shard is not quiet.
    #[error("connection {0:?} waits for the answer to a join")]
    Joining(ConnRef),
    /// Import into a shard that holds connections.
    #[error("shard {0} already holds connections")]
    NotEmpty(usize),
    /// The records are another shard's.
    #[error("records of shard {records} offered to shard {shard}")]
    WrongShard {
        /// Whose records.
        records: u32,
        /// Offered to.
        shard: usize,
    },
    /// Not one socket per connection.
    #[error("{sockets} sockets for {conns} connections")]
    Sockets {
        /// Sockets given.
        sockets: usize,
        /// Connections in the records.
        conns: usize,
    },
    /// A close reason this build does not know.
    #[error("unknown close reason {0:?}")]
    Reason(String),
    /// A WebSocket session on a raw TCP connection, or none on a
    /// WebSocket one.
    #[error("slot {0}: its input is not its transport's")]
    Input(u32),
    /// Two records for one slot, or a slot past any shard's.
    #[error("slot {0} given twice, or past the most a shard holds")]
    Slot(u32),
    /// A room pattern that is not one, or a room that is a pattern.
    #[error("{0:?} is not what its place says (room or pattern)")]
    Room(String),
    /// A watcher that is none of the connections.
    #[error("a watcher of {0:?} is none of the connections")]
    Watcher(String),
}

/// The highest slot taken: a shard's slots are dense (a freed one is
/// reused first), so a shard has none past the most connections it ever
/// held at once, and the table of a million per shard is what the records
/// may ask for; a slot past `[limits] max_conns` (when set) is refused too.
pub const MAX_SLOT: u32 = 1 << 20;

/// The records as bytes (postcard).
pub fn encode(state: &ShardState) -> Vec<u8> {
    postcard::to_stdvec(state).expect("plain records always encode")
}

/// Records from bytes; `None` if they are not whole, valid records.
pub fn decode(bytes: &[u8]) -> Option<ShardState> {
    postcard::from_bytes(bytes).ok()
}

mod export;
mod import;

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of `fuzz/corpus/handoff_records/seed-three-conns`: a
    /// version-1 member with a key, a version-2 one with rooms, a pattern,
    /// held frames and a presence watch, and a closing one with a token;
    /// a TCP publisher with half a frame read, and a cluster room's
    /// position.
    fn sample() -> ShardState {
        let c = |idx, session, close: Option<&str>| ConnState {
            conn: ConnRef { idx, gen: idx + 1 },
            transport: Transport::Tcp,
            authed: true,
            ver: 1,
            key: Some(format!("k{idx}")),
            mid: idx as i64 + 1,
            ip: "127.0.0.1".parse().unwrap(),
            deadline: 40,
            pinged: false,
            blocked: false,
            close: close.map(String::from),
            token: None,
            session,
            out: vec![vec![0, 0, 0, 16, 0, 16, 0, 1, 0, 0, 3, 232, 0, 0, 0, 0]],
            input: Input::default(),
        };
        let v1 = SessionState::V1 {
            room: Some("live://1".into()),
            accepts: vec![1000],
        };
        let v2 = SessionState::V2 {
            rooms: vec!["live://1".into(), "live://2".into()],
            patterns: vec!["live://*".into()],
            held: vec![vec![1, 2, 3]],
            limit: 1 << 20,
            publish_left: 5,
            publish_at: 3,
            ops_left: 7,
            ops_at: 3,
        };
        let mut closing = c(
            2,
            SessionState::V1 {
                room: None,
                accepts: vec![],
            },
            Some("restart"),
        );
        closing.transport = Transport::Ws;
        closing.input = Input {
            partial: vec![0x82, 0x85],
            ws: Some(crate::proto::ws::session::Saved {
                state: crate::proto::ws::session::State::Open { echo: false },
                assembling: Some(crate::proto::ws::reader::Assembling {
                    text: false,
                    compressed: true,
                    buf: vec![0, 0, 0, 20],
                }),
                deflate: true,
            }),
        };
        closing.token = Some(TokenState {
            mid: 3,
            exp: 1_700_000_100,
            rooms: Some(vec!["live://>".into()]),
            publish: vec![],
            keys: vec!["k2".into()],
            info: Some("{\"name\":\"ann\"}".into()),
            refresh_at: 90,
            expire_at: 101,
            asked: false,
        });
        let at = |idx| GlobalConn {
            shard: 0,
            conn: ConnRef { idx, gen: idx + 1 },
        };
        ShardState {
            shard: 0,
            tick: 12,
            next_gen: 9,
            conns: vec![c(0, v1, None), c(1, v2, None), closing],
            keys: vec![("k0".into(), at(0), 1)],
            users: vec![(1, vec![(at(0), false)]), (2, vec![(at(1), true)])],
            push_seq: 4,
            watching: vec![("live://1".into(), vec![ConnRef { idx: 1, gen: 2 }])],
            publishers: vec![PublisherState {
                authed: true,
                opened: 2,
                last_heard: 11,
                unparsed: vec![0, 0, 0, 40, 0, 16, 0, 1],
            }],
            cluster_rooms: vec![("live://1".into(), 0x9f86_d081_884c_7d65, 41)],
        }
    }

    /// The format is part of `handoff::wire::VERSION`: a change to these
    /// records that changes their bytes must bump it, and renew the seed
    /// (`VOLLEY_RENEW_SEED=1 cargo test --lib pinned_sample` writes it).
    #[test]
    fn the_records_encode_as_the_pinned_sample_for_this_version() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/handoff_records/seed-three-conns"
        );
        if std::env::var_os("VOLLEY_RENEW_SEED").is_some() {
            std::fs::write(path, encode(&sample())).unwrap();
        }
        let pinned = std::fs::read(path).unwrap();
        let pinned = &pinned[..];
        assert_eq!(VERSION, 5, "a new version: renew the seed");
        assert_eq!(encode(&sample()), pinned);
        assert_eq!(decode(pinned), Some(sample()));
    }
}
