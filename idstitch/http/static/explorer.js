// idstitch explorer: draws one profile's identity graph from /explorer/graph.
// Every value from the store is set as text (textContent), never parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 900;
const HEIGHT = 680;
const CX = WIDTH / 2;
const CY = HEIGHT / 2;

const form = document.getElementById("lookup");
const refInput = document.getElementById("ref");
const tokenInput = document.getElementById("token");
const statusLine = document.getElementById("status");
const canvas = document.getElementById("canvas");
const details = document.getElementById("details");

tokenInput.value = sessionStorage.getItem("idstitch.token") || "";

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(name, text) {
  const node = document.createElement(name);
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(text, size) {
  const value = String(text);
  return value.length > size ? value.slice(0, size - 1) + "\u2026" : value;
}

// One hue per identifier type, the same on every drawing.
function hue(type) {
  let h = 0;
  for (const ch of type) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function basic(token) {
  const bytes = new TextEncoder().encode(token + ":");
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return "Basic " + btoa(binary);
}

async function load(ref) {
  const token = tokenInput.value.trim();
  if (!token) {
    say("An access token is needed: one of the config's [[access_tokens]].", true);
    return;
  }
  sessionStorage.setItem("idstitch.token", token);
  say("Loading " + ref + " \u2026", false);
  let response;
  try {
    response = await fetch("/explorer/graph?ref=" + encodeURIComponent(ref), {
      headers: { Authorization: basic(token) },
    });
  } catch (err) {
    say("The server did not answer: " + err, true);
    return;
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok || body === null) {
    const message = body && body.error ? body.error.message : "HTTP " + response.status;
    say(message, true);
    return;
  }
  draw(body);
  describe(body);
  const p = body.profile;
  say(
    p.segment_id + ": " + body.identifiers.length + " identifiers, " + body.merges.length +
      " merges, " + body.links.length + (body.more_links ? "+" : "") + " linked " +
      (p.collection === "users" ? "accounts" : "users") + ".",
    false
  );
}

function ring(count, radius, start, span) {
  const points = [];
  for (let i = 0; i < count; i++) {
    const angle = start + (span * (i + 0.5)) / Math.max(count, 1);
    points.push([CX + radius * Math.cos(angle), CY + radius * Math.sin(angle), angle]);
  }
  return points;
}

function label(group, x, y, angle, lines, color) {
  const right = Math.cos(angle) >= 0;
  const text = el("text", {
    x: x + (right ? 12 : -12),
    y: y + 4,
    "text-anchor": right ? "start" : "end",
    fill: color || "#1d2330",
  });
  lines.forEach((line, i) => {
    text.appendChild(el("tspan", { x: x + (right ? 12 : -12), dy: i === 0 ? 0 : 14 }, line));
  });
  group.appendChild(text);
}

function draw(data) {
  canvas.replaceChildren();
  const svg = el("svg", { viewBox: "0 0 " + WIDTH + " " + HEIGHT, role: "img" });
  svg.appendChild(el("title", {}, "identity graph of " + data.profile.segment_id));
  const edges = el("g", { stroke: "#c3c9d4" });
  const nodes = el("g", { class: "node" });
  svg.append(edges, nodes);

  // Identifiers on the inner ring (two rings when there are many).
  const ids = data.identifiers;
  const inner = ids.length > 24 ? [150, 215] : [175];
  ring(ids.length, 1, -Math.PI / 2, 2 * Math.PI).forEach(([, , angle], i) => {
    const r = inner[i % inner.length];
    const x = CX + r * Math.cos(angle);
    const y = CY + r * Math.sin(angle);
    const ident = ids[i];
    edges.appendChild(el("line", { x1: CX, y1: CY, x2: x, y2: y }));
    const g = el("g");
    g.appendChild(el("title", {}, ident.type + ": " + ident.id + "\nsource " + ident.source_id +
      ", first seen " + ident.created_at + "\nmessage " + ident.first_message_id));
    g.appendChild(el("circle", { cx: x, cy: y, r: 7, fill: "hsl(" + hue(ident.type) + ",65%,55%)" }));
    if (ids.length <= 40) label(g, x, y, angle, [ident.type, short(ident.id, 26)]);
    nodes.appendChild(g);
  });

  // Merged-away profiles and linked profiles share the outer ring: merges on the upper
  // half, links on the lower half.
  const merged = data.merges;
  ring(merged.length, 300, -Math.PI, Math.PI).forEach(([x, y, angle], i) => {
    const m = merged[i];
    edges.appendChild(el("line", { x1: CX, y1: CY, x2: x, y2: y, "stroke-dasharray": "4 4" }));
    const g = el("g");
    g.appendChild(el("title", {}, m.from_segment_id + " merged into " + m.into_segment_id +
      "\nby message " + m.message_id + " (source " + m.source_id + ") at " + m.timestamp));
    g.appendChild(el("circle", { cx: x, cy: y, r: 8, fill: "#fff", stroke: "#8a93a6",
      "stroke-width": 2 }));
    if (merged.length <= 16) label(g, x, y, angle, ["merged", short(m.from_segment_id, 16)], "#5b6475");
    nodes.appendChild(g);
  });

  const links = data.links;
  ring(links.length, 300, 0, Math.PI).forEach(([x, y, angle], i) => {
    const link = links[i];
    edges.appendChild(el("line", { x1: CX, y1: CY, x2: x, y2: y, stroke: "#9bb4ff" }));
    const g = el("g", { class: "link-node", tabindex: 0 });
    const names = link.identifiers.map((r) => r.type + ": " + r.id).join("\n");
    g.appendChild(el("title", {}, link.segment_id + "\n" + names + "\n(click to draw it)"));
    g.appendChild(el("rect", { x: x - 8, y: y - 8, width: 16, height: 16, rx: 3,
      fill: "#4f7cff" }));
    const first = link.identifiers[0];
    if (links.length <= 16)
      label(g, x, y, angle, [short(link.segment_id, 16), first ? short(first.type + ": " + first.id, 26) : ""]);
    const open = () => go(link.segment_id);
    g.addEventListener("click", open);
    g.addEventListener("keydown", (event) => {
      if (event.key === "Enter") open();
    });
    nodes.appendChild(g);
  });

  // The profile itself.
  const center = el("g");
  const isAccount = data.profile.collection === "accounts";
  center.appendChild(el("title", {}, data.profile.segment_id));
  center.appendChild(el("circle", { cx: CX, cy: CY, r: 26, fill: isAccount ? "#4f7cff" : "#1d2330" }));
  center.appendChild(el("text", { x: CX, y: CY + 44, "text-anchor": "middle" },
    data.profile.segment_id));
  nodes.appendChild(center);
  canvas.appendChild(svg);
}

function table(rows) {
  const t = html("table");
  for (const cells of rows) {
    const tr = html("tr");
    for (const cell of cells) tr.appendChild(html("td", cell === null ? "" : String(cell)));
    t.appendChild(tr);
  }
  return t;
}

function describe(data) {
  const p = data.profile;
  details.replaceChildren(
    html("h2", "Profile"),
    table([
      ["segment_id", p.segment_id],
      ["collection", p.collection],
      ["created_at", p.created_at],
      ["first message", p.first_message_id],
      ["first source", p.first_source_id],
    ]),
    html("h2", "Identifiers (" + data.identifiers.length + ")"),
    table(data.identifiers.map((r) => [r.type, r.id + "  \u00b7 " + r.source_id + ", " + r.created_at])),
    html("h2", "Merges (" + data.merges.length + ")"),
    table(data.merges.map((m) => [m.timestamp, m.from_segment_id + " \u2192 " + m.into_segment_id +
      " by " + m.message_id])),
    html("h2", "Links (" + data.links.length + (data.more_links ? "+" : "") + ")"),
    table(data.links.map((l) => [l.segment_id, l.identifiers.map((r) => r.type + ":" + r.id).join(", ")])),
    html("h2", "Traits (" + Object.keys(data.traits).length + (data.more_traits ? "+" : "") + ")"),
    table(Object.entries(data.traits).map(([k, v]) => [k, JSON.stringify(v)]))
  );
}

function go(ref) {
  refInput.value = ref;
  location.hash = "ref=" + encodeURIComponent(ref);
}

function fromHash() {
  const match = /^#ref=(.*)$/.exec(location.hash);
  if (!match) return;
  let ref;
  try {
    ref = decodeURIComponent(match[1]);
  } catch (err) {
    return;
  }
  refInput.value = ref;
  load(ref);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const ref = refInput.value.trim();
  if (location.hash === "#ref=" + encodeURIComponent(ref)) load(ref);
  else go(ref);
});
window.addEventListener("hashchange", fromHash);
fromHash();
