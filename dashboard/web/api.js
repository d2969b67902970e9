// The broker's HTTP API as the dashboard uses it: JSON requests whose
// failures carry the broker's error code and message, and server-sent
// event streams. The dashboard is a client like any other: it uses only
// the routes in /openapi.json.

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError("unreachable", `the broker did not answer (${e.message})`, 0);
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: reported below as it is.
  }
  if (resp.status === 401) {
    // The session ended: the page at / asks for a new login.
    location.assign("/");
  }
  if (!resp.ok) {
    throw new ApiError(json?.code ?? `http_${resp.status}`, json?.error ?? (text || resp.statusText), resp.status);
  }
  return json;
}

export const get = (path) => request("GET", path);

/** A path segment: ids and channel names may hold any character. */
export const seg = (s) => encodeURIComponent(s);

/** The longest wait between two attempts to reopen a refused stream. */
const MAX_RETRY_MS = 30_000;

/**
 * Follows an event stream. `path()` names it (asked again at each reopen,
 * so it can say where to resume). `onEvent(data)` gets each parsed event;
 * `onOpen` runs on every (re)connection, when what was missed must be
 * reloaded; `onDown` when the connection drops. A dropped connection is
 * reopened by the browser (resuming with Last-Event-ID); a refused one (an
 * error status, which browsers never retry) is reopened here, waiting
 * twice as long each time, after checking the session: a 401 goes to the
 * login page. Returns `{close()}`.
 */
export function follow(path, { onEvent, onOpen, onDown }) {
  let es = null;
  let closed = false;
  let retry = 1000;
  let timer = null;
  const open = () => {
    es = new EventSource(path());
    es.onmessage = (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      onEvent(data);
    };
    es.onopen = () => {
      retry = 1000;
      onOpen?.();
    };
    es.onerror = () => {
      onDown?.();
      if (closed || es.readyState !== EventSource.CLOSED) return;
      request("GET", "/whoami").catch(() => {});
      timer = setTimeout(open, retry);
      retry = Math.min(retry * 2, MAX_RETRY_MS);
    };
  };
  open();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      es?.close();
    },
  };
}
