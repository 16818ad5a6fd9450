// volley.js: a dependency-free client for volley's protocol over WebSocket
// (docs/PROTOCOL.md), an ES module for browsers and Node; docs/CLIENT.md has
// the whole API. One protocol frame per binary message:
//
//   u32 packet length (16 + body) | u16 header length (16) | u16 version
//   | u32 operation | u32 sequence | body
//
// Version 2 (the default) — many rooms, resume, acknowledgements:
//   import { VolleyClient } from "./volley.js";   // in a page: "/volley.js"
//   const c = new VolleyClient("ws://host:3102/sub", {
//     auth: { mid: 123 },
//     onPush: (op, body, text, meta) => ...,   // meta: {kind, room, offset, epoch, id}
//     onJoin: (room, reply) => ...,            // reply: {offset, epoch, unread, recovered, reason}
//     onOpen: () => ..., onClose: (why) => ..., onError: (e) => ...,
//   });
//   c.connect();
//   c.join("live://7");                       // or c.join(room, {offset, epoch}) to resume
//   c.join("live://7", null, { presence: true });  // and onPresence(event) once a second
//   c.join("live://*");                       // a room pattern: every matching room's pushes
//   await c.publish("chat/1", 1000, "hi");    // -> {room, offset, epoch, duplicate}; rejects with
//                                             //    the op 50 error (code, reason, message)
//   c.markRead("live://7", offset); c.leave("live://7"); c.close();
//
// With a server that runs JWT auth, pass `getToken: async () => "eyJ..."`:
// it is called before every (re)connect, and again when the server asks
// for a fresh token (op 56) before the current one expires.
//
// It authenticates on every (re)connect and joins every room it is in again,
// resuming after the last offset it received in each (so a reconnect, or a
// close as a slow consumer, loses nothing the room's history still holds;
// when it does not, onJoin's reply says `recovered: false` and why). Pushes
// to the user (kind 2) are acknowledged once onPush has returned, so the
// server's inbox drops them. It heartbeats, answers nothing else (the
// WebSocket answers pings), and reconnects with exponential backoff
// and jitter unless closed by the caller or replaced by a newer connection
// with the same key. A room push already received (at or below the room's
// last offset in the same epoch) is not passed on twice. `c.opens` counts
// the connections it has authenticated: one more than its reconnects (a
// server upgrade in place costs none).
//
// Version 1 (goim's protocol; `version: 1`): one room from auth.room_id,
// joinRoom(room) moves it, onRoomCount gets the heartbeat reply's count.
const OP = {
  HEARTBEAT: 2, HEARTBEAT_REPLY: 3, SEND: 4, SEND_REPLY: 5, DISCONNECT: 6,
  AUTH: 7, AUTH_REPLY: 8, RAW: 9, CHANGE_ROOM: 12, CHANGE_ROOM_REPLY: 13,
  SUB: 14, SUB_REPLY: 15, UNSUB: 16, UNSUB_REPLY: 17,
  JOIN: 40, JOIN_REPLY: 41, LEAVE: 42, LEAVE_REPLY: 43, PUSH: 44,
  ACK: 46, ACK_REPLY: 47, READ: 48, READ_REPLY: 49, ERROR: 50,
  PUBLISH: 52, PUBLISH_REPLY: 53, TOKEN: 54, TOKEN_REPLY: 55, REFRESH: 56, PRESENCE: 58,
};
const KIND = { ROOM: 1, USER: 2, DIRECT: 3 };
/** WebSocket.OPEN, the same in browsers, Node and the ws package. */
const OPEN = 1;
const HEADER = 16;
const ENVELOPE = 26;
const utf8 = new TextEncoder();
const text = new TextDecoder();

/** One frame as an ArrayBuffer; `body` is a string or a Uint8Array. */
function encode(op, seq, body, ver) {
  const b = typeof body === "string" ? utf8.encode(body) : body || new Uint8Array(0);
  const buf = new ArrayBuffer(HEADER + b.length);
  const v = new DataView(buf);
  v.setUint32(0, HEADER + b.length);
  v.setUint16(4, HEADER);
  v.setUint16(6, ver || 1);
  v.setUint32(8, op);
  v.setUint32(12, seq);
  new Uint8Array(buf, HEADER).set(b);
  return buf;
}

/** The frames in one message (an op 9 batch holds several); throws on a
 *  malformed frame. */
function decode(buf) {
  const out = [];
  const bytes = new Uint8Array(buf);
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < HEADER) throw new Error("truncated frame header");
    const v = new DataView(bytes.buffer, bytes.byteOffset + at);
    const len = v.getUint32(0);
    if (v.getUint16(4) !== HEADER || len < HEADER || at + len > bytes.length) {
      throw new Error("malformed frame");
    }
    const f = { ver: v.getUint16(6), op: v.getUint32(8), seq: v.getUint32(12), body: bytes.subarray(at + HEADER, at + len) };
    if (f.op === OP.RAW) out.push(...decode(f.body));
    else out.push(f);
    at += len;
  }
  return out;
}

/** An epoch (u64) as the 16 hex digits JSON carries. */
function hex64(big) {
  return big.toString(16).padStart(16, "0");
}

/** A version-2 push envelope; throws on a malformed one. Offsets are
 *  Numbers (room offsets stay far below 2^53); a user push's id is a
 *  BigInt (it is not), epochs are hex strings. */
function decodePush(body) {
  if (body.length < ENVELOPE) throw new Error("short push envelope");
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  const roomLen = v.getUint16(6);
  const idLen = v.getUint16(24);
  if (ENVELOPE + roomLen + idLen > body.length) throw new Error("push envelope longer than its frame");
  const kind = body[4];
  const raw = v.getBigUint64(8);
  const room = text.decode(body.subarray(ENVELOPE, ENVELOPE + roomLen));
  const id = text.decode(body.subarray(ENVELOPE + roomLen, ENVELOPE + roomLen + idLen));
  return {
    op: v.getUint32(0),
    meta: {
      kind,
      room,
      offset: kind === KIND.USER ? raw : Number(raw),
      epoch: kind === KIND.ROOM ? hex64(v.getBigUint64(16)) : null,
      id,
    },
    payload: body.subarray(ENVELOPE + roomLen + idLen),
  };
}

export class VolleyClient {
  constructor(url, opts) {
    this.url = url;
    this.opts = Object.assign({
      version: 2,
      auth: {},
      heartbeatMs: 30000,
      minBackoffMs: 500,
      maxBackoffMs: 30000,
      getToken: null,
      onPush() {}, onRoomCount() {}, onJoin() {}, onOpen() {}, onClose() {}, onError() {}, onPresence() {},
    }, opts || {});
    // The browser's, Node's own (22 and later), or one passed in (the ws
    // package's on older Node).
    this.WebSocket = this.opts.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new Error("no WebSocket here: pass { WebSocket } (e.g. from the ws package)");
    }
    // Publishes waiting for their reply: sequence -> {resolve, reject}.
    this.pending = new Map();
    this.ws = null;
    this.seq = 0;
    this.backoff = this.opts.minBackoffMs;
    this.timer = null;
    this.retry = null;
    this.stopped = false;
    this.authed = false;
    this.opens = 0;
    // Version 2: room -> {offset, epoch, joined} — where each room's
    // stream stands, kept across reconnects.
    this.rooms = new Map();
  }

  get v2() {
    return this.opts.version === 2;
  }

  /** Opens the connection (and keeps it open until `close`). */
  connect() {
    this.stopped = false;
    if (this.opts.getToken) {
      Promise.resolve(this.opts.getToken()).then(
        (token) => {
          if (this.stopped) return;
          // No token (a server with auth off): none is sent.
          if (token) this.opts.auth.token = token;
          else delete this.opts.auth.token;
          this.open();
        },
        (e) => {
          this.opts.onError(e);
          this.onClosed("no token: " + (e && e.message));
        },
      );
    } else {
      this.open();
    }
  }

  open() {
    const ws = new this.WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.send(OP.AUTH, JSON.stringify(this.opts.auth));
    ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      let frames;
      try {
        frames = decode(ev.data);
      } catch (e) {
        this.opts.onError(e);
        ws.close(1002);
        return;
      }
      for (const f of frames) this.onFrame(f);
    };
    ws.onerror = () => this.opts.onError(new Error("websocket error"));
    ws.onclose = (ev) => {
      if (this.ws === ws) this.onClosed(ev.reason || "closed (" + ev.code + ")");
    };
  }

  onFrame(f) {
    switch (f.op) {
      case OP.AUTH_REPLY:
        this.authed = true;
        this.opens += 1;
        this.backoff = this.opts.minBackoffMs;
        this.heartbeat();
        clearInterval(this.timer);
        this.timer = setInterval(() => this.heartbeat(), this.opts.heartbeatMs);
        if (this.v2) {
          for (const room of this.rooms.keys()) this.sendJoin(room);
        }
        this.opts.onOpen();
        break;
      case OP.HEARTBEAT_REPLY:
        if (!this.v2 && f.body.length >= 4) {
          this.opts.onRoomCount(new DataView(f.body.buffer, f.body.byteOffset).getUint32(0));
        }
        break;
      case OP.DISCONNECT:
        this.lastReason = text.decode(f.body);
        if (this.lastReason.startsWith("replaced")) this.stopped = true;
        break;
      case OP.JOIN_REPLY:
        this.onJoinReply(JSON.parse(text.decode(f.body)));
        break;
      case OP.PUSH:
        this.onV2Push(f.body);
        break;
      case OP.ERROR: {
        const e = Object.assign(new Error("volley error"), JSON.parse(text.decode(f.body)));
        const p = this.pending.get(f.seq);
        if (p) {
          this.pending.delete(f.seq);
          p.reject(e);
        } else {
          this.opts.onError(e);
        }
        break;
      }
      case OP.PUBLISH_REPLY: {
        const p = this.pending.get(f.seq);
        if (p) {
          this.pending.delete(f.seq);
          p.resolve(JSON.parse(text.decode(f.body)));
        }
        break;
      }
      case OP.REFRESH:
        if (this.opts.getToken) {
          Promise.resolve(this.opts.getToken()).then(
            (token) => {
              this.opts.auth.token = token;
              this.send(OP.TOKEN, JSON.stringify({ token }));
            },
            (e) => this.opts.onError(e),
          );
        }
        break;
      case OP.PRESENCE:
        this.opts.onPresence(JSON.parse(text.decode(f.body)));
        break;
      case OP.SEND_REPLY: case OP.CHANGE_ROOM_REPLY: case OP.SUB_REPLY: case OP.UNSUB_REPLY:
      case OP.LEAVE_REPLY: case OP.ACK_REPLY: case OP.READ_REPLY: case OP.TOKEN_REPLY:
        break;
      default:
        if (!this.v2) this.opts.onPush(f.op, f.body, text.decode(f.body), null);
    }
  }

  onJoinReply(r) {
    const pos = this.rooms.get(r.room);
    if (!pos) return; // left meanwhile
    if (r.pattern) {
      pos.joined = true;
      this.opts.onJoin(r.room, r);
      return;
    }
    // A first join, a resume that could not be served, or a new epoch:
    // the stream goes on from where the room is now.
    if (pos.epoch !== r.epoch || r.recovered === false) {
      pos.offset = r.offset;
      pos.epoch = r.epoch;
    }
    pos.joined = true;
    this.opts.onJoin(r.room, r);
  }

  onV2Push(body) {
    let p;
    try {
      p = decodePush(body);
    } catch (e) {
      this.opts.onError(e);
      return;
    }
    const m = p.meta;
    if (m.kind === KIND.ROOM) {
      // A room joined by name keeps its place; one reached through a
      // pattern is passed on as it comes.
      const pos = this.rooms.get(m.room);
      if (pos) {
        if (pos.epoch === m.epoch && m.offset <= pos.offset) return; // seen
        pos.offset = m.offset;
        pos.epoch = m.epoch;
      }
    }
    this.opts.onPush(p.op, p.payload, text.decode(p.payload), m);
    if (m.kind === KIND.USER) {
      // Built by hand: the id passes 2^53, which JSON.stringify of a
      // Number would round.
      this.send(OP.ACK, '{"ids":[' + m.offset.toString() + "]}");
    }
  }

  onClosed(why) {
    for (const p of this.pending.values()) p.reject(new Error("connection closed before the reply"));
    this.pending.clear();
    clearInterval(this.timer);
    this.timer = null;
    this.authed = false;
    for (const pos of this.rooms.values()) pos.joined = false;
    this.opts.onClose(this.lastReason || why);
    this.lastReason = null;
    if (this.stopped) return;
    const wait = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, this.opts.maxBackoffMs);
    this.retry = setTimeout(() => this.connect(), wait);
  }

  /** Sends one frame; returns false when not connected. */
  send(op, body) {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    this.seq = (this.seq + 1) >>> 0;
    this.ws.send(encode(op, this.seq, body, this.opts.version));
    return true;
  }

  /** A heartbeat now (also done every heartbeatMs); version 1's reply
   *  carries the room's online count. */
  heartbeat() {
    return this.send(OP.HEARTBEAT, "");
  }

  sendJoin(room) {
    const pos = this.rooms.get(room);
    const body = pos && pos.epoch ? { room, offset: pos.offset, epoch: pos.epoch } : { room };
    if (pos && pos.presence) body.presence = true;
    return this.send(OP.JOIN, JSON.stringify(body));
  }

  /** Version 2: joins `room` (kept across reconnects). With `from`
   *  ({offset, epoch}, e.g. from GET /v1/history or an earlier session),
   *  the join resumes: what came after `from.offset` is replayed first.
   *  `opts.presence`: onPresence gets the room's joins, leaves and count
   *  (at most once a second). A pattern (`live://*`, `chat/>`) subscribes
   *  to every matching room. */
  join(room, from, opts) {
    if (!this.rooms.has(room)) {
      this.rooms.set(room, {
        offset: from ? from.offset : 0,
        epoch: from ? from.epoch : null,
        joined: false,
        presence: !!(opts && opts.presence),
      });
    }
    return this.authed ? this.sendJoin(room) : false;
  }

  /** Version 2: publishes `payload` (string or Uint8Array) to `room` with
   *  business operation `op`, where the token allows. Resolves with the
   *  server's reply ({room, offset, epoch, duplicate}); rejects with the
   *  op 50 error ({code, reason, message}: forbidden, rate_limited,
   *  payload_too_large...) or when the connection drops first. `id`, if
   *  given, makes a retry harmless (delivered once). */
  publish(room, op, payload, id) {
    const r = utf8.encode(room);
    const i = utf8.encode(id || "");
    const p = typeof payload === "string" ? utf8.encode(payload) : payload || new Uint8Array(0);
    const body = new Uint8Array(8 + r.length + i.length + p.length);
    const v = new DataView(body.buffer);
    v.setUint32(0, op);
    v.setUint16(4, r.length);
    v.setUint16(6, i.length);
    body.set(r, 8);
    body.set(i, 8 + r.length);
    body.set(p, 8 + r.length + i.length);
    return new Promise((resolve, reject) => {
      if (!this.send(OP.PUBLISH, body)) {
        reject(new Error("not connected"));
        return;
      }
      this.pending.set(this.seq, { resolve, reject });
    });
  }

  /** Version 2: leaves `room`. */
  leave(room) {
    this.rooms.delete(room);
    return this.send(OP.LEAVE, JSON.stringify({ room }));
  }

  /** Version 2: marks `room` read up to `offset` for the user (all its
   *  devices); the server answers with the unread count. */
  markRead(room, offset) {
    return this.send(OP.READ, JSON.stringify({ room, offset }));
  }

  /** Version 1: moves to another room (kept across reconnects); "" leaves. */
  joinRoom(room) {
    this.opts.auth.room_id = room;
    return this.send(OP.CHANGE_ROOM, room);
  }

  /** Closes for good (op 6, then the WebSocket close handshake). */
  close() {
    this.stopped = true;
    clearTimeout(this.retry);
    if (this.ws && this.ws.readyState === OPEN) {
      this.send(OP.DISCONNECT, "");
      this.ws.close(1000);
    }
  }
}

VolleyClient.OP = OP;
VolleyClient.KIND = KIND;
VolleyClient.encode = encode;
VolleyClient.decode = decode;
VolleyClient.decodePush = decodePush;

export { OP, KIND, encode, decode, decodePush };
export default VolleyClient;
