// The egress dashboard: plain JavaScript over the query API (docs/api.md), no build step, no third-party code.
// Record fields come from sandboxes and are untrusted: they are only ever set as text (textContent), never as HTML.
"use strict";

(function () {
  const CATEGORIES = ["mining", "tunnel", "crypto-node", "policy"];
  const COLOURS = { mining: "#c62828", tunnel: "#6a1b9a", "crypto-node": "#ef6c00", policy: "#546e7a" };
  const SVG = "http://www.w3.org/2000/svg";
  const LATEST = 25;
  const $ = (id) => document.getElementById(id);
  let token = "";
  let followAbort = null;

  // --- token: ?token= (then removed from the address bar), the login box, or this tab's session storage ---
  function initToken() {
    const params = new URLSearchParams(location.search);
    if (params.has("live")) $("live").checked = true; // ?live: start following at once
    if (params.has("token")) {
      token = params.get("token");
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
    } else {
      token = sessionStorage.getItem("egress-token") || "";
    }
    if (token) sessionStorage.setItem("egress-token", token);
  }

  class ApiError extends Error {}

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const response = await fetch(path, { headers });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const err = body && body.error ? body.error : { message: response.statusText };
      throw new ApiError(`${response.status}: ${err.message}${err.field ? " (" + err.field + ")" : ""}`);
    }
    return body;
  }

  function status(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function fmtTime(ts, withDate) {
    const d = new Date(ts * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}` : hms;
  }

  function destination(a) {
    return `${a.dst}:${a.dport}/${a.transport}`;
  }

  function windowSeconds() {
    return Number($("window").value);
  }

  // --- attempts over time by category: stacked bars drawn as SVG ---
  function drawChart(series) {
    const box = $("chart");
    box.replaceChildren();
    const width = 1200, height = 220, left = 40, bottom = 22, top = 8;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const totals = series.buckets.map((b) => Object.values(b.counts).reduce((s, n) => s + n, 0));
    const max = Math.max(1, ...totals);
    const plotH = height - bottom - top;
    const step = (width - left) / Math.max(1, series.buckets.length);
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      root.append(svg("line", { x1: left, x2: width, y1: y, y2: y, class: "gridline" }));
      const label = svg("text", { x: left - 4, y: y + 3, "text-anchor": "end", class: "axis" });
      label.textContent = String(Math.round((max * i) / 4));
      root.append(label);
    }
    series.buckets.forEach((bucket, i) => {
      let y = top + plotH;
      const x = left + i * step + 1;
      for (const cat of CATEGORIES) {
        const n = bucket.counts[cat] || 0;
        if (!n) continue;
        const h = (plotH * n) / max;
        y -= h;
        const rect = svg("rect", { x, y, width: Math.max(1, step - 2), height: h, fill: COLOURS[cat], "data-category": cat });
        const tip = svg("title");
        tip.textContent = `${cat}: ${n} (${fmtTime(bucket.start)}–${fmtTime(bucket.end)})`;
        rect.append(tip);
        root.append(rect);
      }
      if (i % Math.ceil(series.buckets.length / 8) === 0) {
        const label = svg("text", { x, y: height - 6, class: "axis" });
        label.textContent = fmtTime(bucket.start, series.window_s > 86400);
        root.append(label);
      }
    });
    box.append(root);
    const legend = $("legend");
    legend.replaceChildren();
    const sums = {};
    for (const b of series.buckets) for (const [k, n] of Object.entries(b.counts)) sums[k] = (sums[k] || 0) + n;
    for (const cat of CATEGORIES) {
      const item = el("li", `${cat} ${sums[cat] || 0}`);
      item.style.setProperty("--swatch", COLOURS[cat]);
      legend.append(item);
    }
  }

  function drawTop(tableId, counts) {
    const body = $(tableId).tBodies[0];
    body.replaceChildren();
    const rows = Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 10);
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", "no attempts in this window", "none"));
      body.append(tr);
      return;
    }
    const max = rows[0][1];
    for (const [name, n] of rows) {
      const tr = el("tr");
      tr.append(el("td", name === "" ? "(no sandbox)" : name, "name"));
      const cell = el("td");
      const bar = el("div", null, "bar");
      bar.style.width = `${Math.max(1, (100 * n) / max)}%`;
      cell.append(bar);
      tr.append(cell, el("td", n, "count"));
      body.append(tr);
    }
  }

  function attemptRow(a, actions) {
    const tr = el("tr");
    tr.dataset.id = a.id;
    tr.append(el("td", fmtTime(a.ts, true), "mono"), el("td", a.sandbox || "(none)"), el("td", destination(a), "mono"));
    tr.append(el("td", a.host, "mono"));
    const cat = el("td");
    cat.append(el("span", a.category, `chip ${CATEGORIES.includes(a.category) ? a.category : "policy"}`));
    tr.append(cat, el("td", a.reason), el("td", a.count > 1 ? `${a.action} ×${a.count}` : a.action));
    const during = el("td");
    if (actions && actions.length) {
      for (const act of actions.slice(0, 3)) {
        const line = el("span", null, "act");
        line.append(document.createTextNode(`${act.kind}: ${act.command.slice(0, 120)} `));
        line.append(el("span", act.distance_s > 0 ? `(+${act.distance_s.toFixed(1)} s)` : "", "dist"));
        during.append(line);
      }
    } else {
      during.append(el("span", actions ? "no action reported" : "…", "none"));
    }
    tr.append(during);
    return tr;
  }

  async function loadAttempts(since) {
    const page = await api(`/v1/attempts?limit=${LATEST}&since=${since}&correlate=true`);
    const body = $("attempts").tBodies[0];
    body.replaceChildren();
    for (const a of page.attempts) body.append(attemptRow(a, (page.correlated || {})[a.id] || []));
    if (!page.attempts.length) {
      const tr = el("tr");
      const td = el("td", "no attempts in this window", "none");
      td.colSpan = 8;
      tr.append(td);
      body.append(tr);
    }
    return page.attempts;
  }

  // --- per-sandbox timeline: actions as bars, attempts as marks on one time axis, then as a list ---
  function drawTimeline(data) {
    const box = $("timeline-chart");
    box.replaceChildren();
    const width = 1200, height = 90, left = 10, right = 10;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    // Zoom to what happened: from the first item to the last (a running action reaches "until"), padded 5 %.
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
    const span = hi - lo;
    const x = (ts) => left + ((ts - lo) / span) * (width - left - right);
    root.append(svg("line", { x1: left, x2: width - right, y1: 60, y2: 60, class: "gridline" }));
    let lane = 0;
    for (const item of data.items) {
      if (item.type === "action") {
        const a = item.action;
        const end = a.end === null ? data.until : a.end;
        const rect = svg("rect", { x: x(a.start), y: 8 + (lane % 3) * 14, width: Math.max(2, x(end) - x(a.start)), height: 10, fill: "#1e88e5", rx: 2 });
        const tip = svg("title");
        tip.textContent = `${a.kind}: ${a.command}`;
        rect.append(tip);
        root.append(rect);
        lane++;
      } else {
        const a = item.attempt;
        const mark = svg("circle", { cx: x(a.ts), cy: 60, r: 5, fill: COLOURS[a.category] || COLOURS.policy });
        const tip = svg("title");
        tip.textContent = `${a.reason} → ${destination(a)} ${a.host}`;
        mark.append(tip);
        root.append(mark);
      }
    }
    for (const [ts, anchor] of [[lo, "start"], [hi, "end"]]) {
      const label = svg("text", { x: x(ts), y: 84, "text-anchor": anchor, class: "axis" });
      label.textContent = fmtTime(ts, true);
      root.append(label);
    }
    box.append(root);
    const list = $("timeline");
    list.replaceChildren();
    for (const item of data.items) {
      const li = el("li", null, item.type);
      li.append(el("time", fmtTime(item.ts, true)));
      if (item.type === "action") {
        const a = item.action;
        const took = a.end === null ? "running" : `${(a.end - a.start).toFixed(1)} s`;
        li.append(document.createTextNode(`action ${a.kind} (${took}): ${a.command}`));
      } else {
        const a = item.attempt;
        li.append(el("span", a.category, `chip ${CATEGORIES.includes(a.category) ? a.category : "policy"}`));
        li.append(document.createTextNode(` ${a.action} ${destination(a)} ${a.host} — ${a.reason}`));
      }
      list.append(li);
    }
    if (!data.items.length) list.append(el("li", "nothing in this window", "none"));
  }

  async function loadTimeline(since) {
    const select = $("timeline-sandbox");
    const name = select.value;
    if (!select.options.length) return;
    drawTimeline(await api(`/v1/sandboxes/${encodeURIComponent(name)}/timeline?since=${since}&limit=500`));
  }

  async function loadSandboxes(preferred) {
    const { sandboxes } = await api("/v1/sandboxes");
    const select = $("timeline-sandbox");
    const current = select.value || preferred;
    select.replaceChildren();
    for (const name of sandboxes.filter((s) => s !== "")) select.append(new Option(name, name));
    if (current && sandboxes.includes(current)) select.value = current;
  }

  async function refresh() {
    const win = windowSeconds();
    const since = Math.floor(Date.now() / 1000) - win;
    status("loading…");
    try {
      const [series, bySandbox, byDest] = await Promise.all([
        api(`/v1/stats/series?window=${win}&buckets=30&by=category`),
        api(`/v1/stats?window=${win}&by=sandbox`),
        api(`/v1/stats?window=${win}&by=destination`),
      ]);
      drawChart(series);
      drawTop("top-sandboxes", bySandbox.counts);
      drawTop("top-destinations", byDest.counts);
      const latest = await loadAttempts(since);
      const top = Object.entries(bySandbox.counts).sort((a, b) => b[1] - a[1]).map((e) => e[0]);
      await loadSandboxes(top[0] || (latest[0] && latest[0].sandbox));
      await loadTimeline(since);
      status(`updated ${fmtTime(Date.now() / 1000)}`);
      document.body.dataset.loaded = "true";
    } catch (error) {
      status(String(error.message || error), true);
      if (error instanceof ApiError && /^401/.test(error.message)) signOut(false);
    }
  }

  // --- live follow: server-sent events read through fetch, so the token travels in a header, not the URL ---
  async function follow() {
    followAbort = new AbortController();
    try {
      const response = await fetch("/v1/follow", { headers: { Authorization: "Bearer " + token }, signal: followAbort.signal });
      if (!response.ok) throw new ApiError(`live: ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = /^event: (.*)$/m.exec(block);
          const data = /^data: (.*)$/m.exec(block);
          if (event && event[1] === "attempt" && data) {
            const row = attemptRow(JSON.parse(data[1]), null);
            row.className = "new";
            const body = $("attempts").tBodies[0];
            body.prepend(row);
            while (body.rows.length > LATEST) body.deleteRow(-1);
          }
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") status(String(error.message || error), true);
    }
  }

  function setLive(on) {
    if (followAbort) { followAbort.abort(); followAbort = null; }
    if (on) follow();
  }

  function signIn() {
    $("login").hidden = true;
    $("controls").hidden = false;
    $("main").hidden = false;
    refresh().then(() => { if ($("live").checked && !followAbort) setLive(true); });
  }

  function signOut(clear) {
    setLive(false);
    $("live").checked = false;
    if (clear !== false) status("");
    sessionStorage.removeItem("egress-token");
    token = "";
    $("login").hidden = false;
    $("controls").hidden = true;
  }

  document.addEventListener("DOMContentLoaded", () => {
    initToken();
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      token = $("token").value.trim();
      $("token").value = "";
      sessionStorage.setItem("egress-token", token);
      signIn();
    });
    $("logout").addEventListener("click", () => signOut(true));
    $("refresh").addEventListener("click", refresh);
    $("window").addEventListener("change", refresh);
    $("live").addEventListener("change", (event) => setLive(event.target.checked));
    $("timeline-sandbox").addEventListener("change", () => loadTimeline(Math.floor(Date.now() / 1000) - windowSeconds()).catch((e) => status(e.message, true)));
    if (token) signIn();
    else api("/v1/sandboxes").then(signIn, () => {}); // a lab without tokens answers without one
  });
})();
