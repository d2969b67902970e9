// The dashboard: loads each part of the page from the HTTP API, then keeps
// it current from server-sent events, with no polling. The activity stream
// says what changed (a claim, a lock, an agent...), and only the parts it
// touches are read again; the listeners and the live tail have streams of
// their own. After a dropped connection every part is read again, since
// events may have been missed.

import { ApiError, get, request, seg, follow } from "./api.js";
import { applyTheme, tickTimes } from "./dom.js";
import * as view from "./views.js";

const $ = (id) => document.getElementById(id);

/** Most entries kept in the activity list and in the live tail. */
const KEEP = 200;

function showError(e) {
  const box = $("alert");
  box.textContent = e instanceof ApiError ? `${e.message} (${e.code})` : String(e.message ?? e);
  box.hidden = false;
}

function clearError() {
  $("alert").hidden = true;
}

// ---- Parts read from the API, each redrawn from one route ----

const parts = {
  services: { path: "/services", draw: (r) => view.services(r.services, { release: releaseService }) },
  stacks: { path: "/stacks", draw: (r) => view.stacks(r.stacks, { restart: restartService, logs: stackLog }) },
  locks: { path: "/locks", draw: (r) => view.locks(r.locks, { release: releaseLock }) },
  agents: { path: "/agents", draw: (r) => view.agents(r.agents) },
  sessions: { path: "/sessions", draw: (r) => { view.sessions(r.sessions, { notes: showNotes }); refreshNotes(); } },
  channels: { path: "/channels", draw: (r) => view.channels(r.channels, { showSystem: $("show-system").checked, pick: tail }) },
  webhooks: { path: "/webhooks", draw: (r) => { keepOpen(); view.webhooks(r.webhooks, { toggled }); reopenWebhooks(); } },
};

// A burst of events reads each part once; a slow answer never overwrites
// a newer one.
const pending = new Map();
const generation = new Map();

function reload(name) {
  if (pending.has(name)) return;
  pending.set(name, setTimeout(async () => {
    pending.delete(name);
    const mine = (generation.get(name) ?? 0) + 1;
    generation.set(name, mine);
    try {
      const r = await get(parts[name].path);
      if (generation.get(name) === mine) parts[name].draw(r);
    } catch (e) {
      showError(e);
    }
  }, 60));
}

const reloadAll = () => Object.keys(parts).forEach(reload);

/** What each kind of event changes. */
function touched(action) {
  switch (action) {
    case "agent.register": case "agent.heartbeat": return ["agents"];
    case "lock.wait": case "lock.cancel": case "lock.extend": return ["locks"];
  }
  switch (action.split(".")[0]) {
    case "service": return ["services", "agents"];
    case "lock": return ["locks", "agents"];
    case "agent": return ["agents", "services", "locks"];
    case "message": case "channel": return ["channels"];
    case "webhook": return ["webhooks"];
    case "stack": return ["stacks", "services"];
    case "session": case "files": return ["sessions"];
    default: return Object.keys(parts);
  }
}

// ---- Actions ----

async function act(what) {
  clearError();
  try {
    await what();
  } catch (e) {
    showError(e);
  }
}

function releaseService(s) {
  if (!confirm(`Release ${s.id} (port ${s.port})? A process serving it keeps its socket, but the port is no longer reserved.`)) return;
  act(async () => {
    await request("DELETE", `/release/${seg(s.id)}`);
    reload("services");
  });
}

function restartService(st, s) {
  if (!confirm(`Restart ${s.name} of ${st.id}? Its socket is kept: requests sent meanwhile wait for the new process.`)) return;
  act(async () => {
    await request("POST", `/stacks/${seg(st.id)}/services/${seg(s.name)}/restart`);
  });
}

// One session's notes, read again whenever the sessions are.
let notesOf = null;

function showNotes(s) {
  notesOf = s.id;
  $("notes-box").hidden = false;
  refreshNotes();
}

async function refreshNotes() {
  const id = notesOf;
  if (!id) return;
  try {
    const r = await get(`/sessions/${seg(id)}/notes`);
    if (id !== notesOf) return;
    $("notes-h").textContent = `Notes of ${id}`;
    view.notes(r.notes);
  } catch (e) {
    showError(e);
  }
}

// The output of one stack's service, followed live (its pub/sub channel).
let logStream = null;
let logCall = 0;

async function stackLog(st, s) {
  const call = ++logCall;
  logStream?.close();
  logStream = null;
  const channel = `pb:log:${st.id}:${s.name}`;
  $("stack-log-box").hidden = false;
  $("stack-log-h").textContent = `Output of ${s.name} (${st.id})`;
  const list = $("stack-log");
  list.replaceChildren();
  const add = (m) => {
    if (list.querySelector(`[data-id="${m.id}"]`)) return;
    list.prepend(view.logLine(m));
    while (list.children.length > KEEP) list.lastElementChild.remove();
  };
  let since = 0;
  try {
    const r = await get(`/msg/${seg(channel)}?limit=${KEEP}`);
    if (call !== logCall) return;
    for (const m of r.messages) {
      add(m);
      since = Math.max(since, m.id);
    }
  } catch (e) {
    if (call === logCall) showError(e);
    return;
  }
  logStream = follow(() => `/subscribe/${seg(channel)}?since=${since}`, {
    onEvent: (m) => {
      since = Math.max(since, m.id);
      add(m);
    },
  });
}

function releaseLock(l) {
  if (!confirm(`Release lock ${l.name}, held by ${l.owner} (token ${l.token})? The next waiter gets it.`)) return;
  act(async () => {
    await request("DELETE", `/locks/${seg(l.name)}?force=true`);
    reload("locks");
  });
}

// Webhooks whose deliveries are shown stay open, and current, across redraws.
const openWebhooks = new Set();

/** A webhook opened (its deliveries are read) or closed. */
async function toggled(id, open, into) {
  if (!open) {
    openWebhooks.delete(id);
    return;
  }
  openWebhooks.add(id);
  try {
    const r = await get(`/webhooks/${seg(id)}/deliveries`);
    into.replaceChildren(view.deliveryTable(r.deliveries));
  } catch (e) {
    into.replaceChildren(String(e.message));
  }
}

/** Remembers the webhooks open now, even one whose toggle event is due. */
function keepOpen() {
  for (const d of document.querySelectorAll("#webhooks-list details[open]")) openWebhooks.add(d.dataset.webhook);
}

function reopenWebhooks() {
  for (const d of document.querySelectorAll("#webhooks-list details")) {
    if (openWebhooks.has(d.dataset.webhook)) d.open = true;
  }
}

// ---- The live tail ----

let tailStream = null;
/** Which call of tail() is the latest: an older one gives way. */
let tailCall = 0;

function showSystem(channel) {
  return $("show-system").checked || $("tail-pattern").value.startsWith("pb:") || !channel.startsWith("pb:");
}

function addMessage(m) {
  if (!showSystem(m.channel)) return;
  const list = $("tail");
  list.querySelector(".empty")?.remove();
  if (list.querySelector(`[data-id="${m.id}"]`)) return;
  list.prepend(view.message(m));
  while (list.children.length > KEEP) list.lastElementChild.remove();
}

async function tail(pattern) {
  const call = ++tailCall;
  $("tail-pattern").value = pattern;
  tailStream?.close();
  tailStream = null;
  const list = $("tail");
  list.replaceChildren(view.tailEmpty(pattern));
  let since = 0;
  let r;
  try {
    r = await get(`/msg/${seg(pattern)}?limit=${KEEP}`);
  } catch (e) {
    if (call === tailCall) showError(e);
    return;
  }
  if (call !== tailCall) return;
  for (const m of r.messages) {
    addMessage(m);
    since = Math.max(since, m.id);
  }
  // Reopened streams resume after the last message shown.
  tailStream = follow(() => `/subscribe/${seg(pattern)}?since=${since}`, {
    onEvent: (m) => {
      since = Math.max(since, m.id);
      addMessage(m);
    },
  });
}

// ---- Streams ----

const up = { activity: false, listeners: false };

function liveness(name, isUp) {
  up[name] = isUp;
  const live = Object.values(up).every(Boolean);
  const el = $("live");
  el.textContent = live ? "Live" : "Reconnecting…";
  el.classList.toggle("down", !live);
}

function addEntry(e) {
  const list = $("activity-list");
  list.querySelector(".empty")?.remove();
  if (list.querySelector(`[data-id="${e.id}"]`)) return;
  list.prepend(view.entry(e));
  while (list.children.length > KEEP) list.lastElementChild.remove();
}

function start() {
  applyTheme();
  $("theme").value = localStorage.getItem("pb-theme") || "system";
  $("theme").addEventListener("change", (ev) => {
    localStorage.setItem("pb-theme", ev.target.value);
    applyTheme(ev.target.value);
  });
  $("activity-list").replaceChildren(view.activityEmpty());

  reloadAll();
  follow(() => "/activity/stream?limit=50", {
    onOpen: () => { liveness("activity", true); reloadAll(); },
    onDown: () => liveness("activity", false),
    onEvent: (e) => {
      addEntry(e);
      touched(e.action).forEach(reload);
    },
  });
  // Stacks' states change without an event (a service becomes ready):
  // their supervisors' every report comes on channel pb:stacks.
  follow(() => "/subscribe/pb%3Astacks", { onEvent: () => reload("stacks") });
  follow(() => "/listeners/stream", {
    onOpen: () => liveness("listeners", true),
    onDown: () => liveness("listeners", false),
    onEvent: (r) => view.listeners(r.listeners),
  });

  $("show-system").addEventListener("change", () => { reload("channels"); tail($("tail-pattern").value); });
  $("tail-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    tail($("tail-pattern").value.trim() || "*");
  });
  $("publish").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const channel = $("pub-channel").value.trim();
    const text = $("pub-message").value;
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    act(async () => {
      await request("POST", `/msg/${seg(channel)}`, body);
      $("pub-message").value = "";
    });
  });
  tail("*");
  // Relative times ("3m ago") are rewritten on a clock; no data moves.
  setInterval(tickTimes, 10_000);
}

start();
