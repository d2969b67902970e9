// An agent that uses pb through MCP over the streamable HTTP transport, with
// the official TypeScript SDK (@modelcontextprotocol/sdk, from npm, installed
// by tests/realapps/install.sh): it connects to $PB_MCP_URL, sending the
// headers of $PB_MCP_HEADERS (a JSON object) with every request, and then
// reads one JSON line per step from stdin, as tests/clients/mcp_agent.py
// does: {"tool": NAME, "args": {...}} (with "progress": true to collect
// progress notifications; with "background": true, not waited for: prints
// {"started": NAME}, then the answer when it comes), {"cancel": true}
// (aborts the last background call: the SDK sends notifications/cancelled;
// prints {"cancelled": true}), or {"list": true}. It prints one JSON line per
// answer: {"error": bool, "result": ..., "progress": [...]}, or
// {"protocol_error": CODE, "message": ..., "data": ...}. A connection the
// broker refuses prints {"connect_error": MESSAGE} and ends it. An empty
// line or end of input ends it.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(new URL("../realapps/package.json", import.meta.url));
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");
const { McpError } = require("@modelcontextprotocol/sdk/types.js");

const emit = (v) => process.stdout.write(JSON.stringify(v) + "\n");
const headers = JSON.parse(process.env.PB_MCP_HEADERS || "{}");

const client = new Client({ name: "pb-test-agent", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(process.env.PB_MCP_URL), {
  requestInit: { headers },
});
try {
  await client.connect(transport);
} catch (e) {
  emit({ connect_error: String(e && e.message ? e.message : e) });
  process.exit(0);
}
emit({ server: client.getServerVersion().name });

async function call(step, signal) {
  const progress = [];
  const options = step.progress
    ? { onprogress: (p) => progress.push(p.message), timeout: 60000, resetTimeoutOnProgress: true, signal }
    : { timeout: 60000, signal };
  try {
    const r = await client.callTool({ name: step.tool, arguments: step.args || {} }, undefined, options);
    emit({ error: Boolean(r.isError), result: r.structuredContent ?? null, progress });
  } catch (e) {
    if (e instanceof McpError) {
      emit({ protocol_error: e.code, message: e.message, data: e.data ?? null });
    } else {
      emit({ protocol_error: -1, message: String(e), data: null });
    }
  }
}

let last = null;
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) break;
  const step = JSON.parse(line);
  if (step.list) {
    const { tools } = await client.listTools();
    emit({ tools: tools.map((t) => t.name) });
  } else if (step.background) {
    last = new AbortController();
    call(step, last.signal);
    emit({ started: step.tool });
  } else if (step.cancel) {
    last?.abort("the test cancels it");
    emit({ cancelled: true });
  } else {
    await call(step);
  }
}
await client.close();
process.exit(0);
