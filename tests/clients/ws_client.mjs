// Talks to a WebSocket server through pb's proxy: resolves every name to
// 127.0.0.1 (Node's resolver does not know *.localhost), sends each
// argument after the URL as a message, and prints a JSON summary: what
// came back, and how the close went.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const WebSocket = require(path.join(here, "../realapps/node_modules/ws"));

const [url, ...messages] = process.argv.slice(2);
const lookup = (host, opts, cb) =>
  opts && opts.all ? cb(null, [{ address: "127.0.0.1", family: 4 }]) : cb(null, "127.0.0.1", 4);
const ws = new WebSocket(url, { lookup });
const got = [];
const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timeout", got }));
  process.exit(1);
}, 10000);
ws.on("message", (data) => {
  got.push(data.toString());
  // The greeting, then one echo per message sent.
  if (got.length === messages.length + 1) ws.close(1000, "done");
});
ws.on("open", () => messages.forEach((m) => ws.send(m)));
ws.on("close", (code, reason) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ got, code, reason: reason.toString() }));
});
ws.on("error", (e) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ error: String(e), got }));
  process.exit(1);
});
