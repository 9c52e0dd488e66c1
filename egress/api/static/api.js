// The dashboard's way to the query API (docs/api.md): the bearer token, JSON requests, the attempt filters as the
// API takes them, and the live follow (server-sent events read through fetch, so the token travels in a header).

let token = "";
export const MAX_PAGE = 1000; // the API's largest page (egress.api.models.MAX_PAGE)

export class ApiError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

// ?token= (then removed from the address bar), else this tab's session storage.
export function initToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    token = params.get("token");
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + (rest ? "?" + rest : ""));
  } else {
    token = sessionStorage.getItem("egress-token") || "";
  }
  if (token) sessionStorage.setItem("egress-token", token);
  return token;
}

export function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem("egress-token", value);
  else sessionStorage.removeItem("egress-token");
}

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

export async function api(path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const response = await fetch(path + query, { headers: headers() });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const err = body && body.error ? body.error : { message: response.statusText };
    throw new ApiError(response.status, err.message + (err.field ? ` (${err.field})` : ""));
  }
  return body;
}

// The paths this API serves (its OpenAPI description, which needs no token): a newer route is asked only where it
// exists, so an older API shows "not reported" instead of an error.
let described = null;
export function hasPath(path) {
  if (!described) {
    described = fetch("/openapi.json").then((r) => (r.ok ? r.json() : { paths: {} })).then(
      (spec) => new Set(Object.keys(spec.paths || {})), () => new Set());
  }
  return described.then((paths) => paths.has(path));
}

// The filters the API applies itself (GET /v1/attempts); action and free text are applied here (`matches`).
export function serverFilters(filters) {
  const out = {};
  for (const name of ["sandbox", "category", "reason", "destination"]) {
    if (filters[name] !== undefined) out[name] = filters[name];
  }
  return out;
}

// As the API's destination filter (egress.record.query.destination_matches): the address, or the host name
// itself or any name under it, ignoring case and a final dot.
function hostMatches(host, dst, wanted) {
  const w = wanted.trim().toLowerCase().replace(/\.$/, "");
  if (dst.toLowerCase() === w) return true;
  const h = host.toLowerCase().replace(/\.$/, "");
  return h !== "" && (h === w || h.endsWith("." + w));
}

const SEARCHED = ["id", "sandbox", "gateway", "src", "dst", "host", "protocol", "reason", "detector", "rule",
  "evidence", "community_id", "action", "category"];

// Whether a record passes every filter of the view (used on the live stream and for action and free text).
export function matches(a, filters) {
  if (filters.sandbox !== undefined && a.sandbox !== filters.sandbox) return false;
  if (filters.category !== undefined && a.category !== filters.category) return false;
  if (filters.reason !== undefined && a.reason !== filters.reason) return false;
  if (filters.action !== undefined && a.action !== filters.action) return false;
  if (filters.destination !== undefined && !hostMatches(a.host, a.dst, filters.destination)) return false;
  if (filters.q !== undefined) {
    const words = filters.q.toLowerCase().split(/\s+/).filter(Boolean);
    const text = SEARCHED.map((k) => String(a[k] ?? "")).join("\n").toLowerCase() + `\n${a.dport}`;
    if (!words.every((w) => text.includes(w))) return false;
  }
  return true;
}

// Every attempt of the window that passes the filters, newest first, up to `cap` records read; the first page
// asks for the correlated actions of its attempts too. Returns {attempts, correlated, truncated}.
export async function loadAttempts(filters, since, until, cap) {
  const base = { ...serverFilters(filters), since: String(since), until: String(until) };
  const attempts = [];
  let correlated = {};
  let cursor = null;
  let read = 0;
  let first = true;
  for (;;) {
    const params = { ...base, limit: String(first ? 200 : MAX_PAGE) };
    if (first) params.correlate = "true";
    if (cursor) params.cursor = cursor;
    const page = await api("/v1/attempts", params);
    if (first) correlated = page.correlated || {};
    first = false;
    read += page.attempts.length;
    for (const a of page.attempts) if (matches(a, filters)) attempts.push(a);
    cursor = page.next_cursor;
    if (!cursor) return { attempts, correlated, truncated: false };
    if (read >= cap) return { attempts, correlated, truncated: true };
  }
}

// Live attempts: handlers.attempt(record) for each; handlers.state(text) when the stream drops ("" once it
// answers again); handlers.flowing() at its first event or heartbeat (from then on nothing new is missed: the API
// has taken its position in the streams). Reconnects with Last-Event-ID (an API that resumes sends what was
// missed) until `signal` aborts.
export async function follow(handlers, signal) {
  let lastId = "";
  while (!signal.aborted) {
    try {
      const h = headers();
      if (lastId) h["Last-Event-ID"] = lastId;
      const response = await fetch("/v1/follow", { headers: h, signal });
      if (!response.ok) throw new ApiError(response.status, "live update refused");
      handlers.state("");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let flowing = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const id = /^id: (.*)$/m.exec(block);
          const event = /^event: (.*)$/m.exec(block);
          const data = /^data: (.*)$/m.exec(block);
          if (id) lastId = id[1];
          const kind = event ? event[1] : "";
          if (!flowing && (kind === "attempt" || kind === "heartbeat")) {
            flowing = true;
            handlers.flowing();
          }
          if (kind === "attempt" && data) handlers.attempt(JSON.parse(data[1]));
          if (kind === "error" && data) handlers.state("live: " + JSON.parse(data[1]).message);
        }
      }
      handlers.state("live: stream ended, reconnecting");
    } catch (error) {
      if (signal.aborted) return;
      handlers.state("live: " + String(error.message || error) + ", reconnecting");
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
