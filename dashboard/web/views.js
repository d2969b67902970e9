// One function per part of the page: each takes what the API returned and
// redraws its part. Actions (release, publish, ...) are passed in, so that
// this module only draws.

import { h, fill, emptyRow, cmd, ago, until } from "./dom.js";

const $ = (id) => document.getElementById(id);

function count(id, n) {
  $(id).textContent = n ? `(${n})` : "";
}

/** A process as a cell: its pid, and its command line in full on hover. */
function proc(pid, command) {
  if (!pid && !command) return h("span", { class: "muted" }, "none");
  return h("span", { class: "proc" },
    pid ? h("span", { class: "pid" }, `pid ${pid}`) : null,
    command ? h("span", { class: "command", title: command }, command) : null);
}

export function services(list, { release }) {
  count("services-count", list.length);
  const rows = list
    .slice()
    .sort((a, b) => a.id.localeCompare(b.id))
    .map((s) =>
      h("tr", { dataset: { service: s.id } },
        h("th", { scope: "row" }, h("span", { class: "id" }, s.id)),
        h("td", { class: "num" }, h("a", { href: `http://localhost:${s.port}/`, target: "_blank", rel: "noopener noreferrer" }, s.port)),
        h("td", {}, s.urls && s.urls.named
          ? h("a", { class: "named", href: `${s.urls.named}/`, title: s.urls.named, target: "_blank", rel: "noopener noreferrer" }, s.urls.named.replace(/^https?:\/\//, ""))
          : h("span", { class: "muted" }, "-")),
        h("td", {}, s.pid || s.cmd ? proc(s.pid, s.cmd) : h("span", { class: "muted" }, "no process yet")),
        h("td", {}, s.status === "running"
          ? h("span", { class: "tag ok" }, "serving")
          : h("span", { class: "tag idle" }, s.listening ? "handed over" : "reserved")),
        h("td", {}, ago(s.createdAt)),
        h("td", { class: "actions" },
          h("button", { type: "button", class: "danger", "aria-label": `Release ${s.id}`, onclick: () => release(s) }, "Release"))));
  fill($("services-body"), rows.length ? rows : [emptyRow(7,
    "No services yet: try ", cmd("pb exec web -- python3 -m http.server"), " or ", cmd("pb claim myapp:web"), ".")]);
}

export function listeners(list) {
  count("listeners-count", list.length);
  const ownPort = Number(location.port);
  const rows = list.map((l) => {
    const kind = l.brokered ? ["brokered", "brokered"]
      : l.service ? ["leased", "on a lease (bound by its app)"]
      : l.port === ownPort && l.holders.length === 0 ? ["pb", "pb (this dashboard)"]
      : ["foreign", "foreign"];
    return h("tr", { dataset: { port: l.port, kind: kind[0] } },
      h("th", { scope: "row", class: "num" }, l.port),
      h("td", {}, h("code", {}, l.addr)),
      h("td", {}, h("span", { class: `tag ${kind[0]}` }, kind[1])),
      h("td", {}, l.service ? h("span", { class: "id" }, l.service) : h("span", { class: "muted" }, "—")),
      h("td", {}, l.holders.length
        ? l.holders.map((p) => proc(p.pid, p.command))
        : h("span", { class: "muted" }, l.uid === 0 || l.brokered ? "not visible" : `uid ${l.uid}`)));
  });
  fill($("listeners-body"), rows.length ? rows : [emptyRow(5, "Nothing listens on TCP on this machine.")]);
}

export function locks(list, { release }) {
  count("locks-count", list.length);
  const rows = list.map((l) =>
    h("tr", { dataset: { lock: l.name } },
      h("th", { scope: "row" }, h("span", { class: "id" }, l.name)),
      h("td", {}, l.ownerType === "process" ? proc(l.pid, l.command) : h("span", {}, l.owner)),
      h("td", { class: "num" }, h("span", { class: "token", title: "fencing token" }, `#${l.token}`)),
      h("td", { class: "num" }, l.waiters ? h("span", { class: "tag warn" }, `${l.waiters} waiting`) : "0"),
      h("td", {}, until(l.expiresAt)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "danger", "aria-label": `Release lock ${l.name}`, onclick: () => release(l) }, "Release"))));
  fill($("locks-body"), rows.length ? rows : [emptyRow(6, "No locks held: try ", cmd("pb lock deploy -- ./deploy.sh"), ".")]);
}

export function agents(list) {
  count("agents-count", list.length);
  const now = Date.now();
  const rows = list.map((a) => {
    const stale = a.stale_at_ms && a.stale_at_ms <= now;
    const health = stale
      ? h("span", { class: "tag bad" }, "stale")
      : h("span", { class: "tag ok" }, a.pid ? `alive (pid ${a.pid})` : "healthy");
    const holds = [
      a.services.length ? `${a.services.length} service${a.services.length > 1 ? "s" : ""}` : null,
      a.locks.length ? `${a.locks.length} lock${a.locks.length > 1 ? "s" : ""}` : null,
    ].filter(Boolean).join(", ");
    return h("tr", { dataset: { agent: a.id } },
      h("th", { scope: "row" }, h("span", { class: "id" }, a.id),
        a.name && a.name !== a.id ? h("span", { class: "muted" }, ` ${a.name}`) : null,
        a.kind ? h("span", { class: "tag idle" }, a.kind) : null),
      h("td", {}, health, stale || !a.stale_at_ms ? null : h("span", { class: "muted small" }, " stale ", until(a.stale_at_ms))),
      h("td", {}, ago(a.last_seen_ms)),
      h("td", {}, holds || h("span", { class: "muted" }, "nothing")));
  });
  fill($("agents-body"), rows.length ? rows : [emptyRow(4, "No agents registered: try ", cmd("pb agent register claude-1 --type claude"), ".")]);
}

export function channels(list, { showSystem, pick }) {
  const shown = list.filter((c) => showSystem || !c.channel.startsWith("pb:"));
  const items = shown.map((c) =>
    h("li", {},
      h("button", { type: "button", class: "link", onclick: () => pick(c.channel), "aria-label": `Tail ${c.channel}` }, c.channel),
      h("span", { class: "muted small" }, ` ${c.messages} kept · `, ago(c.last_ms))));
  fill($("channels"), items.length ? items : [h("li", { class: "empty" }, "No messages yet: try ", cmd(`pb pub build:status '{"ok":true}'`), ".")]);
}

/** One message of the live tail. */
export function message(m) {
  const data = typeof m.data === "string" ? m.data : JSON.stringify(m.data);
  const from = m.from?.agent ?? (m.from?.pid ? `pid ${m.from.pid}` : "");
  return h("li", { dataset: { id: m.id } },
    ago(m.time_ms), " ",
    h("span", { class: "id" }, m.channel), " ",
    h("code", { class: "payload" }, data),
    from ? h("span", { class: "muted small", title: m.from?.command ?? "" }, ` from ${from}`) : null);
}

export function tailEmpty(pattern) {
  return h("li", { class: "empty" }, "Waiting for messages on ", h("code", {}, pattern), "…");
}

export function webhooks(list, { toggled }) {
  count("webhooks-count", list.length);
  const items = list.map((w) => {
    const body = h("div", { class: "deliveries" }, h("p", { class: "muted" }, "Loading deliveries…"));
    const details = h("details", { dataset: { webhook: w.id } },
      h("summary", { dataset: { focusKey: `webhook ${w.id}` } },
        h("code", {}, w.url), " ",
        w.active ? h("span", { class: "tag ok" }, "active") : h("span", { class: "tag bad", title: w.disabled_reason ?? "" }, "disabled"),
        " ", h("span", { class: "muted small" }, (w.events?.length ? w.events.join(", ") : "every event") + (w.pending ? ` · ${w.pending} pending` : ""))),
      body);
    details.addEventListener("toggle", () => toggled(w.id, details.open, body));
    return details;
  });
  fill($("webhooks-list"), items.length ? items : [h("p", { class: "empty" }, "No webhooks: try ", cmd("pb webhook add https://example.com/hook"), ".")]);
}

export function deliveryTable(list) {
  if (!list.length) return h("p", { class: "empty" }, "No deliveries yet.");
  return h("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": "Deliveries" },
    h("table", {},
      h("thead", {}, h("tr", {}, ["Event", "When", "State", "Attempts", "Last result"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, list.map((d) => {
        const last = d.attempts?.[d.attempts.length - 1];
        const state = d.state === "delivered" ? "ok" : d.state === "failed" ? "bad" : "warn";
        return h("tr", {},
          h("td", {}, d.event),
          h("td", {}, ago(d.created_ms)),
          h("td", {}, h("span", { class: `tag ${state}` }, d.state), d.next_attempt_ms ? h("span", { class: "muted small" }, " retry ", until(d.next_attempt_ms)) : null),
          h("td", { class: "num" }, d.attempts?.length ?? 0),
          h("td", {}, last ? (last.status ? `HTTP ${last.status}` : last.error ?? "") : "—"));
      }))));
}

/** One activity entry. */
export function entry(e) {
  const a = e.actor;
  const who = a ? a.agent ?? (a.pid ? `pid ${a.pid}` : "") : "";
  const area = e.action.split(".")[0];
  return h("li", { dataset: { id: e.id } },
    ago(e.time_ms), " ",
    h("span", { class: `tag act-${area}` }, e.action), " ",
    h("span", { class: "id" }, e.target),
    who ? h("span", { class: "muted small", title: a?.command ?? "" }, ` by ${who}`) : null);
}

export function activityEmpty() {
  return h("li", { class: "empty" }, "Nothing has happened yet. Claims, locks, messages and agents show up here as they happen.");
}

/** Running stacks (`pb up`): each a table of its services. */
export function stacks(list, { restart, logs }) {
  count("stacks-count", list.length);
  const items = list.map((st) =>
    h("div", { class: "stack", dataset: { stack: st.id } },
      h("h3", {}, h("span", { class: "id" }, st.id), " ",
        h("span", { class: `tag ${st.status === "up" ? "ok" : st.status === "failed" ? "bad" : "warn"}` }, st.status),
        h("span", { class: "muted small" }, ` supervisor pid ${st.supervisor} · `, h("code", {}, st.file))),
      h("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": `Services of ${st.id}` },
        h("table", {},
          h("thead", {}, h("tr", {}, ["Service", "State", "Port", "Process", "Restarts"].map((t) => h("th", { scope: "col" }, t)),
            h("th", { scope: "col" }, h("span", { class: "sr" }, "Actions")))),
          h("tbody", {}, st.services.map((s) =>
            h("tr", { dataset: { service: s.name } },
              h("th", { scope: "row" }, s.name),
              h("td", {}, h("span", { class: `tag ${s.ready ? "ok" : s.state === "exited" ? "bad" : "warn"}` }, s.state)),
              h("td", { class: "num" }, s.port
                ? h("a", { href: `http://localhost:${s.port}/`, target: "_blank", rel: "noopener noreferrer" }, s.port)
                : h("span", { class: "muted" }, "no port")),
              h("td", {}, s.pid ? proc(s.pid, null) : h("span", { class: "muted" }, "none")),
              h("td", { class: "num" }, s.restarts),
              h("td", { class: "actions" },
                h("button", { type: "button", "aria-label": `Output of ${st.id} ${s.name}`, onclick: () => logs(st, s) }, "Output"),
                h("button", { type: "button", class: "danger", "aria-label": `Restart ${st.id} ${s.name}`, onclick: () => restart(st, s) }, "Restart")))))))));
  fill($("stacks-list"), items.length ? items : [h("p", { class: "empty" }, "No stacks: try ", cmd("pb up -d"), " beside a pb.toml, .portdaddyrc or Procfile.")]);
}

/** One line a stack's service printed. */
export function logLine(m) {
  return h("li", { dataset: { id: m.id } }, ago(m.time_ms), " ", h("code", { class: "payload" }, m.data?.line ?? ""));
}

/** Work sessions: each with its state, owner and claimed files. */
export function sessions(list, { notes }) {
  count("sessions-count", list.length);
  const tagOf = { active: "ok", abandoned: "warn", ended: "idle" };
  const rows = list.map((s) =>
    h("tr", { dataset: { session: s.id, state: s.state } },
      h("th", { scope: "row" }, h("span", { class: "id" }, s.id), " ", h("span", {}, s.purpose)),
      h("td", {}, h("span", { class: `tag ${tagOf[s.state] ?? "idle"}` }, s.state)),
      h("td", {}, s.phase),
      h("td", {}, s.agent ? h("span", { class: "id" }, s.agent) : proc(s.pid, s.command)),
      h("td", {}, s.files.length
        ? s.files.map((f) => h("code", { class: "file", title: f }, s.dir && f.startsWith(`${s.dir}/`) ? f.slice(s.dir.length + 1) : f))
        : h("span", { class: "muted" }, "none")),
      h("td", {}, ago(s.started_ms)),
      h("td", { class: "actions" },
        h("button", { type: "button", "aria-label": `Notes of ${s.id}`, onclick: () => notes(s) }, `Notes (${s.notes})`))));
  fill($("sessions-body"), rows.length ? rows : [emptyRow(7,
    "No sessions: an agent begins one with ", cmd("begin_session"), " over MCP, or ", cmd('pb session begin "fix login" --files src/auth'), ".")]);
}

/** A session's notes, oldest first. */
export function notes(list) {
  fill($("notes"), list.length
    ? list.map((n) => h("li", { dataset: { n: n.n } }, ago(n.time_ms), " ",
        n.kind === "note" ? null : h("span", { class: "tag idle" }, n.kind), " ",
        h("span", { class: "payload" }, n.text)))
    : [h("li", { class: "empty" }, "No notes yet.")]);
}
