// Opens a vite dev server through pb's proxy by its name in Debian's
// Chromium, edits a source file and checks that the change arrives by
// hot module replacement (no reload) over the WebSocket, which also goes
// through the proxy. For tests/tests/proxy.rs. Usage:
//   node vite_hmr.mjs URL FILE
// URL is the named URL (http://web.vite.localhost:PORT/), FILE vite-app's
// message.js. Prints a JSON report and exits 0 when it all held.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";

const [url, file] = process.argv.slice(2);
const WAIT = 30_000;
const browser = await chromium.launch({
  executablePath: process.env.PB_CHROMIUM || "/usr/bin/chromium",
  timeout: 60_000,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const report = { sockets: [] };
try {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(WAIT);
  page.on("websocket", (ws) => report.sockets.push(ws.url()));
  let loads = 0;
  page.on("load", () => loads++);
  await page.goto(url);
  await page.waitForFunction(() => document.querySelector("#msg")?.textContent === "hmr-before");
  // The HMR socket is open before the edit (vite logs "[vite] connected.").
  await page.waitForFunction(() => performance.getEntriesByType("resource").some((e) => e.name.includes("@vite/client")));
  await page.waitForEvent("console", { predicate: (m) => m.text().includes("[vite] connected"), timeout: WAIT })
    .catch(() => {});
  await page.evaluate(() => { window.__kept = 42; });
  writeFileSync(file, 'export const message = "hmr-after";\n');
  await page.waitForFunction(() => document.querySelector("#msg")?.textContent === "hmr-after");
  report.kept = await page.evaluate(() => window.__kept);
  report.loads = loads;
  report.origin = await page.evaluate(() => location.origin);
  assert.equal(report.kept, 42, "the page was not reloaded");
  assert.equal(loads, 1, "one load only");
  const host = new URL(url).host;
  assert.ok(report.sockets.some((s) => new URL(s).host === host), `a WebSocket to ${host}`);
  report.ok = true;
  console.log(JSON.stringify(report));
} catch (e) {
  report.error = String(e);
  console.log(JSON.stringify(report));
  process.exitCode = 1;
} finally {
  await browser.close();
}
