// Drives Debian's Chromium through one dashboard scenario, for
// tests/tests/dashboard.rs, which starts the broker and checks what the
// CLI sees afterwards. Usage: node dashboard.mjs SCENARIO, with
//   PB_BIN        the pb binary, run with this process's environment
//                 (the test broker's PB_HOME and so on)
//   PB_LOGIN_URL  a one-time login URL from `pb dashboard --print-url`
//   PB_CHROMIUM   the browser (default /usr/bin/chromium)
// and the scenario's own variables. It exits 0 when the scenario held,
// and otherwise prints why and exits 1. Every wait has a time limit.

import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import net from "node:net";

const WAIT = 15_000;
const scenario = process.argv[2];
const loginUrl = process.env.PB_LOGIN_URL;
const base = new URL(loginUrl).origin;

/** Runs the pb CLI against the test's broker; returns its stdout. */
function pb(...args) {
  return execFileSync(process.env.PB_BIN, args, { encoding: "utf8", timeout: 20_000 });
}

const browser = await chromium.launch({
  executablePath: process.env.PB_CHROMIUM || "/usr/bin/chromium",
  timeout: 60_000,
  // Headless, and nothing that reaches beyond this machine.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
context.setDefaultTimeout(WAIT);
const page = await context.newPage();
const problems = [];
/** Console errors a scenario caused on purpose (a refused request). */
const expected = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  if (m.type() !== "error") return;
  const i = expected.findIndex((re) => re.test(m.text()));
  if (i >= 0) expected.splice(i, 1);
  else problems.push(`console error: ${m.text()}`);
});

const section = (id) => page.locator(`section#${id}`);
const row = (id, key, value) => section(id).locator(`tr[data-${key}="${value}"]`);

/** Logs in with the one-time URL and waits until both streams are live. */
async function logIn() {
  await page.goto(loginUrl);
  assert.equal(new URL(page.url()).pathname, "/", "the login goes on to the dashboard");
  assert.equal(new URL(page.url()).search, "", "the code leaves the address bar");
  await page.locator("#live", { hasText: /^Live$/ }).waitFor();
}

/**
 * Runs in the page: every visible element with text of its own whose
 * contrast against its effective background is under WCAG AA (4.5:1, or
 * 3:1 for large text), as "text (ratio)".
 */
function lowContrast() {
  const rgba = (c) => (c.match(/[\d.]+/g) ?? []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const st = getComputedStyle(el);
    if (st.visibility === "hidden") continue;
    const a = lum(rgba(st.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(st.fontSize), bold = Number(st.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) out.push(`${el.textContent.trim().slice(0, 40)} (${ratio.toFixed(2)})`);
  }
  return out;
}

const scenarios = {
  // A claim made in a terminal shows up without a reload.
  async claim_appears() {
    await logIn();
    await section("services").getByText("No services yet").waitFor();
    const navigations = [];
    page.on("framenavigated", (f) => f === page.mainFrame() && navigations.push(f.url()));
    const port = pb("claim", "shop:web", "-q").trim();
    const r = row("services", "service", "shop:web");
    await r.waitFor();
    assert.match(await r.innerText(), new RegExp(`\\b${port}\\b`), "the row shows the port the CLI got");
    assert.match(await r.innerText(), /reserved/, "claimed, not yet served");
    // Its named URL through the proxy, as a link.
    const proxy = JSON.parse(pb("-j", "status")).proxy.http_port;
    const named = r.locator("a.named");
    assert.equal(await named.getAttribute("href"), `http://web.shop.localhost:${proxy}/`);
    assert.equal(await named.innerText(), `web.shop.localhost:${proxy}`);
    assert.deepEqual(navigations, [], "no reload");
  },

  // Releasing from the page, by keyboard, asks first and then releases.
  async release_from_ui() {
    await logIn();
    const r = row("services", "service", "shop:web");
    await r.waitFor();
    const release = page.getByRole("button", { name: "Release shop:web", exact: true });
    const deletes = [];
    page.on("request", (q) => q.method() === "DELETE" && deletes.push(q.url()));
    // Refusing the question sends nothing.
    page.once("dialog", (d) => d.dismiss());
    await release.focus();
    await page.keyboard.press("Enter");
    await page.waitForTimeout(500);
    assert.deepEqual(deletes, [], "dismissed: no request");
    assert.equal(await r.count(), 1, "dismissed: still there");
    page.once("dialog", (d) => {
      assert.match(d.message(), /Release shop:web/);
      d.accept();
    });
    await release.focus();
    await page.keyboard.press("Enter");
    await r.waitFor({ state: "detached" });
    assert.equal(deletes.length, 1, "one release request");
    assert.match(deletes[0], /\/release\/shop%3Aweb$/);
    // The other service stays.
    await row("services", "service", "shop:db").waitFor();
  },

  // A message published in a terminal appears in the live tail, and one
  // published from the page reaches a CLI subscriber (checked by the test).
  async tail_shows_publish() {
    await logIn();
    const tail = page.getByRole("list", { name: "Live tail" });
    await tail.getByText("Waiting for messages").waitFor();
    pb("pub", "build:status", '{"ok":true,"commit":"c0ffee42"}');
    await tail.locator("li", { hasText: "c0ffee42" }).waitFor();
    assert.match(await tail.locator("li").first().innerText(), /build:status/);
    // The channel list follows.
    await page.getByRole("button", { name: "Tail build:status" }).waitFor();
    // Publishing from the page.
    await page.getByLabel("Channel", { exact: true }).fill("deploy:done");
    await page.getByLabel("Message (JSON, or text)").fill('{"from":"the dashboard"}');
    await page.getByRole("button", { name: "Publish" }).click();
    await tail.locator("li", { hasText: "the dashboard" }).waitFor();
    // Bad input is refused with the broker's error, and the form is kept.
    expected.push(/status of 400/);
    await page.getByLabel("Channel", { exact: true }).fill("bad channel name!");
    await page.getByLabel("Message (JSON, or text)").fill("hello");
    await page.getByRole("button", { name: "Publish" }).click();
    await page.getByRole("alert").filter({ hasText: /invalid_name|invalid/ }).waitFor();
    assert.equal(await page.getByLabel("Message (JSON, or text)").inputValue(), "hello");
  },

  // A stack (pb up -d, started by the test): its services' states, one
  // service's output followed live, and a restart from the page.
  // A session begun in a terminal shows with its files; its notes follow
  // live, and its owner's death shows it abandoned.
  async sessions_live() {
    await logIn();
    await section("sessions").getByText("No sessions").waitFor();
    const owner = process.env.PB_SESSION_OWNER;
    const id = pb("session", "begin", "fix login", "--dir", "/srv/app", "--files", "/srv/app/src/auth",
      "--pid", owner, "-q").trim();
    const r = row("sessions", "session", id);
    await r.waitFor();
    assert.match(await r.innerText(), /fix login/);
    assert.match(await r.innerText(), /active/);
    await r.locator("code.file", { hasText: /^src\/auth$/ }).waitFor();
    await page.getByRole("button", { name: `Notes of ${id}`, exact: true }).click();
    const notes = page.getByRole("list", { name: `Notes of ${id}` });
    await notes.getByText("No notes yet.").waitFor();
    pb("note", "add", "-s", id, "login form split out");
    await notes.locator("li", { hasText: "login form split out" }).waitFor();
    process.kill(Number(owner), "SIGKILL");
    await section("sessions").locator(`tr[data-session="${id}"][data-state="abandoned"]`).waitFor();
  },

  async stack_live() {
    await logIn();
    const api = row("stacks", "service", "api");
    await api.waitFor();
    await api.locator(".tag", { hasText: "ready" }).waitFor();
    assert.equal((await api.locator("td").nth(3).innerText()).trim(), "0", "no restart yet");
    const navigations = [];
    page.on("framenavigated", (f) => f === page.mainFrame() && navigations.push(f.url()));
    await page.getByRole("button", { name: "Output of shop ticker", exact: true }).click();
    const out = page.getByRole("list", { name: "Output of ticker (shop)" });
    await out.locator("li", { hasText: "tick" }).first().waitFor();
    const first = await out.locator("li").count();
    // New lines arrive as the service prints them.
    await page.waitForFunction((n) => document.querySelectorAll("#stack-log li").length > n, first);
    page.once("dialog", (d) => {
      assert.match(d.message(), /Restart api of shop/);
      d.accept();
    });
    await page.getByRole("button", { name: "Restart shop api", exact: true }).click();
    // The restart comes back as an event: the row follows without a reload.
    await page.waitForFunction(() => {
      const r = document.querySelector('#stacks tr[data-service="api"]');
      return r && /ready/.test(r.innerText) && /\b1\s*$/m.test(r.cells[4].innerText);
    });
    assert.deepEqual(navigations, [], "no reload");
  },

  // A webhook's deliveries, open on the page, follow each attempt.
  async webhook_live() {
    await logIn();
    const hook = page.locator("#webhooks-list details").first();
    await hook.locator("summary").click();
    await hook.getByText("No deliveries yet.").waitFor();
    pb("claim", "shop:hooked");
    const delivered = hook.locator("tbody tr", { hasText: "service.claim" }).filter({ hasText: "delivered" });
    await delivered.waitFor();
    assert.match(await delivered.innerText(), /HTTP 200/);
    // Redraws keep it open: the next one shows too.
    pb("claim", "shop:hooked2");
    await hook.locator("tbody tr", { hasText: "delivered" }).nth(1).waitFor();
  },

  // A process that took its port without pb is shown as foreign; pb's own
  // sockets as brokered.
  async foreign_listener() {
    const foreign = process.env.PB_FOREIGN_PORT;
    const brokered = process.env.PB_BROKERED_PORT;
    await logIn();
    const f = section("listeners").locator(`tr[data-port="${foreign}"]`).first();
    await f.waitFor();
    assert.equal(await f.getAttribute("data-kind"), "foreign");
    assert.match(await f.innerText(), /foreign/);
    assert.match(await f.innerText(), /http\.server/, "with its process");
    const b = section("listeners").locator(`tr[data-port="${brokered}"]`).first();
    await b.waitFor();
    assert.equal(await b.getAttribute("data-kind"), "brokered");
    // A listener that starts while the page is open appears by itself.
    const later = Number(process.env.PB_LATER_PORT);
    const server = net.createServer();
    await new Promise((ok) => server.listen(later, "127.0.0.1", ok));
    const l = section("listeners").locator(`tr[data-port="${later}"]`).first();
    await l.waitFor();
    assert.equal(await l.getAttribute("data-kind"), "foreign");
    assert.match(await l.innerText(), new RegExp(`pid ${process.pid}\\b`));
    server.close();
    await l.waitFor({ state: "detached" });
  },

  // Without a session: the login page, and nothing of the broker's state,
  // even for the broker's own user; a used or wrong code says so.
  async no_login() {
    for (const path of ["/", "/?login=failed"]) {
      await page.goto(base + path);
      await page.getByRole("heading", { name: "Log in to pb" }).waitFor();
      const text = await page.locator("body").innerText();
      assert.ok(!text.includes("secret-service"), "no service is shown");
      assert.equal(await page.locator("#services").count(), 0);
    }
    await page.goto(loginUrl.replace(/code=[0-9a-f]+/, "code=00000000000000000000000000000000"));
    await page.getByRole("alert").filter({ hasText: "wrong, already used or expired" }).waitFor();
    assert.equal(new URL(page.url()).search, "?login=failed");
    // The real code still works after a wrong one, once.
    await logIn();
    await row("services", "service", "secret-service").waitFor();
    const fresh = await context.browser().newContext();
    const other = await fresh.newPage();
    await other.goto(loginUrl);
    await other.getByRole("heading", { name: "Log in to pb" }).waitFor();
    await fresh.close();
  },

  // Usable: every control has a name, the keyboard reaches the actions,
  // both themes apply, and a narrow window needs no sideways scrolling.
  async usable() {
    await logIn();
    await row("services", "service", "shop:web").waitFor();
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll("button, input, select, textarea, a[href]")]
        .filter((el) => {
          const name = el.getAttribute("aria-label") || el.textContent.trim() || [...(el.labels ?? [])].map((l) => l.textContent.trim()).join("");
          return !name;
        })
        .map((el) => el.outerHTML));
    assert.deepEqual(unnamed, [], "controls without an accessible name");
    // Tab from the top reaches the first Release button.
    let reached = false;
    for (let i = 0; i < 40 && !reached; i++) {
      await page.keyboard.press("Tab");
      reached = await page.evaluate(() => document.activeElement?.getAttribute("aria-label") === "Release shop:web");
    }
    assert.ok(reached, "Release is reachable by keyboard");
    // A redraw (another claim arrives) keeps the focus where it was.
    pb("claim", "shop:api");
    await row("services", "service", "shop:api").waitFor();
    assert.equal(
      await page.evaluate(() => document.activeElement?.getAttribute("aria-label")),
      "Release shop:web",
      "focus survives a redraw",
    );
    // Every piece of text meets WCAG AA contrast, in both themes.
    for (const theme of ["light", "dark"]) {
      await page.getByLabel("Theme").selectOption(theme);
      const low = await page.evaluate(lowContrast);
      assert.deepEqual(low, [], `text below AA contrast in the ${theme} theme`);
    }
    const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    await page.getByLabel("Theme").selectOption("dark");
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), "dark");
    const dark = await bg();
    await page.getByLabel("Theme").selectOption("light");
    const light = await bg();
    assert.notEqual(dark, light);
    await page.reload();
    await page.locator("#live", { hasText: /^Live$/ }).waitFor();
    assert.equal(await page.getByLabel("Theme").inputValue(), "light", "the choice is kept");
    for (const width of [1280, 390]) {
      await page.setViewportSize({ width, height: 800 });
      await page.waitForTimeout(200);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      // What sticks out, outermost first, to say where when it fails.
      const wide = overflow <= 0 ? [] : await page.evaluate(() =>
        [...document.querySelectorAll("body *")]
          .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
          // Not inside something that scrolls or clips it (an absolutely
          // positioned element escapes one that is not its containing block).
          .filter((e) => {
            if (["absolute", "fixed"].includes(getComputedStyle(e).position)) return true;
            for (let a = e.parentElement; a; a = a.parentElement) {
              if (["auto", "scroll", "hidden", "clip"].includes(getComputedStyle(a).overflowX)) return false;
            }
            return true;
          })
          .slice(0, 6)
          .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${e.className} (${Math.round(e.getBoundingClientRect().right)}px)`));
      assert.ok(overflow <= 0, `no sideways scrolling at ${width}px (overflow ${overflow}px: ${wide.join(", ")})`);
      await page.getByRole("button", { name: "Release shop:web" }).waitFor({ state: "visible" });
    }
  },

  // The README's picture: the state the test set up, the whole page at 1280
  // pixels wide.
  async screenshot() {
    await logIn();
    await row("services", "service", "shop:web").waitFor();
    await section("locks").locator("tr[data-lock]").first().waitFor();
    await page.getByRole("list", { name: "Live tail" }).locator("li[data-id]").first().waitFor();
    await page.locator("#webhooks-list details summary").first().click();
    await page.locator("#webhooks-list table").waitFor();
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: process.env.PB_SCREENSHOT, fullPage: true });
  },
};

let failed = null;
try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`no scenario ${scenario}; there are ${Object.keys(scenarios).join(", ")}`);
  await run();
  if (problems.length) throw new Error(problems.join("\n"));
} catch (e) {
  failed = e;
} finally {
  await browser.close();
}
if (failed) {
  console.error(`scenario ${scenario} failed: ${failed.stack ?? failed}`);
  process.exit(1);
}
console.log(`scenario ${scenario} held`);
