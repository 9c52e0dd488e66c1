// The overview: the attempts of the view as a table (each row opens the attempt), and the top sandboxes,
// destinations and reasons among them (each a link that adds the filter).

import { $, chip, destination, el, emptyRow, viewLink } from "./dom.js";
import { fmtTime, withView } from "./state.js";

export const SHOWN = 100;

function actionText(a) {
  return a.count > 1 ? `${a.action} ×${a.count}` : a.action;
}

function attemptRow(a, actions, view) {
  const tr = el("tr");
  tr.dataset.id = a.id;
  const time = el("td", null, "mono nowrap");
  time.append(viewLink(withView(view, { attempt: a.id, box: null }), fmtTime(a.ts, view.tz), "open"));
  const sandbox = el("td");
  sandbox.append(viewLink(withView(view, { box: a.sandbox, act: "", attempt: "" }), a.sandbox === "" ? "(none)" : a.sandbox));
  const cat = el("td");
  cat.append(chip(a.category));
  tr.append(time, sandbox, el("td", actionText(a), `verdict ${a.action}`), cat, el("td", a.reason));
  tr.append(el("td", destination(a), "mono"), el("td", a.host, "mono"), el("td", a.rule, "mono"));
  tr.append(el("td", a.evidence, "mono evidence"));
  const during = el("td", null, "during");
  if (actions && actions.length) {
    for (const act of actions.slice(0, 2)) {
      during.append(el("span", `${act.kind}: ${act.command}`, "act"));
    }
  } else {
    during.append(el("span", actions ? "none reported" : "open to see", "none"));
  }
  tr.append(during);
  return tr;
}

export function drawAttempts(result, view, shown) {
  const body = $("attempts").tBodies[0];
  body.replaceChildren();
  const rows = result.attempts.slice(0, shown);
  for (const a of rows) body.append(attemptRow(a, result.correlated[a.id], view));
  if (!rows.length) emptyRow(body, 10, "no attempts match this view");
  const repeats = result.attempts.reduce((s, a) => s + a.count, 0);
  let summary = `${result.attempts.length} records (${repeats} attempts with repeats)`;
  if (rows.length < result.attempts.length) summary += `, the newest ${rows.length} shown`;
  if (result.truncated) summary += "; only the newest records of the window were read: narrow the range or filters";
  $("attempts-summary").textContent = summary;
  $("more").hidden = rows.length >= result.attempts.length;
}

// Top values of one field among the attempts (their counts), each a link adding that filter.
export function drawTop(tableId, attempts, field, view, label) {
  const counts = new Map();
  for (const a of attempts) {
    const key = field === "destination" ? (a.host || a.dst) : a[field];
    counts.set(key, (counts.get(key) || 0) + a.count);
  }
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  const rows = [...counts.entries()].sort((p, q) => q[1] - p[1] || String(p[0]).localeCompare(String(q[0]))).slice(0, 8);
  if (!rows.length) {
    emptyRow(body, 3, "none");
    return;
  }
  const max = rows[0][1];
  for (const [name, n] of rows) {
    const tr = el("tr");
    const cell = el("td", null, "name");
    cell.append(viewLink(withView(view, { filters: { [field]: name }, attempt: "", box: null }), label(name)));
    const barCell = el("td");
    const bar = el("div", null, "bar");
    bar.style.width = `${Math.max(1, (100 * n) / max)}%`;
    barCell.append(bar);
    tr.append(cell, barCell, el("td", n, "count"));
    body.append(tr);
  }
}
