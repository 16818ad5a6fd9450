// volley.js: a dependency-free browser client for volley's protocol over
// WebSocket (docs/PROTOCOL.md). One protocol frame per binary message:
//
//   u32 packet length (16 + body) | u16 header length (16) | u16 version (1)
//   | u32 operation | u32 sequence | body
//
// Usage:
//   const c = new VolleyClient("ws://host:3102/sub", {
//     auth: { mid: 123, room_id: "live://1000", accepts: [1000] },
//     onPush: (op, body, text) => ..., onRoomCount: (n) => ...,
//     onOpen: () => ..., onClose: (why) => ...,
//   });
//   c.connect(); c.joinRoom("live://7"); c.close();
//
// It authenticates on every (re)connect, heartbeats (op 2, whose reply carries
// the room's online count), answers nothing else (the browser answers
// WebSocket pings), and reconnects with exponential backoff and jitter unless
// closed by the caller or replaced by a newer connection with the same key.
(function (root) {
  "use strict";

  const OP = {
    HEARTBEAT: 2, HEARTBEAT_REPLY: 3, SEND: 4, SEND_REPLY: 5, DISCONNECT: 6,
    AUTH: 7, AUTH_REPLY: 8, RAW: 9, CHANGE_ROOM: 12, CHANGE_ROOM_REPLY: 13,
    SUB: 14, SUB_REPLY: 15, UNSUB: 16, UNSUB_REPLY: 17,
  };
  const HEADER = 16;
  const utf8 = new TextEncoder();
  const text = new TextDecoder();

  /** One frame as an ArrayBuffer; `body` is a string or a Uint8Array. */
  function encode(op, seq, body) {
    const b = typeof body === "string" ? utf8.encode(body) : body || new Uint8Array(0);
    const buf = new ArrayBuffer(HEADER + b.length);
    const v = new DataView(buf);
    v.setUint32(0, HEADER + b.length);
    v.setUint16(4, HEADER);
    v.setUint16(6, 1);
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

  class VolleyClient {
    constructor(url, opts) {
      this.url = url;
      this.opts = Object.assign({
        auth: {},
        heartbeatMs: 30000,
        minBackoffMs: 500,
        maxBackoffMs: 30000,
        onPush() {}, onRoomCount() {}, onOpen() {}, onClose() {}, onError() {},
      }, opts || {});
      this.ws = null;
      this.seq = 0;
      this.backoff = this.opts.minBackoffMs;
      this.timer = null;
      this.retry = null;
      this.stopped = false;
      this.authed = false;
    }

    /** Opens the connection (and keeps it open until `close`). */
    connect() {
      this.stopped = false;
      const ws = new WebSocket(this.url);
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
      ws.onclose = (ev) => this.onClosed(ev.reason || "closed (" + ev.code + ")");
    }

    onFrame(f) {
      switch (f.op) {
        case OP.AUTH_REPLY:
          this.authed = true;
          this.backoff = this.opts.minBackoffMs;
          this.heartbeat();
          clearInterval(this.timer);
          this.timer = setInterval(() => this.heartbeat(), this.opts.heartbeatMs);
          this.opts.onOpen();
          break;
        case OP.HEARTBEAT_REPLY:
          if (f.body.length >= 4) {
            this.opts.onRoomCount(new DataView(f.body.buffer, f.body.byteOffset).getUint32(0));
          }
          break;
        case OP.DISCONNECT:
          this.lastReason = text.decode(f.body);
          if (this.lastReason.startsWith("replaced")) this.stopped = true;
          break;
        case OP.SEND_REPLY: case OP.CHANGE_ROOM_REPLY: case OP.SUB_REPLY: case OP.UNSUB_REPLY:
          break;
        default:
          this.opts.onPush(f.op, f.body, text.decode(f.body));
      }
    }

    onClosed(why) {
      clearInterval(this.timer);
      this.timer = null;
      this.authed = false;
      this.opts.onClose(this.lastReason || why);
      this.lastReason = null;
      if (this.stopped) return;
      const wait = this.backoff * (0.5 + Math.random() / 2);
      this.backoff = Math.min(this.backoff * 2, this.opts.maxBackoffMs);
      this.retry = setTimeout(() => this.connect(), wait);
    }

    /** Sends one frame; returns false when not connected. */
    send(op, body) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
      this.seq = (this.seq + 1) >>> 0;
      this.ws.send(encode(op, this.seq, body));
      return true;
    }

    /** Asks for the room's online count now (also done every heartbeatMs). */
    heartbeat() {
      return this.send(OP.HEARTBEAT, "");
    }

    /** Moves to another room (kept across reconnects); "" leaves the room. */
    joinRoom(room) {
      this.opts.auth.room_id = room;
      return this.send(OP.CHANGE_ROOM, room);
    }

    /** Closes for good (op 6, then the WebSocket close handshake). */
    close() {
      this.stopped = true;
      clearTimeout(this.retry);
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.send(OP.DISCONNECT, "");
        this.ws.close(1000);
      }
    }
  }

  VolleyClient.OP = OP;
  VolleyClient.encode = encode;
  VolleyClient.decode = decode;
  root.VolleyClient = VolleyClient;
})(typeof window !== "undefined" ? window : globalThis);
