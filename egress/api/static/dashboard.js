// The egress dashboard (docs/api.md): plain JavaScript modules over the query API, no build step, no third-party
// code. This module wires the page: the address bar holds the view (state.js); render() reads it, loads what it
// needs and draws the overview and the open attempt or sandbox; the controls and every link change the address.
import { ApiError, api, follow, initToken, loadAttempts, matches, setToken } from "./api.js";
import { drawHistogram } from "./charts.js";
import { loadDetail, drawDetail } from "./detail.js";
import { $ } from "./dom.js";
import { drawSandbox, loadSandbox } from "./sandbox.js";
import * as state from "./state.js";
import { SHOWN, drawAttempts, drawTop } from "./table.js";

const CAP = 5000; // records read for one view: the chart and the tops count these
const SLIDE_S = 60; // a relative range moves on at least this often while live

let view = state.parseView(location.search);
let main = null; // {result, since, until, key}
let panelKey = "";
let generation = 0;
let shown = SHOWN;
let followAbort = null;
let pending = 0;
let refreshTimer = null;
let slideTimer = null;
let liveProblem = "";

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function navigate(search, replace, force) {
  const url = location.pathname + search;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render(Boolean(force));
}

function go(changes, replace, force) {
  navigate(state.formatView(state.withView(view, changes)), replace, force);
}

function syncControls() {
  const form = $("filters");
  for (const name of state.FILTERS) {
    const input = form.elements[name];
    if (input !== document.activeElement || input.tagName === "SELECT") input.value = view.filters[name] ?? "";
  } // a live reload leaves what is being typed alone
  const cleared = state.withView(view, { attempt: "", box: null, act: "" });
  $("clear").href = location.pathname + state.formatView({ ...cleared, filters: {} });
  const now = Date.now() / 1000;
  const { since, until } = state.span(view, now);
  $("range").value = view.range === null ? "custom" : view.range;
  if (document.activeElement !== $("from")) $("from").value = state.toInputValue(since, view.tz);
  if (document.activeElement !== $("to")) $("to").value = state.toInputValue(until, view.tz);
  $("tz").value = view.tz;
  $("zone").textContent = `times in ${state.zoneLabel(view.tz, now)}`;
  const live = state.isLive(view, now);
  $("pause").disabled = !live;
  $("pause").textContent = view.paused ? "Resume live" : "Pause live";
  $("pause").setAttribute("aria-pressed", view.paused ? "true" : "false");
  showLive();
}

function showLive() {
  let text = "";
  if (!state.isLive(view, Date.now() / 1000)) text = "live: off (the range has ended)";
  else if (liveProblem) text = liveProblem;
  else if (followAbort && view.paused) text = `live: paused, ${pending} new`;
  else if (followAbort) text = "live";
  $("live-state").textContent = text;
}

async function render(force) {
  const mine = ++generation;
  view = state.parseView(location.search);
  updateLive(); // before loading: what arrives meanwhile is not missed
  syncControls();
  document.body.dataset.busy = "true";
  try {
    const now = Date.now() / 1000;
    const key = JSON.stringify([view.filters, view.range, view.from, view.to]);
    if (force || !main || main.key !== key) {
      const { since, until } = state.span(view, now);
      const result = await loadAttempts(view.filters, since, until, CAP);
      if (mine !== generation) return;
      main = { result, since, until, key };
      shown = SHOWN;
    }
    drawMain();
    await renderPanel(mine);
    if (mine !== generation) return;
    status(`updated ${state.fmtTime(now, view.tz, "hms")}`);
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (mine !== generation) return;
    status(String(error.message || error), true);
    if (error instanceof ApiError && error.status === 401) signOut(false);
  } finally {
    if (mine === generation) {
      document.body.dataset.view = location.search; // what the page shows (or the error it met) is this address
      document.body.dataset.busy = "false";
    }
  }
}

function drawMain() {
  const { result, since, until } = main;
  drawHistogram($("chart"), $("legend"), view, since, until, result.attempts);
  drawTop("top-sandboxes", result.attempts, "sandbox", view, (name) => (name === "" ? "(no sandbox)" : name));
  drawTop("top-destinations", result.attempts, "destination", view, (name) => name);
  drawTop("top-reasons", result.attempts, "reason", view, (name) => name);
  drawAttempts(result, view, shown);
  const reasons = $("reason-names");
  reasons.replaceChildren(...[...new Set(result.attempts.map((a) => a.reason))].sort().map((r) => new Option(r)));
}

async function renderPanel(mine) {
  const panel = $("panel");
  const key = JSON.stringify([view.attempt, view.box, view.act, view.tz, view.from, view.to, view.range]);
  if (!view.attempt && view.box === null) {
    if (!panel.hidden) {
      panel.hidden = true;
      const row = panelKey && document.querySelector(`#attempts tr[data-id="${JSON.parse(panelKey)[0]}"] a.open`);
      if (row) row.focus();
    }
    panelKey = "";
    return;
  }
  if (key === panelKey) return;
  const body = $("panel-body");
  $("back").href = location.pathname + state.formatView(state.withView(view, { attempt: "", box: null, act: "" }));
  if (view.attempt) {
    const data = await loadDetail(view.attempt, view);
    if (mine !== generation) return;
    panel.hidden = false; // shown before drawing: a chart is drawn at its box's width
    drawDetail(body, data, view);
  } else {
    const data = await loadSandbox(view.box, main.since, main.until);
    if (mine !== generation) return;
    panel.hidden = false;
    drawSandbox(body, data, view);
  }
  panelKey = key;
  if (!view.act) body.focus();
}

// --- live update: a matching new attempt reloads the view (at most every 1.5 s) unless paused ---
function onAttempt(record) {
  if (!matches(record, view.filters)) return;
  if (view.range === null && record.ts > view.to) return;
  if (view.paused) {
    pending += 1;
    showLive();
    return;
  }
  if (!refreshTimer) {
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      render(true);
    }, 1500);
  }
}

function updateLive() {
  const want = !$("main").hidden && state.isLive(view, Date.now() / 1000);
  if (want && !followAbort) {
    followAbort = new AbortController();
    document.body.dataset.follow = "connecting";
    const handlers = {
      attempt: onAttempt,
      state: (text) => {
        liveProblem = text;
        if (text) document.body.dataset.follow = "connecting";
        showLive();
      },
      flowing: () => { document.body.dataset.follow = "open"; },
    };
    follow(handlers, followAbort.signal);
  } else if (!want && followAbort) {
    followAbort.abort();
    followAbort = null;
    liveProblem = "";
    document.body.dataset.follow = "off";
  }
  clearInterval(slideTimer);
  slideTimer = null;
  if (want && !view.paused && view.range !== null) {
    slideTimer = setInterval(() => render(true), SLIDE_S * 1000);
  }
  showLive();
}

// --- controls ---
function applyFilters(event) {
  event.preventDefault();
  const form = $("filters");
  const filters = {};
  for (const name of state.FILTERS) {
    const value = form.elements[name].value.trim();
    if (value !== "") filters[name] = value;
  }
  navigate(state.formatView({ ...view, filters, attempt: "", box: null, act: "" }), false);
}

function applyRange(event) {
  if (event) event.preventDefault();
  const from = state.fromInputValue($("from").value, view.tz);
  const to = state.fromInputValue($("to").value, view.tz);
  if (from === null || to === null || !(from < to)) {
    status("the range needs a start before its end", true);
    return;
  }
  go({ range: null, from, to }, false);
}

function onRange() {
  const value = $("range").value;
  if (value === "custom") {
    $("from").focus();
    return;
  }
  go({ range: value, from: null, to: null }, false);
}

function onNavClick(event) {
  const link = event.target.closest("[data-nav]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  const url = new URL(link.getAttribute("href"), location.href);
  if (url.search !== location.search) navigate(url.search, false);
}

function onKey(event) {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName);
  if (event.key === "Escape" && !$("panel").hidden) {
    event.preventDefault();
    go({ attempt: "", box: null, act: "" }, false);
  } else if (event.key === "/" && !typing) {
    event.preventDefault();
    $("filters").elements.q.focus();
  }
}

async function loadNames() {
  const { sandboxes } = await api("/v1/sandboxes");
  $("sandbox-names").replaceChildren(...sandboxes.filter((s) => s !== "").map((s) => new Option(s)));
}

function signIn() {
  $("login").hidden = true;
  $("logout").hidden = false;
  $("controls").hidden = false;
  $("main").hidden = false;
  loadNames().catch(() => {});
  render(true);
}

function signOut(clear) {
  if (followAbort) followAbort.abort();
  followAbort = null;
  document.body.dataset.follow = "off";
  clearInterval(slideTimer);
  if (clear !== false) status("");
  setToken("");
  $("login").hidden = false;
  $("logout").hidden = true;
  $("controls").hidden = true;
  $("main").hidden = true;
  $("panel").hidden = true;
}

function start() {
  const token = initToken();
  view = state.parseView(location.search);
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token").value.trim());
    $("token").value = "";
    signIn();
  });
  $("logout").addEventListener("click", () => signOut(true));
  $("filters").addEventListener("submit", applyFilters);
  for (const name of ["category", "action"]) $("filters").elements[name].addEventListener("change", applyFilters);
  $("timebar").addEventListener("submit", applyRange);
  $("range").addEventListener("change", onRange);
  $("tz").addEventListener("change", () => go({ tz: $("tz").value }, true));
  $("pause").addEventListener("click", () => {
    const resuming = view.paused;
    pending = 0;
    go({ paused: !resuming }, true, resuming); // resuming reloads what came while paused
  });
  $("more").addEventListener("click", () => {
    shown += SHOWN;
    drawAttempts(main.result, view, shown);
  });
  document.addEventListener("click", onNavClick);
  document.addEventListener("keydown", onKey);
  window.addEventListener("popstate", () => render(false));
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { if (main && !$("main").hidden) drawMain(); }, 200);
  });
  if (token) signIn();
  else api("/v1/sandboxes").then(signIn, () => status("sign in with a token")); // a lab without tokens answers
}

start();
