// volley.js under Node, against a running volley: node test/node.test.mjs
// ws://127.0.0.1:3102/sub 127.0.0.1:3111 (tests/node_client.rs starts the
// server and runs this). Joins a room, receives a push published through the
// HTTP API, publishes one itself (op 52) and receives it, and prints "ok".
// WebSocket: Node's own (22, or 20 with --experimental-websocket), else the
// ws package (npm install in web/).
import { VolleyClient, KIND } from "../volley.js";

const [url, api] = process.argv.slice(2);
const WebSocket = globalThis.WebSocket || (await import("ws")).WebSocket;
const room = "live://node";
const fail = (why) => {
  console.error("FAIL: " + why);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 10000).unref();

const got = [];
let resolveGot;
const wait = (n) => new Promise((r) => { resolveGot = () => got.length >= n && r(); resolveGot(); });

const c = new VolleyClient(url, {
  WebSocket,
  auth: { mid: 7, platform: "node" },
  onOpen: () => c.join(room),
  onJoin: async (r, reply) => {
    if (r !== room || typeof reply.offset !== "number") fail("join reply " + JSON.stringify(reply));
    const res = await fetch(`http://${api}/v1/push/room`, {
      method: "POST",
      body: JSON.stringify({ room, op: 1000, body: "hello from http" }),
    });
    if (!res.ok) fail("publish answered " + res.status);
  },
  onPush: (op, body, text, meta) => {
    if (meta.kind !== KIND.ROOM || meta.room !== room || op !== 1000) fail("push " + JSON.stringify(meta));
    got.push([meta.offset, text]);
    if (resolveGot) resolveGot();
  },
  onError: (e) => fail("error " + (e.reason || e.message)),
});
c.connect();

await wait(1);
const reply = await c.publish(room, 1000, "from node");
if (reply.room !== room || reply.offset !== 2 || reply.duplicate !== false) fail("publish reply " + JSON.stringify(reply));
await wait(2);
const want = JSON.stringify([[1, "hello from http"], [2, "from node"]]);
if (JSON.stringify(got) !== want) fail("got " + JSON.stringify(got));
c.close();
console.log("ok");
process.exit(0);
