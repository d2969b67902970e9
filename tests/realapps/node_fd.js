// Plain Node http server serving a listening socket inherited as fd 3
// (systemd / socket-activation style).
const http = require("http");

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end("nodefd\n");
});

server.listen({ fd: 3 }, () => {
  console.log("nodefd listening on fd 3");
});
