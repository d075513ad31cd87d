// idstitch explorer: draws one profile's identity graph from /explorer/graph with cytoscape.js
// (loaded before this script): the identifiers are the nodes, the messages that joined them
// the edges, the profiles merged into it outlined groups, and what the rules refused dashed red
// edges. Picking two identifiers asks /explorer/explain why they are (or are not) one profile.
// Every detail drawn is also in the lists below the graph, which the keyboard reaches.
// Every value from the store is set as text (textContent), never parsed as markup, and
// shown with bidirectional controls escaped, so a value cannot disguise another.
"use strict";

// What the drawing shows at most; the lists below it hold everything the server sent.
const DRAWN_IDENTIFIERS = 300;
const SHOWN_CHARACTERS = 300;
const LABEL_CHARACTERS = 28;
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
const KINDS = {
  attach: "carried both identifiers",
  merge: "merged two profiles",
  alias: "aliased one identifier to the other",
};
const SEGMENT = "segment_id:"; // a refused merge names the other profile this way

const form = document.getElementById("lookup");
const refInput = document.getElementById("ref");
const tokenInput = document.getElementById("token");
const statusLine = document.getElementById("status");
const stage = document.getElementById("stage");
const container = document.getElementById("graph");
const tip = document.getElementById("tip");
const selected = document.getElementById("selected");
const explainPanel = document.getElementById("explain");
const identifierList = document.getElementById("identifiers");
const edgeList = document.getElementById("edges");
const refusalList = document.getElementById("refusals");
const asideTables = document.getElementById("aside-tables");

tokenInput.value = sessionStorage.getItem("idstitch.token") || "";
let latest = 0; // the newest request: answers to older ones are dropped
let latestExplain = 0;
let graph = null; // the cytoscape instance of the profile drawn
let current = null; // the data it was drawn from
let picked = []; // up to two identifier references, for /explorer/explain
const buttons = new Map(); // identifier reference -> its button in the list

function html(name, text, attrs) {
  const node = document.createElement(name);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function button(text, onClick, className) {
  const b = html("button", text, { type: "button" });
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

// A store value as displayed: bidi controls escaped, long text cut.
function shown(value, size) {
  if (value === null || value === undefined) return "";
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

function basic(token) {
  const bytes = new TextEncoder().encode(token + ":");
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return "Basic " + btoa(binary);
}

function keyOf(identifier) {
  return identifier.type + ":" + identifier.id;
}

// A refusal names the identifier's value `value` (or `id`) and its source `source` (or
// `source_id`, as edges and identifiers do).
function valueOf(item) {
  return item.value !== undefined ? item.value : item.id;
}

function sourceOf(item) {
  return item.source_id !== undefined ? item.source_id : item.source;
}

// A node's label: `type:value`, or the segment_id of another profile, cut when long.
function nodeLabel(key) {
  return key.startsWith(SEGMENT) ? "profile " + shown(refOf(key), LABEL_CHARACTERS - 8)
    : shown(key, LABEL_CHARACTERS);
}

// What /explorer/explain takes for a node: `type:value`, or the segment_id of a profile.
function refOf(key) {
  return key.startsWith(SEGMENT) ? key.slice(SEGMENT.length) : key;
}

// GET a JSON route with the token: {body} or {error: text, status}.
async function ask(url, token) {
  let response;
  let body = null;
  try {
    response = await fetch(url, { headers: { Authorization: basic(token) }, cache: "no-store" });
    body = await response.json();
  } catch (err) {
    if (response === undefined) return { error: "The server did not answer: " + err, status: 0 };
  }
  if (!response.ok || body === null) {
    const message = body && body.error ? body.error.message : "HTTP " + response.status;
    if (response.status === 401) sessionStorage.removeItem("idstitch.token");
    return { error: shown(message, 400), status: response.status };
  }
  return { body: body };
}

function clear() {
  if (graph) graph.destroy();
  graph = null;
  current = null;
  picked = [];
  buttons.clear();
  tip.hidden = true;
  for (const node of [selected, explainPanel, identifierList, edgeList, refusalList, asideTables])
    node.replaceChildren();
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
  const answer = await ask("/explorer/graph?ref=" + encodeURIComponent(ref), token);
  if (mine !== latest) return; // the user asked for another profile meanwhile
  clear();
  if (answer.error) {
    say(answer.error, true);
    return;
  }
  sessionStorage.setItem("idstitch.token", token); // only a token that worked is kept
  const data = answer.body;
  current = data;
  const p = data.profile;
  const other = p.collection === "users" ? "account" : "user";
  const groups = profilesOf(data).length - 1;
  let text = p.segment_id + ": " + plural(data.identifiers.length, "identifier") +
    (data.more_identifiers ? "+" : "") + ", " +
    plural((data.edges || []).length, "edge") + (data.more_edges ? "+" : "") + ", " +
    plural(Math.max(groups, data.merges.length), "merged profile") + ", " +
    plural((data.refusals || []).length, "refusal") + (data.more_refusals ? "+" : "") + ", " +
    plural(data.links.length, "linked " + other) + (data.more_links ? " (the first 200)" : "") +
    ".";
  if (data.identifiers.length > DRAWN_IDENTIFIERS)
    text += " The graph draws the first " + DRAWN_IDENTIFIERS + " identifiers; the lists hold all.";
  if (/^(use|acc)_/.test(ref.trim()) && ref.trim() !== p.segment_id)
    text = shown(ref.trim(), 60) + " was merged into " + text;
  say(text, false);
  describe(data);
  draw(data);
  showPickHint();
}

// The profiles that first held the identifiers: this one first, then the merged-away ones.
function profilesOf(data) {
  const own = data.profile.segment_id;
  const seen = [own];
  for (const identifier of data.identifiers) {
    const sid = identifier.profile || own;
    if (!seen.includes(sid)) seen.push(sid);
  }
  return seen;
}

// ---- the drawing ----

function elements(data) {
  const own = data.profile.segment_id;
  const merged = profilesOf(data).length > 1;
  const nodes = [];
  const edges = [];
  const drawn = new Set();
  const groups = new Set();
  const ids = data.identifiers.slice(0, DRAWN_IDENTIFIERS);
  const radius = 40 + 12 * ids.length; // a start for the layout; it moves them
  ids.forEach((identifier, i) => {
    const key = keyOf(identifier);
    if (drawn.has(key)) return;
    drawn.add(key);
    const sid = identifier.profile || own;
    let parent;
    if (merged) {
      parent = "group " + sid;
      if (!groups.has(sid)) {
        groups.add(sid);
        nodes.push({
          group: "nodes",
          classes: sid === own ? "group own" : "group",
          data: { id: parent, segment_id: sid,
            label: sid === own ? "this profile" : "merged " + shown(sid, LABEL_CHARACTERS - 7) },
        });
      }
    }
    const angle = (2 * Math.PI * i) / Math.max(ids.length, 1);
    nodes.push({
      group: "nodes",
      data: { id: key, parent: parent, identifier: identifier, colour: colour(identifier.type),
        label: shown(key, LABEL_CHARACTERS) },
      position: { x: radius * Math.cos(angle), y: radius * Math.sin(angle) },
    });
  });
  (data.edges || []).forEach((edge, i) => {
    if (!drawn.has(edge.from) || !drawn.has(edge.to)) return;
    edges.push({
      group: "edges",
      classes: KINDS[edge.kind] ? edge.kind : "",
      data: { id: "edge " + i, source: edge.from, target: edge.to, edge: edge },
    });
  });
  // A refusal joins the refused identifier (or `segment_id:` of a refused merge) and the
  // identifier or profile its message went to: drawn when one end is in the drawing.
  const held = new Set(data.identifiers.map(keyOf));
  (data.refusals || []).forEach((refusal, i) => {
    const ends = [refusal.from, refusal.to];
    if (!refusal.from || !refusal.to || !ends.some((end) => drawn.has(end))) return;
    if (ends.some((end) => held.has(end) && !drawn.has(end))) return; // past the first drawn
    for (const end of ends) {
      if (drawn.has(end)) continue;
      drawn.add(end);
      const angle = (2 * Math.PI * i) / Math.max(data.refusals.length, 1);
      nodes.push({
        group: "nodes",
        classes: "outside",
        data: { id: end, outside: true, label: nodeLabel(end) },
        position: { x: (radius + 90) * Math.cos(angle), y: (radius + 90) * Math.sin(angle) },
      });
    }
    edges.push({
      group: "edges",
      classes: "refusal",
      data: { id: "refusal " + i, source: refusal.from, target: refusal.to, refusal: refusal,
        label: shown(refusal.rule, 40) },
    });
  });
  return nodes.concat(edges);
}

const STYLE = [
  { selector: "node", style: {
    "background-color": "data(colour)", label: "data(label)", width: 18, height: 18,
    "font-size": 12, color: "#1d2330", "text-valign": "bottom", "text-margin-y": 4,
    "min-zoomed-font-size": 7, "border-width": 0 } },
  { selector: "node.outside", style: {
    "background-color": "#eef0f4", "border-width": 2, "border-style": "dashed",
    "border-color": "#8a93a6", color: "#5b6475" } },
  { selector: "node.group", style: {
    shape: "round-rectangle", "background-color": "#f6f7f9", "background-opacity": 0.7,
    "border-width": 2, "border-style": "dashed", "border-color": "#8a93a6",
    "text-valign": "top", "text-halign": "center", "text-margin-y": -4, color: "#5b6475",
    padding: 16 } },
  { selector: "node.group.own", style: {
    "border-style": "solid", "border-color": "#1d2330", "background-color": "#fff" } },
  { selector: "edge", style: {
    width: 2, "line-color": "#9aa3b5", "curve-style": "bezier" } },
  { selector: "edge.merge", style: { width: 5, "line-color": "#e07b00" } },
  { selector: "edge.alias", style: { width: 3, "line-color": "#9467bd" } },
  { selector: "edge.refusal", style: {
    width: 2, "line-style": "dashed", "line-color": "#d62728", label: "data(label)",
    "font-size": 10, color: "#b42318", "text-rotation": "autorotate",
    "text-background-color": "#fff", "text-background-opacity": 1,
    "text-background-padding": 2, "target-arrow-shape": "triangle",
    "target-arrow-color": "#d62728" } },
  { selector: ".faded", style: { opacity: 0.22 } },
  { selector: "node.path", style: {
    "border-width": 4, "border-style": "solid", "border-color": "#17803d" } },
  { selector: "edge.path", style: { width: 6, "line-color": "#17803d", "z-index": 10 } },
  { selector: "node.picked", style: {
    "border-width": 4, "border-style": "solid", "border-color": "#e0a000" } },
  { selector: ".current", style: {
    "overlay-color": "#4f7cff", "overlay-opacity": 0.3, "overlay-padding": 6, opacity: 1 } },
];

function draw(data) {
  const items = elements(data);
  const count = items.filter((e) => e.group === "nodes").length;
  graph = cytoscape({
    container: container,
    elements: items,
    style: STYLE,
    minZoom: 0.1,
    maxZoom: 4,
    boxSelectionEnabled: false,
    autounselectify: true,
  });
  const layout = {
    name: "cose",
    animate: false,
    randomize: false,
    fit: true,
    padding: 30,
    nodeDimensionsIncludeLabels: true,
    idealEdgeLength: () => 90,
    nodeRepulsion: () => 12000,
    componentSpacing: 60,
    numIter: count > 150 ? 300 : 1000,
  };
  const start = graph.nodes(":childless").map((n) => [n, Object.assign({}, n.position())]);
  graph.layout(layout).run();
  const box = graph.elements().boundingBox();
  if (Math.max(box.w, box.h) > 300 * Math.sqrt(count) + 1000) {
    // Groups whose identifiers are joined across them can overlap at every step, and cose
    // pushes overlapping nodes apart without end: lay them out again without that force.
    for (const [node, at] of start) node.position(at);
    graph.layout(Object.assign({}, layout, { nodeOverlap: 0 })).run();
  }
  graph.on("mouseover", "node, edge", (event) => hover(event.target));
  graph.on("mouseout", "node, edge", hideTip);
  graph.on("pan zoom", hideTip);
  graph.on("tap", (event) => {
    const target = event.target;
    if (target === graph) return;
    if (target.isEdge()) {
      showElement(target);
      return;
    }
    if (target.hasClass("group")) {
      const sid = target.data("segment_id");
      if (sid !== data.profile.segment_id) go(sid);
      return;
    }
    pick(target.id());
  });
}

// Where an element is drawn, in the stage's coordinates.
function anchor(element) {
  const at = element.isEdge() ? element.renderedMidpoint() : element.renderedPosition();
  return { x: container.offsetLeft + at.x, y: container.offsetTop + at.y };
}

function hover(element) {
  const lines = facts(element.data()).map(([name, value]) => name + ": " + value);
  if (element.isNode() && !element.hasClass("group")) lines.push("(click to pick it)");
  tip.textContent = lines.join("\n");
  tip.hidden = false;
  const at = anchor(element);
  const left = Math.min(at.x + 14, stage.clientWidth - tip.offsetWidth - 4);
  tip.style.left = Math.max(4, left) + "px";
  tip.style.top = at.y + 14 + "px";
}

function hideTip() {
  tip.hidden = true;
}

// An element's details (its data: {edge}, {refusal}, {identifier}, ...) as [name, text]
// pairs, for the tooltip and the details panel.
function facts(d) {
  if (d.edge) {
    const e = d.edge;
    return [
      ["message", shown(e.message_id, 100)],
      ["type", shown(e.message_type, 40)],
      ["source", shown(e.source_id, 100)],
      ["time", shown(e.timestamp, 40)],
      ["joined", shown(e.from, 120) + " \u2013 " + shown(e.to, 120)],
      ["kind", shown(e.kind, 40) + (KINDS[e.kind] ? " (" + KINDS[e.kind] + ")" : "")],
      ["messages", String(e.messages === undefined ? 1 : e.messages) +
        (e.messages > 1 ? " (the first is shown)" : "")],
    ];
  }
  if (d.refusal) return refusalFacts(d.refusal);
  if (d.identifier) {
    const i = d.identifier;
    const own = current.profile.segment_id;
    const holder = i.profile || own;
    return [
      ["identifier", shown(i.type, 60) + ":" + shown(i.id)],
      ["first held by", holder + (holder === own ? " (this profile)" : " (merged into this one)")],
      ["source", shown(i.source_id, 100)],
      ["first seen", shown(i.created_at, 40)],
      ["first message", shown(i.first_message_id, 100)],
    ];
  }
  if (d.outside) return [["not in this profile", shown(d.id)]];
  const sid = d.segment_id;
  return sid === current.profile.segment_id
    ? [["profile", sid + " (this profile)"]]
    : [["merged profile", sid], ["", "merged into this one (click to open it)"]];
}

function refusalFacts(r) {
  return [
    ["refused", shown(r.rule, 60)],
    ["identifier", shown(r.type, 60) + ":" + shown(valueOf(r))],
    ["detail", shown(r.detail)],
    ["message", shown(r.message_id, 100)],
    ["source", shown(sourceOf(r), 100)],
    ["time", shown(r.timestamp, 40)],
    ["profile", shown(r.segment_id, 60)],
    ["other profile", r.other_segment_id ? shown(r.other_segment_id, 60) : "none"],
  ];
}

function factList(pairs) {
  const dl = html("dl", null, { class: "facts" });
  for (const [name, value] of pairs) dl.append(html("dt", name), html("dd", value));
  return dl;
}

// The details panel for one element of the graph, which is marked there.
function showElement(element) {
  show(element.data(), element.id(), false);
}

// Details `d` in the panel beside the graph, and the element `id` marked in the graph (with
// its tooltip, when `tooltip`) if it is drawn: what a list row shows when focused.
function show(d, id, tooltip) {
  const title = d.edge ? "Message" : d.refusal ? "Refusal" : d.identifier ? "Identifier"
    : d.outside ? "Not in this profile" : "Profile";
  selected.replaceChildren(html("h2", title), factList(facts(d)));
  if (!graph) return;
  graph.elements(".current").removeClass("current");
  const element = graph.getElementById(id);
  if (element.length === 0) {
    hideTip();
    return;
  }
  element.addClass("current");
  if (tooltip) hover(element);
}

// ---- why two identifiers are (or are not) one profile ----

// Pick an identifier (again: unpick it); the second one picked asks why the two are together.
function pick(key) {
  const at = picked.indexOf(key);
  if (at >= 0) setPicked(picked.filter((k) => k !== key));
  else setPicked(picked.length === 2 ? [key] : picked.concat([key]));
}

function setPicked(keys) {
  picked = keys;
  if (graph) {
    graph.nodes(".picked").removeClass("picked");
    for (const k of picked) graph.getElementById(k).addClass("picked");
  }
  for (const [k, b] of buttons) b.setAttribute("aria-pressed", String(picked.includes(k)));
  if (picked.length === 2) explain(picked[0], picked[1]);
  else {
    unmark();
    showPickHint();
  }
}

function showPickHint() {
  latestExplain++;
  const text = picked.length === 1
    ? "Picked " + shown(picked[0], 120) + ": pick another identifier to see why the two are " +
      "(or are not) one profile."
    : "Pick two identifiers (click them in the graph, or activate their buttons below it) to " +
      "see the messages that joined them and what was refused.";
  explainPanel.replaceChildren(html("h2", "Why together?"), html("p", text, { class: "hint" }));
}

function unmark() {
  if (graph) graph.elements().removeClass("faded path");
}

async function explain(a, b) {
  const mine = ++latestExplain;
  const token = tokenInput.value.trim();
  explainPanel.replaceChildren(html("h2", "Why together?"),
    html("p", "Asking about " + shown(a, 80) + " and " + shown(b, 80) + " \u2026",
      { class: "hint" }));
  const url = "/explorer/explain?a=" + encodeURIComponent(refOf(a)) + "&b=" +
    encodeURIComponent(refOf(b));
  const answer = await ask(url, token);
  if (mine !== latestExplain) return;
  if (answer.error) {
    explainPanel.replaceChildren(html("h2", "Why together?"),
      html("p", answer.error, { class: "verdict apart" }));
    return;
  }
  showExplanation(a, b, answer.body);
}

function showExplanation(a, b, body) {
  const path = body.path || [];
  const refusals = body.refusals || [];
  const verdict = body.together
    ? "Together: " + shown(a, 80) + " and " + shown(b, 80) + " are one profile" +
      (path.length ? ", joined by " + plural(path.length, "step") + "." : ".")
    : "Not together: " + shown(a, 80) + " and " + shown(b, 80) + " are not one profile.";
  const parts = [html("h2", "Why together?"),
    html("p", verdict, { class: "verdict " + (body.together ? "together" : "apart") })];
  if (path.length) {
    const list = html("ol", null, { class: "steps" });
    for (const step of path) {
      const type = step.message_type ? shown(step.message_type, 40) + " " : "";
      list.appendChild(html("li", shown(step.from, 120) + " \u2192 " + shown(step.to, 120) +
        ": " + shown(step.kind, 40) + " by " + type + "message " + shown(step.message_id, 100) +
        " (source " + shown(sourceOf(step), 100) + ", " + shown(step.timestamp, 40) + ")"));
    }
    parts.push(list);
  } else if (!body.together) {
    parts.push(html("p", "No chain of messages joins them.", { class: "hint" }));
  }
  if (body.complete === false)
    parts.push(html("p", "The profiles hold more messages than one answer reads: a shorter " +
      "chain may exist.", { class: "hint" }));
  if (refusals.length) {
    parts.push(html("h2", "Refused (" + refusals.length + ")"));
    const list = html("ul", null, { class: "steps" });
    for (const r of refusals) {
      list.appendChild(html("li", shown(r.rule, 60) + ": " + shown(r.type, 60) + ":" +
        shown(valueOf(r), 120) + (r.detail ? " \u2013 " + shown(r.detail) : "") + " (message " +
        shown(r.message_id, 100) + ", " + shown(r.timestamp, 40) + ")"));
    }
    parts.push(list);
  }
  parts.push(button("Clear", () => setPicked([]), "act"));
  explainPanel.replaceChildren(...parts);
  highlight(a, b, path);
}

function highlight(a, b, path) {
  if (!graph) return;
  unmark();
  if (!path.length) return;
  graph.elements().not(":parent").addClass("faded");
  const mark = (id) => graph.getElementById(id).removeClass("faded").addClass("path");
  for (const step of path) {
    mark(step.from);
    mark(step.to);
    graph.edges().filter((e) => {
      const s = e.source().id();
      const t = e.target().id();
      return !e.hasClass("refusal") && ((s === step.from && t === step.to) ||
        (s === step.to && t === step.from));
    }).removeClass("faded").addClass("path");
  }
  for (const k of [a, b]) graph.getElementById(k).removeClass("faded");
}

// ---- the lists: every detail of the drawing, for the keyboard and for reading ----

// A table; the cells of the columns in `long` (indices) may break anywhere, the others at spaces.
function table(headings, rows, long) {
  const t = html("table");
  if (headings) {
    const head = html("tr");
    for (const h of headings) head.appendChild(html("th", h, { scope: "col" }));
    t.appendChild(html("thead")).appendChild(head);
  }
  const body = html("tbody");
  for (const cells of rows) {
    const tr = html("tr");
    for (const [i, cell] of cells.entries()) {
      const td = html("td");
      if (long && long.includes(i)) td.className = "long";
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  t.appendChild(body);
  return t;
}

// A row that the keyboard reaches and that shows its element in the graph when focused.
function focusable(tr, d, id, label) {
  tr.tabIndex = 0;
  tr.setAttribute("aria-label", label);
  const reveal = () => {
    for (const row of document.querySelectorAll("tr.current")) row.classList.remove("current");
    tr.classList.add("current");
    show(d, id, true);
  };
  tr.addEventListener("focus", reveal);
  tr.addEventListener("mouseenter", reveal);
  tr.addEventListener("mouseleave", hideTip);
  tr.addEventListener("blur", hideTip);
}

function linkButton(segmentId) {
  return button(segmentId, () => go(segmentId), "link");
}

function heading(id, text) {
  return html("h2", text, { id: id });
}

function describeIdentifiers(data) {
  const own = data.profile.segment_id;
  const byProfile = new Map(profilesOf(data).map((sid) => [sid, []]));
  for (const identifier of data.identifiers)
    byProfile.get(identifier.profile || own).push(identifier);
  const parts = [heading("identifiers-title", "Identifiers (" + data.identifiers.length +
    (data.more_identifiers ? "+" : "") + ")"),
    html("p", "Focus one to see its details; activate two to see why they are one profile.",
      { class: "hint" })];
  for (const [sid, identifiers] of byProfile) {
    const group = html("div", null, { class: "groups" });
    const title = html("h3", sid === own ? "First held by this profile, " : "First held by ");
    if (sid === own) title.append(sid);
    else title.append(linkButton(sid), " (merged into this one)");
    const list = html("ul", null,
      { class: "ids", "aria-label": "identifiers first held by " + sid });
    for (const identifier of identifiers) {
      const key = keyOf(identifier);
      if (buttons.has(key)) continue;
      const b = button("", () => pick(key));
      const swatch = html("span", null, { class: "swatch" });
      swatch.style.background = colour(identifier.type);
      b.append(swatch, shown(identifier.type, 60) + ":" + shown(identifier.id));
      b.setAttribute("aria-pressed", "false");
      b.addEventListener("focus", () => show({ identifier: identifier }, key, true));
      b.addEventListener("mouseenter", () => show({ identifier: identifier }, key, true));
      b.addEventListener("mouseleave", hideTip);
      b.addEventListener("blur", hideTip);
      buttons.set(key, b);
      list.appendChild(html("li")).appendChild(b);
    }
    group.append(title, list);
    parts.push(group);
  }
  identifierList.replaceChildren(...parts);
}

function describeEdges(data) {
  const edges = data.edges || [];
  const t = table(["from", "to", "kind", "message type", "message", "source", "time", "messages"],
    edges.map((e) => [shown(e.from, 120), shown(e.to, 120), shown(e.kind, 40),
      shown(e.message_type, 40), shown(e.message_id, 100), shown(e.source_id, 100),
      shown(e.timestamp, 40), String(e.messages === undefined ? 1 : e.messages)]), [0, 1, 4, 5]);
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    const e = edges[i];
    focusable(tr, { edge: e }, "edge " + i, shown(e.kind, 40) + " " + shown(e.from, 120) +
      " to " + shown(e.to, 120) + ", " + shown(e.message_type, 40) + " message " +
      shown(e.message_id, 100) + " from " + shown(e.source_id, 100) + " at " +
      shown(e.timestamp, 40));
  });
  edgeList.replaceChildren(
    heading("edges-title", "Messages that joined them (" + edges.length +
      (data.more_edges ? "+" : "") + ")"),
    edges.length ? t : html("p", "None: the profile holds one identifier.", { class: "hint" }));
}

function describeRefusals(data) {
  const refusals = data.refusals || [];
  const own = data.profile.segment_id;
  const t = table(["rule", "identifier", "detail", "message", "source", "time", "other profile",
    ""], refusals.map((r) => {
    // What to ask about: the two ends of its edge, else this profile and what was refused.
    const other = r.other_segment_id ? SEGMENT + r.other_segment_id : null;
    const pair = r.from && r.to && r.from !== r.to ? [r.from, r.to] : [own, r.from || other];
    const why = button("Explain", () => setPicked(pair), "act");
    why.setAttribute("aria-label", "explain why " + shown(pair[0], 120) + " and " +
      shown(pair[1], 120) + " are not one profile");
    why.disabled = !pair[1];
    return [shown(r.rule, 60), shown(r.type, 60) + ":" + shown(valueOf(r), 120),
      shown(r.detail), shown(r.message_id, 100), shown(sourceOf(r), 100),
      shown(r.timestamp, 40), r.other_segment_id ? linkButton(r.other_segment_id) : "none",
      why];
  }), [1, 2, 3, 4, 6]);
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    const r = refusals[i];
    focusable(tr, { refusal: r }, "refusal " + i, "refused by " + shown(r.rule, 60) + ": " +
      shown(r.type, 60) + ":" + shown(valueOf(r), 120) + ", message " +
      shown(r.message_id, 100) + " from " + shown(sourceOf(r), 100) + " at " +
      shown(r.timestamp, 40) + (r.detail ? ": " + shown(r.detail) : ""));
  });
  refusalList.replaceChildren(
    heading("refusals-title", "Refused (" + refusals.length +
      (data.more_refusals ? "+" : "") + ")"),
    refusals.length ? t : html("p", "Nothing was refused.", { class: "hint" }));
}

function describe(data) {
  describeIdentifiers(data);
  describeEdges(data);
  describeRefusals(data);
  const p = data.profile;
  const traits = Object.entries(data.traits);
  asideTables.replaceChildren(
    html("h2", "Profile"),
    table(null, [
      ["segment_id", p.segment_id],
      ["collection", p.collection],
      ["created", p.created_at + " (arrival)"],
      ["first message", shown(p.first_message_id, 100)],
      ["first source", shown(p.first_source_id, 100)],
    ]),
    html("h2", "Merged into it (" + data.merges.length + (data.more_merges ? "+" : "") + ")"),
    table(null, data.merges.map((m) => [linkButton(m.from_segment_id), "\u2192 " +
      m.into_segment_id + " by message " + shown(m.message_id, 100) + " (" +
      (m.rule ? shown(m.rule, 40) + ", " : "") + m.timestamp + ")"])),
    html("h2", "Linked " + (p.collection === "users" ? "accounts" : "users") + " (" +
      data.links.length + (data.more_links ? "+, the first 200" : "") + ")"),
    table(null, data.links.map((l) => [linkButton(l.segment_id), l.identifiers.map((r) =>
      shown(r.type, 40) + ":" + shown(r.id, 80)).join(", ") +
      (l.more_identifiers ? ", \u2026" : "")])),
    html("h2", "Traits (" + traits.length + (data.more_traits ? "+, the first 200" : "") + ")"),
    table(null, traits.map(([k, v]) => [shown(k, 60), shown(JSON.stringify(v))]))
  );
}

// ---- navigation ----

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

container.addEventListener("mouseleave", hideTip); // cytoscape may not say the pointer left
form.addEventListener("submit", (event) => {
  event.preventDefault();
  go(refInput.value.trim());
});
window.addEventListener("hashchange", fromHash);
if (typeof cytoscape === "undefined") {
  say("The graph library (/explorer/cytoscape.min.js) did not load; reload the page.", true);
} else {
  fromHash();
}
