// Plain Node http server listening on $PORT (default 3000).
const http = require("http");

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain" });
  res.end(`nodeport pid=${process.pid}\n`);
});

server.listen(process.env.PORT || 3000, () => {
  console.log(`nodeport pid=${process.pid} listening on port ${server.address().port}`);
});
