// One attempt in full (GET /v1/attempts/{id}): what matched (evidence), what decided (rule, detector, reason), the
// flow, the repeats it stands for, the agent actions it happened during (each leading to its sandbox's timeline),
// and the sandbox's neighbouring attempts.

import { api } from "./api.js";
import { chip, destination, el, endpoint, facts, viewLink } from "./dom.js";
import { duration, fmtTime, withView } from "./state.js";

const NEIGHBOURHOOD = 600; // seconds each side of the attempt
const NEIGHBOURS = 10;

export async function loadDetail(id, view) {
  const detail = await api(`/v1/attempts/${encodeURIComponent(id)}`);
  const a = detail.attempt;
  const around = await api("/v1/attempts", {
    sandbox: a.sandbox,
    since: String(Math.max(0, a.ts - NEIGHBOURHOOD)),
    until: String(a.ts + NEIGHBOURHOOD),
    limit: "200",
  });
  // The nearest ones on each side (the page is newest first and may not reach back to the attempt when busy).
  const sorted = around.attempts.filter((n) => n.id !== a.id).sort((p, q) => p.ts - q.ts || (p.id < q.id ? -1 : 1));
  const before = sorted.filter((n) => n.ts <= a.ts).slice(-NEIGHBOURS);
  const after = sorted.filter((n) => n.ts > a.ts).slice(0, NEIGHBOURS);
  return { attempt: a, actions: detail.actions, around: [...before, a, ...after] };
}

function repeats(a, tz) {
  if (a.count <= 1) return "1 (not aggregated)";
  return `${a.count} identical attempts, ${fmtTime(a.first_ts, tz)} to ${fmtTime(a.last_ts, tz)}` +
    ` (${duration(a.last_ts - a.first_ts)})`;
}

function section(title, ...children) {
  const part = el("section", null, "part");
  part.append(el("h3", title), ...children);
  return part;
}

function actionItem(act, a, view) {
  const li = el("li", null, "action-item");
  const head = el("div");
  const where = act.distance_s > 0 ? `${act.distance_s.toFixed(1)} s outside its span` : "inside its span";
  head.append(viewLink(withView(view, { attempt: "", box: a.sandbox, act: act.id }), `${act.kind} ${act.id}`, "follow"));
  head.append(el("span", ` · ${fmtTime(act.start, view.tz)} → ${act.end === null ? "running" : fmtTime(act.end, view.tz)} · ${where}`, "muted"));
  li.append(head, el("pre", act.command, "command"));
  return li;
}

export function drawDetail(box, data, view) {
  const a = data.attempt;
  const heading = el("h2", null);
  heading.id = "panel-title";
  heading.append(chip(a.category), el("span", ` ${a.action} ${destination(a)}${a.host ? " " + a.host : ""}`));
  const sandbox = viewLink(withView(view, { attempt: "", box: a.sandbox, act: "" }), a.sandbox === "" ? "(no sandbox)" : a.sandbox);
  const parts = [heading];
  parts.push(section("Decision", facts([
    ["action", a.action], ["reason", a.reason], ["category", a.category], ["severity", a.severity || "—"],
    ["rule", a.rule || "—"], ["detector", a.detector || "—"], ["protocol", a.protocol],
    ["signature id", a.signature_id || "—"],
  ])));
  parts.push(section("Evidence", el("pre", a.evidence === "" ? "(none)" : a.evidence, "evidence-full")));
  parts.push(section("Flow", facts([
    ["sandbox", sandbox], ["source", endpoint(a.src, a.sport)], ["destination", destination(a)],
    ["host", a.host || "—"], ["gateway", a.gateway], ["community id", a.community_id || "—"],
    ["time", `${fmtTime(a.ts, view.tz)} (${a.timestamp || ""})`], ["repeats", repeats(a, view.tz)], ["record id", a.id],
  ])));
  const acts = el("ol", null, "actions");
  for (const act of data.actions) acts.append(actionItem(act, a, view));
  if (!data.actions.length) acts.append(el("li", "no agent action reported around this time", "none"));
  parts.push(section("Agent actions it happened during", acts));
  const near = el("ol", null, "neighbours");
  for (const n of data.around) {
    const li = el("li", null, n.id === a.id ? "self" : "");
    li.append(el("span", fmtTime(n.ts, view.tz, "hms") + " ", "mono muted"), chip(n.category));
    const text = ` ${n.action} ${destination(n)} ${n.host} — ${n.reason}`;
    if (n.id === a.id) li.append(el("strong", text + " (this one)"));
    else li.append(viewLink(withView(view, { attempt: n.id }), text));
    near.append(li);
  }
  parts.push(section(`Neighbouring attempts of this sandbox (±${NEIGHBOURHOOD / 60} min)`, near));
  box.replaceChildren(...parts);
}
