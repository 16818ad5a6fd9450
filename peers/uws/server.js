// uWebSockets.js topic broadcast, the peer scripts/bench_peers.sh measures
// volley against (FIELD-NOTES: the strongest one found on this host).
// Subscribers send "S <topic>" and are subscribed; a publisher sends
// "P <topic> <payload>" and the server publishes <payload> to the topic with
// uWS's built-in publish. One Node thread, no compression, backpressure
// limit far above anything a run queues (loss shows as loss, not a close).
// Usage: node server.js [PORT=3304]
"use strict";
const uWS = require("uWebSockets.js");
const port = Number(process.argv[2] || 3304);
const app = uWS.App();
app.ws("/*", {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024,
  maxBackpressure: 1024 * 1024 * 1024,
  idleTimeout: 0,
  message: (ws, message, isBinary) => {
    const text = Buffer.from(message).toString();
    if (text.startsWith("S ")) {
      ws.subscribe(text.slice(2).trim());
    } else if (text.startsWith("P ")) {
      const sp = text.indexOf(" ", 2);
      if (sp > 0) app.publish(text.slice(2, sp), text.slice(sp + 1), isBinary);
    }
  },
});
app.listen("127.0.0.1", port, (token) => {
  if (!token) {
    console.error("cannot listen on " + port);
    process.exit(1);
  }
  console.log("uws listening on " + port);
});
