// Small helpers for building the page. Everything the broker reports
// (service ids, command lines, messages) goes in as text, never as
// markup, so nothing a process names itself can inject script.

/** An element: h("td", {class: "num"}, "3000", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/**
 * Replaces a container's children, keeping keyboard focus on the control
 * that had it (found again by its aria-label or data-focus-key), so a
 * redraw never throws a keyboard user back to the top.
 */
export function fill(container, children) {
  const active = document.activeElement;
  const key = active && container.contains(active)
    ? active.getAttribute("aria-label") ?? active.dataset.focusKey
    : null;
  container.replaceChildren(...children);
  if (!key) return;
  const again = [...container.querySelectorAll("[aria-label], [data-focus-key]")]
    .find((el) => (el.getAttribute("aria-label") ?? el.dataset.focusKey) === key);
  again?.focus();
}

/** A table row that explains an empty table, spanning its columns. */
export function emptyRow(columns, ...content) {
  return h("tr", { class: "empty" }, h("td", { colspan: columns }, ...content));
}

/** A shell command to show in an empty state. */
export const cmd = (text) => h("code", {}, text);

/** A <time> that says how long ago `ms` was, kept current by tickTimes. */
export function ago(ms) {
  if (!ms) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString(), dataset: { at: ms } }, relative(ms));
}

/** The same for a moment to come ("in 4m"). */
export function until(ms) {
  if (!ms) return h("span", { class: "muted" }, "never");
  return h("time", { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString(), dataset: { at: ms } }, relative(ms));
}

export function relative(ms) {
  const d = Math.round((Date.now() - ms) / 1000);
  const a = Math.abs(d);
  const span =
    a < 5 ? null :
    a < 60 ? `${a}s` :
    a < 3600 ? `${Math.floor(a / 60)}m` :
    a < 86400 ? `${Math.floor(a / 3600)}h ${Math.floor((a % 3600) / 60)}m` :
    `${Math.floor(a / 86400)}d`;
  if (span === null) return d >= 0 ? "just now" : "now";
  return d >= 0 ? `${span} ago` : `in ${span}`;
}

/** Rewrites every relative time on the page (not a fetch: no data moves). */
export function tickTimes() {
  for (const t of document.querySelectorAll("time[data-at]")) {
    t.textContent = relative(Number(t.dataset.at));
  }
}

/**
 * Applies the theme the user chose (system, light or dark) as <html
 * data-theme>; "system" follows the system's setting as it changes.
 */
export function applyTheme(choice = localStorage.getItem("pb-theme") || "system") {
  const system = matchMedia("(prefers-color-scheme: dark)");
  const set = () => {
    const dark = choice === "dark" || (choice === "system" && system.matches);
    document.documentElement.dataset.theme = dark ? "dark" : "light";
  };
  set();
  system.onchange = set;
  return choice;
}
