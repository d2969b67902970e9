// A Node server with its port hard-coded, as many dev servers have: it
// knows nothing of pb, LISTEN_FDS or $PORT. Usage: node hardcoded.js PORT [HOST]
const http = require('http');

const port = Number(process.argv[2]);
const host = process.argv[3];
const server = http.createServer((req, res) => {
  const family = req.socket.localFamily === 'IPv6' ? 'ipv6' : 'ipv4';
  res.end(`node port=${server.address().port} local=${family}\n`);
});
const ready = () => console.log(`listening ${JSON.stringify(server.address())}`);
if (host === undefined) server.listen(port, ready);
else server.listen(port, host, ready);
