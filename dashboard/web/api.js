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

/**
 * Follows an event stream. `onEvent(data)` gets each parsed event; `onOpen`
 * runs on every (re)connection, when what was missed must be reloaded;
 * `onDown` when the connection drops (the browser reconnects by itself,
 * resuming with Last-Event-ID).
 */
export function follow(path, { onEvent, onOpen, onDown }) {
  const es = new EventSource(path);
  es.onmessage = (ev) => {
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      return;
    }
    onEvent(data);
  };
  es.onopen = () => onOpen?.();
  es.onerror = () => onDown?.();
  return es;
}
