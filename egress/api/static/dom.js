// Building the page: elements whose text is set as text (textContent), never parsed as markup. Record fields come
// from sandboxes and are untrusted; nothing in the dashboard parses them as HTML (tests/api/test_dashboard_static.py
// keeps the markup sinks out of every script) or puts them in an address other than as a query parameter of the
// dashboard's own.

import { CATEGORIES, formatView } from "./state.js";

const SVG = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

// A link to another view of the dashboard: a real address (opens in a new tab, can be copied), which the page
// follows itself without reloading (data-nav).
export function viewLink(view, text, className) {
  const a = el("a", text, className);
  a.href = location.pathname + formatView(view);
  a.dataset.nav = "";
  return a;
}

export function chip(category) {
  return el("span", category, `chip ${CATEGORIES.includes(category) ? category : "policy"}`);
}

// A definition list from [term, value] pairs; a value may be a node or text.
export function facts(pairs) {
  const dl = el("dl", null, "facts");
  for (const [term, value] of pairs) {
    dl.append(el("dt", term));
    const dd = el("dd");
    if (value instanceof Node) dd.append(value);
    else dd.textContent = String(value);
    dl.append(dd);
  }
  return dl;
}

export function emptyRow(body, columns, text) {
  const tr = el("tr");
  const td = el("td", text, "none");
  td.colSpan = columns;
  tr.append(td);
  body.append(tr);
}

export function endpoint(address, port) {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

export function destination(a) {
  return `${endpoint(a.dst, a.dport)}/${a.transport}`;
}
