// The dashboard's view state and its one home, the address bar: every filter, the time range, the time zone,
// the paused live update and the open attempt or sandbox live in the query string, so a link reproduces the view.
// Also the time arithmetic and formatting that depend on that state (pure functions: no DOM, no fetch).

export const PRESETS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
export const DEFAULT_RANGE = "1h";
export const ACTIONS = ["block", "would-block", "record"];
export const CATEGORIES = ["mining", "tunnel", "crypto-node", "policy"];
export const FILTERS = ["sandbox", "category", "reason", "action", "destination", "q"];
// The order keys take in a URL the dashboard writes (a link reads the same every time it is made).
const ORDER = [...FILTERS, "range", "from", "to", "tz", "paused", "attempt", "box", "act"];

// A view: { filters: {name: text}, range: preset key or null, from, to (epoch seconds or null), tz: "local" | "utc",
// paused: bool, attempt: id or "", box: sandbox name or null, act: action id or "" }.
export function parseView(search) {
  const params = new URLSearchParams(search);
  const filters = {};
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value !== null && (value !== "" || name === "sandbox")) filters[name] = value; // "" = no sandbox
  }
  if (filters.category !== undefined && !CATEGORIES.includes(filters.category)) delete filters.category;
  if (filters.action !== undefined && !ACTIONS.includes(filters.action)) delete filters.action;
  const from = parseTime(params.get("from"));
  const to = parseTime(params.get("to"));
  const absolute = from !== null && to !== null && from < to;
  const range = absolute ? null : (PRESETS[params.get("range")] ? params.get("range") : DEFAULT_RANGE);
  return {
    filters,
    range,
    from: absolute ? from : null,
    to: absolute ? to : null,
    tz: params.get("tz") === "utc" ? "utc" : "local",
    paused: params.get("paused") === "1",
    attempt: /^[0-9A-HJKMNP-TV-Z]{26}$/.test(params.get("attempt") || "") ? params.get("attempt") : "",
    box: params.has("box") ? params.get("box") : null,
    act: params.get("act") || "",
  };
}

// The query string of a view (with a leading "?", or "" for the default view).
export function formatView(view) {
  const values = { ...view.filters };
  if (view.range !== null) {
    if (view.range !== DEFAULT_RANGE) values.range = view.range;
  } else {
    values.from = isoUtc(view.from);
    values.to = isoUtc(view.to);
  }
  if (view.tz === "utc") values.tz = "utc";
  if (view.paused) values.paused = "1";
  if (view.attempt) values.attempt = view.attempt;
  if (view.box !== null) values.box = view.box;
  if (view.box !== null && view.act) values.act = view.act;
  const params = new URLSearchParams();
  for (const key of ORDER) if (values[key] !== undefined) params.set(key, values[key]);
  const text = params.toString();
  return text ? "?" + text : "";
}

export function withView(view, changes) {
  return { ...view, ...changes, filters: { ...view.filters, ...(changes.filters || {}) } };
}

// Epoch seconds from ISO 8601 text (a time without a zone is UTC, as the API reads it) or from a number.
export function parseTime(text) {
  if (text === null || text === undefined || text === "") return null;
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const zoned = /([zZ]|[+-]\d\d:?\d\d)$/.test(text) ? text : text + "Z";
  const ms = Date.parse(zoned);
  return Number.isFinite(ms) ? ms / 1000 : null;
}

export function isoUtc(ts) {
  return new Date(Math.round(ts * 1000)).toISOString().replace(".000Z", "Z");
}

// The window to ask for: an absolute range as it is, a preset ending now.
export function span(view, now) {
  if (view.range === null) return { since: view.from, until: view.to };
  return { since: now - PRESETS[view.range], until: now };
}

export function isLive(view, now) {
  return view.range !== null || view.to > now;
}

// --- time zones: "local" (the browser's) or "utc"; every time shown says which ---
function parts(ts, tz) {
  const d = new Date(ts * 1000);
  const utc = tz === "utc";
  return {
    y: utc ? d.getUTCFullYear() : d.getFullYear(),
    mo: (utc ? d.getUTCMonth() : d.getMonth()) + 1,
    d: utc ? d.getUTCDate() : d.getDate(),
    h: utc ? d.getUTCHours() : d.getHours(),
    mi: utc ? d.getUTCMinutes() : d.getMinutes(),
    s: utc ? d.getUTCSeconds() : d.getSeconds(),
    ms: d.getUTCMilliseconds(),
  };
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

export function fmtTime(ts, tz, how = "full") {
  const p = parts(ts, tz);
  const date = `${p.y}-${pad(p.mo)}-${pad(p.d)}`;
  const hm = `${pad(p.h)}:${pad(p.mi)}`;
  if (how === "date") return date;
  if (how === "hm") return hm;
  if (how === "date-hm") return `${date} ${hm}`;
  const hms = `${hm}:${pad(p.s)}`;
  return how === "hms" ? hms : `${date} ${hms}.${pad(p.ms, 3)}`;
}

// The value of an <input type="datetime-local"> for a time, in the view's zone, and back.
export function toInputValue(ts, tz) {
  const p = parts(ts, tz);
  return `${p.y}-${pad(p.mo)}-${pad(p.d)}T${pad(p.h)}:${pad(p.mi)}:${pad(p.s)}`;
}

export function fromInputValue(value, tz) {
  if (!value) return null;
  const ms = tz === "utc" ? Date.parse(value + "Z") : new Date(value).getTime();
  return Number.isFinite(ms) ? ms / 1000 : null;
}

export function zoneLabel(tz, at) {
  if (tz === "utc") return "UTC";
  const name = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  const offset = -new Date(at * 1000).getTimezoneOffset();
  const sign = offset < 0 ? "-" : "+";
  const abs = Math.abs(offset);
  return `${name} (UTC${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)})`;
}

export function duration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.round((seconds % 86400) / 3600)} h`;
}
