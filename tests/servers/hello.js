// The proxy bench's backend (tests/benches/proxy.rs): Node's http server on
// $PORT, answering every request with the same small body and its length.
const http = require("http");
const body = Buffer.from("hello from node\n");
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": body.length });
  res.end(body);
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.env.PORT), "127.0.0.1", () => {
  console.log(`hello listening on port ${server.address().port}`);
});
