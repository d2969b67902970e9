// A client that talks to pb's HTTP API the way Port Daddy's JavaScript SDK
// (lib/client.js) talks to Port Daddy: node:http, every request with
// `Content-Type: application/json` and `X-Pid: <its own pid>`, bodies with
// a Content-Length; claim is POST /claim {id, pid, ...}, release is
// DELETE /release {id}. Written from that SDK's documented behaviour.
//
// Usage: node port_daddy_sdk.mjs http://127.0.0.1:PORT ID
// Claims ID, claims it again, lists and gets it, serves HTTP on the port it
// got, fetches from that server, releases, and prints one JSON summary.

import http from 'node:http';

const [base, id] = process.argv.slice(2);
const url = new URL(base);

function request(method, path, body) {
  const headers = { 'Content-Type': 'application/json', 'X-Pid': String(process.pid) };
  const json = body !== undefined ? JSON.stringify(body) : null;
  if (json) headers['Content-Length'] = String(Buffer.byteLength(json));
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method, path, headers, timeout: 5000 },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const data = JSON.parse(Buffer.concat(chunks).toString());
          if (res.statusCode < 200 || res.statusCode >= 300) {
            reject(new Error(`${res.statusCode} ${data.error}`));
          } else {
            resolve(data);
          }
        });
      },
    );
    req.on('error', reject);
    if (json) req.write(json);
    req.end();
  });
}

const claim = await request('POST', '/claim', { id, pid: process.pid });
const again = await request('POST', '/claim', { id, pid: process.pid });
const list = await request('GET', `/services?pattern=${encodeURIComponent(id.split(':')[0] + ':*')}`);
const one = await request('GET', `/services/${encodeURIComponent(id)}`);

// The app serves on the port it was given (Node binds with SO_REUSEADDR,
// over the broker's placeholder).
const server = http.createServer((_, res) => res.end('served by the sdk app'));
await new Promise((resolve) => server.listen(claim.port, '127.0.0.1', resolve));
const served = await new Promise((resolve, reject) => {
  http.get(`http://127.0.0.1:${claim.port}/`, (res) => {
    let text = '';
    res.on('data', (c) => (text += c));
    res.on('end', () => resolve(text));
  }).on('error', reject);
});
server.close();

const released = await request('DELETE', '/release', { id });
console.log(JSON.stringify({ claim, again, list, one, served, released }));
