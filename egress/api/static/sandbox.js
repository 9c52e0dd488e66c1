// One sandbox: its timeline over the view's range (GET /v1/sandboxes/{name}/timeline: each action with the attempts
// under it, placed by the API's own containment rule: an attempt sits under the first of its `related` actions,
// the innermost, as `egress timeline` prints it), its quarantine state when the API has GET /v1/quarantine, and
// the policy version the fleet applies (GET /v1/policy).

import { api, hasPath } from "./api.js";
import { drawTimeline } from "./charts.js";
import { chip, destination, el, facts, viewLink } from "./dom.js";
import { duration, fmtTime, withView } from "./state.js";

export async function loadSandbox(name, since, until) {
  const path = `/v1/sandboxes/${encodeURIComponent(name)}/timeline`;
  const failed = (error) => ({ error: String(error.message || error) });
  const [timeline, policy, quarantine] = await Promise.all([
    api(path, { since: String(since), until: String(until), limit: "1000" }),
    api("/v1/policy").catch(failed),
    hasPath("/v1/quarantine").then((has) => (has ? api("/v1/quarantine").catch(failed) : null)),
  ]);
  return { timeline, policy, quarantine };
}

function attemptLine(item, view, also) {
  const a = item.attempt;
  const li = el("li", null, "attempt");
  li.append(el("span", fmtTime(a.ts, view.tz, "hms") + " ", "mono muted"), chip(a.category));
  li.append(viewLink(withView(view, { attempt: a.id, box: null, act: "" }),
    ` ${a.count > 1 ? `${a.action} ×${a.count}` : a.action} ${destination(a)} ${a.host} — ${a.reason}`));
  if (also.length) li.append(el("span", ` (also during ${also.join(", ")})`, "muted"));
  return li;
}

// GET /v1/quarantine's word on this sandbox, as text: cut off now (since when, by which gateway, why), or not,
// with its latest release.
function quarantineText(quarantine, name, tz) {
  if (quarantine === null) return "not reported by this API";
  if (quarantine.error) return `unknown (${quarantine.error})`;
  const now = (quarantine.quarantined || []).find((q) => q.sandbox === name);
  if (now) {
    return `QUARANTINED since ${fmtTime(now.since, tz)} by ${now.gateway}: ${now.reason}`;
  }
  const released = (quarantine.events || []).find((e) => e.sandbox === name && e.event === "release");
  return released ? `not quarantined (released ${fmtTime(released.time, tz)} by ${released.who})` : "not quarantined";
}

function policyText(policy, timeline, view) {
  if (policy.error) return `unknown (${policy.error})`;
  if (!policy.applied) return "no fleet version applied: each gateway runs its own policy file";
  const v = policy.applied;
  return `version ${v.version} (sha256:${v.digest.slice(0, 16)}), applied ${fmtTime(v.time, view.tz)} by ${v.who}`;
}

function gatewaysText(policy, gateways) {
  if (policy.error || !policy.gateways) return "";
  const shown = policy.gateways.filter((g) => gateways.size === 0 || gateways.has(g.gateway));
  return shown.map((g) => `${g.gateway}: ${g.state}${g.version ? ` v${g.version}` : ""}${g.error ? ` (${g.error})` : ""}`).join("; ");
}

export function drawSandbox(box, data, view) {
  const { timeline, policy } = data;
  const heading = el("h2", `Sandbox ${timeline.sandbox === "" ? "(none)" : timeline.sandbox}`);
  heading.id = "panel-title";
  const attempts = timeline.items.filter((i) => i.type === "attempt");
  const gateways = new Set(attempts.map((i) => i.attempt.gateway));
  const filter = viewLink(withView(view, { filters: { sandbox: timeline.sandbox }, box: null, act: "" }), "show only its attempts in the list");
  const summary = facts([
    ["range", `${fmtTime(timeline.since, view.tz)} → ${fmtTime(timeline.until, view.tz)}`],
    ["quarantine", quarantineText(data.quarantine, timeline.sandbox, view.tz)],
    ["policy applied", policyText(policy, timeline, view)],
    ["its gateways", gatewaysText(policy, gateways) || "—"],
    ["attempts", `${attempts.length} records`],
  ]);
  const quarantined = summary.querySelectorAll("dd")[1];
  quarantined.dataset.field = "quarantine";
  if (quarantined.textContent.startsWith("QUARANTINED")) quarantined.classList.add("warn");
  const chart = el("div", null, "timeline-chart");
  const under = new Map();
  const loose = [];
  for (const item of attempts) {
    if (item.related.length) {
      if (!under.has(item.related[0])) under.set(item.related[0], []);
      under.get(item.related[0]).push(item);
    } else {
      loose.push(item);
    }
  }
  const list = el("ol", null, "timeline");
  for (const item of timeline.items) {
    if (item.type !== "action") continue;
    const act = item.action;
    const li = el("li", null, "action");
    li.id = "action-" + act.id;
    li.dataset.action = act.id;
    if (act.id === view.act) {
      li.classList.add("current");
      li.tabIndex = -1;
    }
    const took = act.end === null ? "running" : duration(act.end - act.start);
    li.append(el("div", `${fmtTime(act.start, view.tz)} · ${act.kind} ${act.id} · ${took}`, "muted"));
    li.append(el("pre", act.command, "command"));
    const items = under.get(act.id) || [];
    const sub = el("ul", null, "under");
    for (const a of items) sub.append(attemptLine(a, view, a.related.slice(1)));
    if (!items.length) sub.append(el("li", "no attempt during it", "none"));
    li.append(sub);
    list.append(li);
  }
  if (loose.length) {
    const li = el("li", null, "action loose");
    li.append(el("div", "attempts during no reported action", "muted"));
    const sub = el("ul", null, "under");
    for (const a of loose) sub.append(attemptLine(a, view, []));
    li.append(sub);
    list.append(li);
  }
  if (!timeline.items.length) list.append(el("li", "nothing in this range", "none"));
  const notes = [];
  if (timeline.truncated) notes.push(el("p", "the API cut this timeline: only its newest items are shown", "warn"));
  if (view.act && !list.querySelector(".action.current")) {
    notes.push(el("p", `action ${view.act} is not in this range`, "warn"));
  }
  box.replaceChildren(heading, filter, summary, ...notes, chart, list);
  drawTimeline(chart, timeline, view.tz); // once in the page: drawn at its width
  const current = view.act ? box.querySelector(".action.current") : null;
  if (current) {
    current.scrollIntoView({ block: "center" });
    current.focus({ preventScroll: true });
  }
}
