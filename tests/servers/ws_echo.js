// A WebSocket echo server on $PORT (the `ws` package from tests/realapps):
// every message comes back as it was; a client that says "flood" gets 1 MiB
// messages for as long as the socket takes them.
const path = require("path");
const { WebSocketServer } = require(path.join(__dirname, "../realapps/node_modules/ws"));

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.env.PORT) }, () => {
  console.log(`ws echo on ${wss.address().port}`);
});
wss.on("connection", (ws, req) => {
  ws.send(JSON.stringify({ hello: true, host: req.headers.host, xfp: req.headers["x-forwarded-proto"] }));
  ws.on("message", (data, isBinary) => {
    if (!isBinary && data.toString() === "flood") {
      const chunk = Buffer.alloc(1 << 20, 120);
      const more = () => {
        // Only while the socket drains: the proxy's buffers, not ours, are
        // what the test watches.
        while (ws.readyState === ws.OPEN && ws.bufferedAmount < 8 << 20) ws.send(chunk);
        if (ws.readyState === ws.OPEN) setTimeout(more, 5);
      };
      more();
      return;
    }
    ws.send(data, { binary: isBinary });
  });
});
