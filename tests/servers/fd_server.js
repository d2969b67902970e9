// An HTTP server that serves only on the sockets it inherits through the
// systemd LISTEN_FDS protocol; it never binds anything itself.
const http = require('http');

if (process.env.LISTEN_PID !== String(process.pid)) {
  console.error('LISTEN_PID is not our pid');
  process.exit(3);
}
const n = Number(process.env.LISTEN_FDS);
const first = Number(process.env.LISTEN_FDS_FIRST_FD || 3);
for (let fd = first; fd < first + n; fd++) {
  http
    .createServer((req, res) => {
      const family = req.socket.remoteFamily === 'IPv6' ? 'ipv6' : 'ipv4';
      res.end(`node ${family} port=${process.env.PORT}\n`);
    })
    .listen({ fd });
}
console.log('serving');
