// idstitch explorer: draws one profile's identity graph from /explorer/graph.
// Every value from the store is set as text (textContent), never parsed as markup, and
// shown with bidirectional controls escaped, so a value cannot disguise another.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 900;
const HEIGHT = 680;
const CX = WIDTH / 2;
const CY = HEIGHT / 2;
// What the drawing shows at most; the side panel lists the rest of what the server sent.
const DRAWN_IDENTIFIERS = 48;
const DRAWN_MERGES = 24;
const DRAWN_LINKS = 24;
const SHOWN_CHARACTERS = 300;
const COLOURS = {
  user_id: "#1f77b4",
  email: "#2ca02c",
  anonymous_id: "#ff7f0e",
  group_id: "#4f7cff",
  ga_client_id: "#8c564b",
  "ios.id": "#9467bd",
  "android.id": "#9467bd",
  "ios.idfa": "#e377c2",
  "android.idfa": "#e377c2",
  "ios.push_token": "#7f7f7f",
  "android.push_token": "#7f7f7f",
};

const form = document.getElementById("lookup");
const refInput = document.getElementById("ref");
const tokenInput = document.getElementById("token");
const statusLine = document.getElementById("status");
const canvas = document.getElementById("canvas");
const details = document.getElementById("details");

tokenInput.value = sessionStorage.getItem("idstitch.token") || "";
let latest = 0; // the newest request: answers to older ones are dropped

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

// A store value as displayed: bidi controls escaped, long text cut.
function shown(value, size) {
  let text = String(value).replace(/[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"));
  const limit = size || SHOWN_CHARACTERS;
  if (text.length > limit) text = text.slice(0, limit - 1) + "\u2026";
  return text;
}

function plural(n, word) {
  return n + " " + word + (n === 1 ? "" : "s");
}

function colour(type) {
  if (COLOURS[type]) return COLOURS[type];
  let h = 0;
  for (const ch of type) h = (h * 31 + ch.codePointAt(0)) % 360;
  return "hsl(" + h + ",55%,50%)";
}

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function clear() {
  canvas.replaceChildren();
  details.replaceChildren();
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
    clear();
    say("An access token is needed: one of the config's [[access_tokens]].", true);
    return;
  }
  const mine = ++latest;
  say("Loading " + shown(ref, 120) + " \u2026", false);
  let response;
  let body = null;
  try {
    response = await fetch("/explorer/graph?ref=" + encodeURIComponent(ref), {
      headers: { Authorization: basic(token) },
      cache: "no-store",
    });
    body = await response.json();
  } catch (err) {
    if (mine !== latest) return;
    clear();
    say("The server did not answer: " + err, true);
    return;
  }
  if (mine !== latest) return; // the user asked for another profile meanwhile
  if (!response.ok || body === null) {
    clear();
    const message = body && body.error ? body.error.message : "HTTP " + response.status;
    say(shown(message, 400), true);
    if (response.status === 401) sessionStorage.removeItem("idstitch.token");
    return;
  }
  sessionStorage.setItem("idstitch.token", token); // only a token that worked is kept
  draw(body);
  describe(body);
  const p = body.profile;
  const other = p.collection === "users" ? "account" : "user";
  let text = p.segment_id + ": " + plural(body.identifiers.length, "identifier") + ", " +
    plural(body.merges.length, "merged profile") + ", " +
    plural(body.links.length, "linked " + other) + (body.more_links ? " (the first 200)" : "") +
    ".";
  if (/^(use|acc)_/.test(ref.trim()) && ref.trim() !== p.segment_id)
    text = shown(ref.trim(), 60) + " was merged into " + text;
  say(text, false);
}

function ring(count, radius, start, span) {
  const points = [];
  for (let i = 0; i < count; i++) {
    const angle = start + (span * (i + 0.5)) / Math.max(count, 1);
    points.push([CX + radius * Math.cos(angle), CY + radius * Math.sin(angle), angle]);
  }
  return points;
}

function label(group, x, y, angle, lines, colour) {
  const right = Math.cos(angle) >= 0;
  const dx = right ? 12 : -12;
  const text = el("text", { x: x + dx, y: y + 4, "text-anchor": right ? "start" : "end",
    fill: colour || "#1d2330" });
  lines.forEach((line, i) => {
    text.appendChild(el("tspan", { x: x + dx, dy: i === 0 ? 0 : 14 }, line));
  });
  group.appendChild(text);
}

function more(svg, count, x, y) {
  if (count > 0) svg.appendChild(el("text", { x: x, y: y, "text-anchor": "middle",
    fill: "#5b6475" }, "+" + count + " more (listed on the right)"));
}

function draw(data) {
  canvas.replaceChildren();
  const svg = el("svg", { viewBox: "0 0 " + WIDTH + " " + HEIGHT, role: "img" });
  svg.appendChild(el("title", {}, "identity graph of " + data.profile.segment_id));
  const edges = el("g", { stroke: "#c3c9d4" });
  const nodes = el("g", { class: "node" });
  svg.append(edges, nodes);

  // Identifiers on the inner ring (two rings when there are many).
  const ids = data.identifiers.slice(0, DRAWN_IDENTIFIERS);
  const inner = ids.length > 16 ? [140, 200] : [170];
  const labelled = ids.length <= 24;
  ring(ids.length, 1, -Math.PI / 2, 2 * Math.PI).forEach(([, , angle], i) => {
    const r = inner[i % inner.length];
    const x = CX + r * Math.cos(angle);
    const y = CY + r * Math.sin(angle);
    const ident = ids[i];
    edges.appendChild(el("line", { x1: CX, y1: CY, x2: x, y2: y }));
    const g = el("g");
    g.appendChild(el("title", {}, shown(ident.type, 100) + ": " + shown(ident.id) +
      "\nsource " + shown(ident.source_id, 100) + ", first seen " + ident.created_at +
      "\nmessage " + shown(ident.first_message_id, 100)));
    g.appendChild(el("circle", { cx: x, cy: y, r: 7, fill: colour(ident.type) }));
    if (labelled) label(g, x, y, angle, [shown(ident.type, 20), shown(ident.id, 24)]);
    nodes.appendChild(g);
  });
  more(svg, data.identifiers.length - ids.length, CX, 22);

  // Merged profiles on the upper half of the outer ring, linked ones on the lower half.
  const merged = data.merges.slice(0, DRAWN_MERGES);
  ring(merged.length, 300, -Math.PI, Math.PI).forEach(([x, y, angle], i) => {
    const m = merged[i];
    edges.appendChild(el("line", { x1: CX, y1: CY, x2: x, y2: y, "stroke-dasharray": "4 4" }));
    const g = el("g");
    g.appendChild(el("title", {}, m.from_segment_id + " merged into " + m.into_segment_id +
      "\nby message " + shown(m.message_id, 100) + " (source " + shown(m.source_id, 100) +
      ") at " + m.timestamp));
    g.appendChild(el("circle", { cx: x, cy: y, r: 8, fill: "#fff", stroke: "#8a93a6",
      "stroke-width": 2 }));
    if (merged.length <= 12) label(g, x, y, angle, ["merged", shown(m.from_segment_id, 16)],
      "#5b6475");
    nodes.appendChild(g);
  });

  const links = data.links.slice(0, DRAWN_LINKS);
  ring(links.length, 300, 0.15, Math.PI - 0.3).forEach(([x, y, angle], i) => {
    const link = links[i];
    edges.appendChild(el("line", { x1: CX, y1: CY, x2: x, y2: y, stroke: "#9bb4ff" }));
    const g = el("g", { class: "link-node", tabindex: 0, role: "link" });
    const names = link.identifiers.map((r) => shown(r.type, 40) + ": " + shown(r.id, 80));
    g.appendChild(el("title", {}, link.segment_id + "\n" + names.join("\n") +
      "\n(click to draw it)"));
    g.appendChild(el("rect", { x: x - 8, y: y - 8, width: 16, height: 16, rx: 3,
      fill: "#4f7cff" }));
    const first = link.identifiers[0];
    if (links.length <= 12)
      label(g, x, y, angle, [shown(link.segment_id, 16),
        first ? shown(first.type, 14) + ": " + shown(first.id, 18) : ""]);
    const open = () => go(link.segment_id);
    g.addEventListener("click", open);
    g.addEventListener("keydown", (event) => {
      if (event.key === "Enter") open();
    });
    nodes.appendChild(g);
  });
  more(svg, data.links.length - links.length, CX, HEIGHT - 10);

  // The profile itself.
  const center = el("g");
  const isAccount = data.profile.collection === "accounts";
  center.appendChild(el("title", {}, data.profile.segment_id));
  center.appendChild(el("circle", { cx: CX, cy: CY, r: 26,
    fill: isAccount ? "#4f7cff" : "#1d2330" }));
  center.appendChild(el("text", { x: CX, y: CY + 44, "text-anchor": "middle" },
    data.profile.segment_id));
  nodes.appendChild(center);
  canvas.appendChild(svg);
}

function table(rows) {
  const t = html("table");
  for (const cells of rows) {
    const tr = html("tr");
    for (const cell of cells) {
      const td = html("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    t.appendChild(tr);
  }
  return t;
}

function linkButton(segmentId) {
  const button = html("button", segmentId);
  button.type = "button";
  button.className = "link";
  button.addEventListener("click", () => go(segmentId));
  return button;
}

function describe(data) {
  const p = data.profile;
  const traits = Object.entries(data.traits);
  details.replaceChildren(
    html("h2", "Profile"),
    table([
      ["segment_id", p.segment_id],
      ["collection", p.collection],
      ["created", p.created_at + " (arrival)"],
      ["first message", shown(p.first_message_id, 100)],
      ["first source", shown(p.first_source_id, 100)],
    ]),
    html("h2", "Identifiers (" + data.identifiers.length +
      (data.more_identifiers ? "+" : "") + ")"),
    table(data.identifiers.map((r) => [shown(r.type, 40), shown(r.id) + " \u00b7 " +
      shown(r.source_id, 60) + ", first seen " + r.created_at])),
    html("h2", "Merged into it (" + data.merges.length + (data.more_merges ? "+" : "") + ")"),
    table(data.merges.map((m) => [m.timestamp, m.from_segment_id + " \u2192 " +
      m.into_segment_id + " by message " + shown(m.message_id, 100)])),
    html("h2", "Linked " + (p.collection === "users" ? "accounts" : "users") + " (" +
      data.links.length + (data.more_links ? "+, the first 200" : "") + ")"),
    table(data.links.map((l) => [linkButton(l.segment_id), l.identifiers.map((r) =>
      shown(r.type, 40) + ":" + shown(r.id, 80)).join(", ") +
      (l.more_identifiers ? ", \u2026" : "")])),
    html("h2", "Traits (" + traits.length + (data.more_traits ? "+, the first 200" : "") + ")"),
    table(traits.map(([k, v]) => [shown(k, 60), shown(JSON.stringify(v))]))
  );
}

function go(ref) {
  refInput.value = ref;
  const hash = "#ref=" + encodeURIComponent(ref);
  if (location.hash === hash) load(ref);
  else location.hash = hash;
}

function fromHash() {
  const match = /^#ref=(.*)$/s.exec(location.hash);
  if (!match) {
    latest++;
    clear();
    return;
  }
  let ref;
  try {
    ref = decodeURIComponent(match[1]);
  } catch (err) {
    latest++;
    clear();
    say("The address holds a reference that is not URL-encoded; enter it in the box.", true);
    return;
  }
  refInput.value = ref;
  load(ref);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go(refInput.value.trim());
});
window.addEventListener("hashchange", fromHash);
fromHash();
