// Charts drawn as SVG: attempts over time stacked by category (coloured as the CLI colours them: egress/cli_render.py),
// with integer ticks on the count axis and times in the view's zone on the time axis; and a sandbox's timeline.

import { el, svg, viewLink } from "./dom.js";
import { CATEGORIES, fmtTime, withView, zoneLabel } from "./state.js";

// The CLI's colours (mining red, tunnel yellow, crypto-node magenta, policy blue), in shades readable on white.
export const COLOURS = { mining: "#c62828", tunnel: "#f9a825", "crypto-node": "#a0148f", policy: "#1565c0" };
const BUCKETS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

// Ticks for a count axis up to `max`: whole numbers only, a step of 1, 2 or 5 times a power of ten, at most
// about five steps; the last tick is at or above max.
export function integerTicks(max) {
  const top = Math.max(1, Math.ceil(max));
  let step = 1;
  for (let power = 1; ; power *= 10) {
    const found = [1, 2, 5].map((m) => m * power).find((s) => top / s <= 5);
    if (found) { step = found; break; }
  }
  const ticks = [];
  for (let t = 0; t < top + step; t += step) ticks.push(t);
  return ticks;
}

// The bucket width for a span: the smallest of the usual widths that cuts it into at most `most` buckets.
export function bucketWidth(seconds, most) {
  return BUCKETS.find((b) => seconds / b <= most) || Math.ceil(seconds / most);
}

// Attempts (their `count`s) per bucket and category over [since, until]; buckets start on multiples of the width.
export function histogram(attempts, since, until, most = 60) {
  const width = bucketWidth(until - since, most);
  const first = Math.floor(since / width) * width;
  const buckets = [];
  for (let start = first; start < until; start += width) buckets.push({ start, end: start + width, counts: {} });
  for (const a of attempts) {
    const i = Math.floor((a.ts - first) / width);
    if (i < 0 || i >= buckets.length) continue;
    const key = CATEGORIES.includes(a.category) ? a.category : "policy";
    buckets[i].counts[key] = (buckets[i].counts[key] || 0) + a.count;
  }
  return { width, buckets };
}

function timeFormat(width, spanSeconds) {
  if (width >= 86400) return "date";
  return spanSeconds > 86400 ? "date-hm" : "hm";
}

// The stacked bars; each bucket is a link that narrows the view to it (keyboard: Tab, Enter).
// Drawn at the box's own width in pixels, so that text keeps its size on a phone.
export function drawHistogram(box, legend, view, since, until, attempts) {
  const W = Math.round(Math.max(300, box.clientWidth || 1200));
  const { width, buckets } = histogram(attempts, since, until, W < 700 ? 30 : 60);
  const H = W < 700 ? 200 : 240, left = 48, bottom = 40, top = 10, right = 8;
  const plotH = H - bottom - top;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "group", "aria-label": "attempts over time by category" });
  const totals = buckets.map((b) => Object.values(b.counts).reduce((s, n) => s + n, 0));
  const ticks = integerTicks(Math.max(0, ...totals));
  const ymax = ticks[ticks.length - 1];
  const y = (n) => top + plotH - (plotH * n) / ymax;
  for (const t of ticks) {
    root.append(svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), class: "gridline" }));
    root.append(svg("text", { x: left - 6, y: y(t) + 4, "text-anchor": "end", class: "axis tick-y" }, t));
  }
  root.append(svg("text", { x: 12, y: top + plotH / 2, class: "axis", transform: `rotate(-90 12 ${top + plotH / 2})`,
    "text-anchor": "middle" }, "attempts"));
  const step = (W - left - right) / Math.max(1, buckets.length);
  const how = timeFormat(width, until - since);
  const labels = Math.max(2, Math.floor((W - left) / (how === "date-hm" ? 120 : 64)));
  const every = Math.ceil(buckets.length / labels);
  buckets.forEach((bucket, i) => {
    const x = left + i * step;
    const total = totals[i];
    const link = viewLink(withView(view, { range: null, from: bucket.start, to: bucket.end, attempt: "", box: null }));
    const a = svg("a", { href: link.getAttribute("href"), "data-nav": "", class: "bucket",
      "aria-label": `${fmtTime(bucket.start, view.tz, "date-hm")}: ${total} attempts` });
    a.append(svg("rect", { x, y: top, width: step, height: plotH, class: "bucket-hit" }));
    let base = 0;
    for (const cat of CATEGORIES) {
      const n = bucket.counts[cat] || 0;
      if (!n) continue;
      const rect = svg("rect", { x: x + 1, y: y(base + n), width: Math.max(1, step - 2), height: y(base) - y(base + n),
        fill: COLOURS[cat], "data-category": cat });
      rect.append(svg("title", {}, `${cat}: ${n} (${fmtTime(bucket.start, view.tz, "date-hm")}–${fmtTime(bucket.end, view.tz, "hm")})`));
      a.append(rect);
      base += n;
    }
    root.append(a);
    if (i % every === 0) {
      root.append(svg("line", { x1: x, x2: x, y1: top + plotH, y2: top + plotH + 4, class: "gridline" }));
      const anchor = x > W - right - 40 ? "end" : "start"; // the last label stays inside
      root.append(svg("text", { x: anchor === "end" ? W - right : x, y: top + plotH + 16, class: "axis tick-x",
        "text-anchor": anchor }, fmtTime(bucket.start, view.tz, how)));
    }
  });
  root.append(svg("text", { x: W - right, y: H - 4, "text-anchor": "end", class: "axis" },
    `time (${zoneLabel(view.tz, until)}), ${bucketLabel(width)} per bar`));
  box.replaceChildren(root);
  const sums = {};
  for (const b of buckets) for (const [k, n] of Object.entries(b.counts)) sums[k] = (sums[k] || 0) + n;
  legend.replaceChildren();
  for (const cat of CATEGORIES) {
    const item = el("li");
    item.style.setProperty("--swatch", COLOURS[cat]);
    item.append(viewLink(withView(view, { filters: { category: cat }, attempt: "", box: null }), `${cat} ${sums[cat] || 0}`));
    legend.append(item);
  }
}

function bucketLabel(width) {
  if (width % 86400 === 0) return `${width / 86400} d`;
  if (width % 3600 === 0) return `${width / 3600} h`;
  return `${width / 60} min`;
}

// A sandbox's timeline: actions as bars (lanes so that overlapping ones stay apart), attempts as dots below.
export function drawTimeline(box, data, tz) {
  const W = Math.round(Math.max(300, box.clientWidth || 1200)), H = 110, left = 10, right = 10;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "timeline of actions and attempts" });
  let lo = data.until, hi = data.since;
  for (const item of data.items) {
    const start = item.type === "action" ? item.action.start : item.ts;
    const end = item.type === "action" ? (item.action.end === null ? data.until : item.action.end) : item.ts;
    lo = Math.min(lo, Math.max(start, data.since));
    hi = Math.max(hi, Math.min(end, data.until));
  }
  if (!(hi > lo)) { lo = data.since; hi = data.until; }
  const pad = Math.max(1, (hi - lo) * 0.05);
  lo -= pad; hi += pad;
  const x = (ts) => left + ((ts - lo) / (hi - lo)) * (W - left - right);
  root.append(svg("line", { x1: left, x2: W - right, y1: 72, y2: 72, class: "gridline" }));
  const laneEnds = [];
  for (const item of data.items) {
    if (item.type === "action") {
      const a = item.action;
      const end = a.end === null ? data.until : a.end;
      let lane = laneEnds.findIndex((e) => e < a.start);
      if (lane < 0 || lane > 3) lane = Math.min(laneEnds.length, 3);
      laneEnds[lane] = end;
      const rect = svg("rect", { x: x(a.start), y: 6 + lane * 14, width: Math.max(2, x(end) - x(a.start)), height: 10,
        class: "action-bar", rx: 2 });
      rect.append(svg("title", {}, `${a.kind}: ${a.command}`));
      root.append(rect);
    } else {
      const a = item.attempt;
      const dot = svg("circle", { cx: x(a.ts), cy: 72, r: 5, fill: COLOURS[a.category] || COLOURS.policy });
      dot.append(svg("title", {}, `${a.reason} → ${a.dst}:${a.dport} ${a.host}`));
      root.append(dot);
    }
  }
  for (const [ts, anchor] of [[lo, "start"], [hi, "end"]]) {
    root.append(svg("text", { x: x(ts), y: 100, "text-anchor": anchor, class: "axis" }, fmtTime(ts, tz, W < 700 ? "hms" : "full").slice(0, 19)));
  }
  box.replaceChildren(root);
}
