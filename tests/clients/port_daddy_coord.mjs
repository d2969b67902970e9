// A client that coordinates through pb's HTTP API the way Port Daddy's
// JavaScript SDK talks to Port Daddy: node:http, every request with
// `Content-Type: application/json` and `X-Pid: <its own pid>` (and
// `X-Agent-Id` once it is an agent), bodies with a Content-Length.
// Written from that SDK's documented behaviour and Port Daddy's routes.
//
// Usage: node port_daddy_coord.mjs http://127.0.0.1:PORT AGENT
// Registers AGENT, sends a heartbeat, takes lock `AGENT-lock` as the agent,
// subscribes to `build:*` (SSE), publishes on build:AGENT and reads it
// back from the stream, releases the lock, unregisters, and prints one
// JSON summary.

import http from 'node:http';

const [base, agent] = process.argv.slice(2);
const url = new URL(base);

function headers(extra) {
  return { 'Content-Type': 'application/json', 'X-Pid': String(process.pid), ...extra };
}

function request(method, path, body, extra = {}) {
  const h = headers(extra);
  const json = body !== undefined ? JSON.stringify(body) : null;
  if (json) h['Content-Length'] = String(Buffer.byteLength(json));
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method, path, headers: h, timeout: 10000 },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const data = JSON.parse(Buffer.concat(chunks).toString());
          if (res.statusCode < 200 || res.statusCode >= 300) {
            reject(new Error(`${method} ${path}: ${res.statusCode} ${data.code} ${data.error}`));
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

// Opens an SSE stream and resolves each parsed event in turn.
function subscribe(path) {
  const events = [];
  const waiting = [];
  let buf = '';
  const req = http.get(
    { host: url.hostname, port: url.port, path, headers: headers({ Accept: 'text/event-stream' }) },
    (res) => {
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const e = { id: null, event: 'message', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) e.id = Number(line.slice(4));
            else if (line.startsWith('event: ')) e.event = line.slice(7);
            else if (line.startsWith('data: ')) e.data += line.slice(6);
          }
          if (block.startsWith(':')) continue; // a heartbeat
          const w = waiting.shift();
          if (w) w(e);
          else events.push(e);
        }
      });
    },
  );
  const next = () =>
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no event within 10 s')), 10000);
      const done = (e) => {
        clearTimeout(t);
        resolve(e);
      };
      const e = events.shift();
      if (e) done(e);
      else waiting.push(done);
    });
  return { next, close: () => req.destroy() };
}

const registered = await request('POST', '/agents', { id: agent, name: 'sdk agent', type: 'cli', maxLocks: 5 });
const heartbeat = await request('POST', `/agents/${agent}/heartbeat`);
const as = { 'X-Agent-Id': agent };
const lock = await request('POST', `/locks/${agent}-lock`, { ttl: 60000 }, as);
const sub = subscribe('/msg/build:*/subscribe');
const connected = await sub.next();
const published = await request('POST', `/msg/build:${agent}`, { status: 'ready', port: 3100 }, as);
const received = await sub.next();
sub.close();
const unlocked = await request('DELETE', `/locks/${agent}-lock`, undefined, as);
const unregistered = await request('DELETE', `/agents/${agent}`);
console.log(JSON.stringify({ registered, heartbeat, lock, connected, published, received, unlocked, unregistered }));
