// msgtier dashboard: plain JavaScript, no build step, served by the node itself.
//
// Live from the event stream (GET /events): a link up or down, a route or punch change
// refreshes /status and /topology at once; a message or a delivery refreshes the inbox or
// the outbox. What events do not cover (uptime, RTTs) is polled every POLL_MS.
// With an api_token, the first 401 asks for the token; it is kept in sessionStorage (this tab
// only) and sent as a Bearer header, or as ?token= on the event stream (EventSource cannot
// set headers).
"use strict";

const POLL_MS = 5000;
const FEED_MAX = 200;
const TOKEN_KEY = "msgtier.api_token";

const ui = {
  status: null,
  topology: null,
  config: null,
  token: sessionStorage.getItem(TOKEN_KEY),
  sort: { key: "id", dir: 1 },
  selected: null,
  events: null,
  lastEventId: 0,
  refreshTimer: null,
  sim: null,
  simNodes: new Map(),
  graphKey: "",
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c);
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// --- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (ui.token) headers.set("authorization", `Bearer ${ui.token}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    askToken(ui.token ? "That token was refused." : "");
    throw new ApiError(401, await response.json().catch(() => null));
  }
  return response;
}

async function apiJson(path) {
  const r = await api(path);
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

// --- the token ----------------------------------------------------------------------------

function askToken(message) {
  const dialog = $("token-dialog");
  $("token-error").textContent = message || "";
  setLive("locked", "API token needed");
  if (ui.events) {
    ui.events.close();
    ui.events = null;
  }
  if (!dialog.open) {
    dialog.showModal();
    $("token-input").focus();
  }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  ui.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  $("token-dialog").close();
  start();
});

// --- live state ---------------------------------------------------------------------------

function setLive(state, text) {
  const live = $("live");
  if (live.dataset.state === state && live.textContent === text) return;
  live.dataset.state = state;
  live.textContent = text;
}

function connectEvents() {
  if (ui.events) ui.events.close();
  // The first connection replays what the node still keeps (the feed starts with recent
  // history); the browser's own reconnects resume from the last id by Last-Event-ID, ours
  // from the last id seen.
  const params = new URLSearchParams({ since: String(ui.lastEventId) });
  if (ui.token) params.set("token", ui.token);
  const source = new EventSource(`/events?${params}`);
  ui.events = source;
  source.onopen = () => setLive("live", "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (a token went stale, or the node is at its subscriber
      // limit): find out through the API, then try again.
      setLive("reconnecting", "reconnecting…");
      source.close();
      setTimeout(() => refresh().then(() => ui.events === source && connectEvents()), 3000);
    } else {
      setLive("reconnecting", "reconnecting…");
    }
  };
  source.onmessage = (m) => {
    let e;
    try {
      e = JSON.parse(m.data);
    } catch {
      return;
    }
    if (typeof e.id === "number") ui.lastEventId = e.id;
    onEvent(e);
  };
}

function onEvent(e) {
  switch (e.type) {
    case "peer_up":
    case "peer_down":
    case "route":
    case "punch":
      scheduleRefresh();
      break;
    case "message":
      loadInbox();
      break;
    case "delivery":
      loadOutbox();
      break;
    case "lagged":
      // The stream fell behind and was cut off: reload what it would have told us.
      refresh();
      loadInbox();
      loadOutbox();
      break;
  }
  if (e.type !== "route") addToFeed(e);
}

function scheduleRefresh() {
  if (ui.refreshTimer) return;
  ui.refreshTimer = setTimeout(() => {
    ui.refreshTimer = null;
    refresh();
  }, 150);
}

async function refresh() {
  try {
    const [status, topology] = await Promise.all([apiJson("/status"), apiJson("/topology")]);
    ui.status = status;
    ui.topology = topology;
    renderNode();
    renderPeers();
    renderTopology();
    renderForeign();
    if (ui.events && ui.events.readyState === EventSource.OPEN) setLive("live", "live");
  } catch (err) {
    if (err.status !== 401) setLive("reconnecting", `node unreachable: ${err.message}`);
  }
}

// --- this node ----------------------------------------------------------------------------

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} days ${h % 24} h`;
}

function setText(id, text) {
  const e = $(id);
  if (e.textContent !== text) e.textContent = text;
}

function renderNode() {
  const s = ui.status;
  setText("title-id", `${s.id} · ${s.network}`);
  document.title = `msgtier ${s.id}`;
  setText("node-id", s.id);
  setText("node-network", s.network);
  setText("node-version", s.version);
  setText("node-uptime", duration(s.uptime_ms));
  setText("node-key", s.public_key);
  setText("node-listeners", s.listeners.join("  ") || "none");
  setText("node-observed", (s.observed_addrs || []).join("  ") || "none seen yet");
  const c = ui.config || {};
  const foreign = Object.keys(s.foreign || {});
  let relays;
  if (foreign.length) relays = `yes, now for ${foreign.join(", ")}`;
  else if (c.relay_all_peer_rpc) relays = "yes, control traffic of any network";
  else if ((c.relay_network_whitelist || []).length)
    relays = `yes, for ${c.relay_network_whitelist.join(", ")}`;
  else relays = "no";
  setText("node-relays", relays);
  const carried = s.durable ? s.durable.carried_messages : 0;
  let carrier = "no";
  if (c.carrier) carrier = `yes, ${carried} message${carried === 1 ? "" : "s"} held for others`;
  else if (carried) carrier = `${carried} held`;
  setText("node-carrier", carrier);
}

$("copy-key").addEventListener("click", async () => {
  const key = $("node-key").textContent;
  let done = "copied";
  try {
    await navigator.clipboard.writeText(key);
  } catch {
    // No clipboard permission (plain http on another host): select it for Ctrl+C instead.
    const range = document.createRange();
    range.selectNodeContents($("node-key"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    done = "selected: press Ctrl+C";
  }
  $("copy-done").textContent = done;
  setTimeout(() => ($("copy-done").textContent = ""), 2500);
});

// --- peers --------------------------------------------------------------------------------

function peerRow(s, p) {
  const links = (p.links || []).filter((l) => l.state === "Active");
  const punched =
    s.punch && s.punch[p.id] && s.punch[p.id].state === "open" &&
    links.some((l) => l.transport === "udp");
  let path;
  if (p.public_relay) path = "public relay";
  else if (punched) path = "punched";
  else if (links.length) path = "direct";
  else if (p.next_hop) path = `via ${p.next_hop} (${p.hops} hops)`;
  else path = "–";
  const transports = [...new Set(links.map((l) => l.transport))].sort();
  const rtts = links.map((l) => l.rtt_ms).filter(Boolean);
  const rttLast = rtts.length ? Math.min(...rtts.map((r) => r.last)) : null;
  const rttAvg = rtts.length ? Math.min(...rtts.map((r) => r.avg)) : null;
  const heardList = (p.links || []).map((l) => l.last_heard_ms_ago).filter((h) => h != null);
  const heard = heardList.length ? Math.min(...heardList) : null;
  return { id: p.id, state: p.state, path, transports, rttLast, rttAvg, heard, peer: p };
}

const STATE_ORDER = { Active: 0, Init: 1, Disconnected: 2 };
const SORTERS = {
  id: (r) => r.id,
  state: (r) => STATE_ORDER[r.state] ?? 9,
  path: (r) => r.path,
  transports: (r) => r.transports.join(","),
  rtt_last: (r) => r.rttLast ?? Infinity,
  rtt_avg: (r) => r.rttAvg ?? Infinity,
  heard: (r) => r.heard ?? Infinity,
};

function ms(v) {
  if (v == null) return "–";
  return v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(1)} ms`;
}

function rows() {
  const s = ui.status;
  return (s.peers || []).map((p) => peerRow(s, p));
}

function renderPeers() {
  const list = rows();
  const key = SORTERS[ui.sort.key];
  list.sort((a, b) => {
    const x = key(a);
    const y = key(b);
    const c = x < y ? -1 : x > y ? 1 : 0;
    return c * ui.sort.dir || (a.id < b.id ? -1 : 1);
  });
  const tbody = $("peers").tBodies[0];
  const existing = new Map([...tbody.rows].map((tr) => [tr.dataset.peer, tr]));
  const wanted = new Set(list.map((r) => r.id));
  for (const [id, tr] of existing) if (!wanted.has(id)) tr.remove();
  list.forEach((r, i) => {
    let tr = existing.get(r.id);
    if (!tr) {
      tr = el("tr", { "data-peer": r.id });
      tr.append(
        el("th", { scope: "row", class: "mono" }),
        el("td", {}, el("span", { class: "state" })),
        el("td"),
        el("td"),
        el("td", { class: "num" }),
        el("td", { class: "num" }),
        el("td", { class: "num" }),
      );
    }
    const cells = tr.cells;
    const stateSpan = cells[1].firstChild;
    if (cells[0].textContent !== r.id) cells[0].textContent = r.id;
    if (stateSpan.textContent !== r.state) {
      stateSpan.textContent = r.state;
      stateSpan.className = `state ${r.state}`;
    }
    const texts = [
      r.path,
      r.transports.join(", ") || "–",
      ms(r.rttLast),
      ms(r.rttAvg),
      r.heard == null ? "–" : `${duration(r.heard)} ago`,
    ];
    texts.forEach((t, j) => {
      if (cells[j + 2].textContent !== t) cells[j + 2].textContent = t;
    });
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
  });
  $("peers-empty").hidden = list.length > 0;
  const ids = $("known-ids");
  const known = list.filter((r) => !r.peer.public_relay).map((r) => r.id);
  known.unshift(ui.status.id);
  if ([...ids.options].map((o) => o.value).join("\n") !== known.join("\n")) {
    ids.replaceChildren(...known.map((id) => el("option", { value: id })));
  }
}

for (const button of document.querySelectorAll("#peers th button")) {
  button.addEventListener("click", () => {
    const key = button.dataset.sort;
    ui.sort = { key, dir: ui.sort.key === key ? -ui.sort.dir : 1 };
    for (const th of document.querySelectorAll("#peers th")) th.removeAttribute("aria-sort");
    button.parentElement.setAttribute("aria-sort", ui.sort.dir > 0 ? "ascending" : "descending");
    if (ui.status) renderPeers();
  });
}

// --- topology -----------------------------------------------------------------------------

function rttClass(us) {
  if (us == null) return "";
  if (us < 1000) return "r0";
  if (us < 10000) return "r1";
  if (us < 50000) return "r2";
  return "r3";
}

// The nodes and edges to draw: every network's graph from /topology (our own node once, a
// foreign network's members keyed by network), plus peers /status knows that have no edge.
function graphModel() {
  const t = ui.topology;
  const s = ui.status;
  const nodes = new Map();
  const edges = [];
  const peers = new Map((s.peers || []).map((p) => [p.id, p]));
  const keyOf = (net, id) => (id === t.id ? "self" : net.home ? `h/${id}` : `f/${net.network}/${id}`);
  nodes.set("self", { key: "self", id: t.id, network: s.network, kind: "self", hops: 0 });
  for (const net of t.networks) {
    for (const n of net.nodes) {
      const key = keyOf(net, n.id);
      if (nodes.has(key)) continue;
      const peer = net.home ? peers.get(n.id) : null;
      let kind = net.home ? (n.relay ? "relay" : "member") : "foreign";
      if (n.hops == null && kind !== "relay") kind = "down";
      if (peer && peer.state === "Disconnected") kind = "down";
      nodes.set(key, { key, id: n.id, network: net.network, kind, hops: n.hops, home: net.home });
    }
    for (const e of net.edges) {
      edges.push({
        key: `${keyOf(net, e.a)}|${keyOf(net, e.b)}`,
        source: keyOf(net, e.a),
        target: keyOf(net, e.b),
        cost_us: e.cost_us,
        rtt_us: e.rtt_us,
        transports: e.transports,
        punched: e.punched,
        network: net.network,
      });
    }
  }
  for (const p of s.peers || []) {
    const key = `h/${p.id}`;
    if (!nodes.has(key)) {
      const kind = p.public_relay ? "relay" : p.state === "Active" ? "member" : "down";
      nodes.set(key, { key, id: p.id, network: s.network, kind, hops: p.hops ?? null, home: true });
    }
  }
  return { nodes: [...nodes.values()], edges };
}

// The drawing area in CSS pixels: the view box follows the element's size, so labels keep
// their size on a phone and on a wide screen alike.
function topologyArea() {
  const box = $("topology").getBoundingClientRect();
  const area = { w: Math.max(Math.round(box.width), 200), h: Math.max(Math.round(box.height), 200) };
  const viewBox = `0 0 ${area.w} ${area.h}`;
  if ($("topology").getAttribute("viewBox") !== viewBox) $("topology").setAttribute("viewBox", viewBox);
  return area;
}

new ResizeObserver(() => {
  if (!ui.sim) return;
  const area = topologyArea();
  ui.sim.on("tick", () => positionTopology(area));
  positionTopology(area);
}).observe($("topology"));

function renderTopology() {
  const model = graphModel();
  const area = topologyArea();
  // Keep positions across updates: a node that stays keeps its place.
  const old = ui.simNodes;
  const simNodes = new Map();
  for (const n of model.nodes) {
    const prev = old.get(n.key);
    const placed = prev || { x: (Math.random() - 0.5) * 200, y: (Math.random() - 0.5) * 120 };
    simNodes.set(n.key, Object.assign(placed, n));
  }
  ui.simNodes = simNodes;
  const links = model.edges
    .filter((e) => simNodes.has(e.source) && simNodes.has(e.target))
    .map((e) => ({ ...e, source: simNodes.get(e.source), target: simNodes.get(e.target) }));
  const shape = [...simNodes.keys()].sort().join(",") + "#" + links.map((l) => l.key).sort().join(",");
  const changed = shape !== ui.graphKey;
  ui.graphKey = shape;

  drawTopology([...simNodes.values()], links);
  if (typeof d3 === "undefined") return;
  const n = simNodes.size;
  if (!ui.sim) {
    ui.sim = d3
      .forceSimulation()
      .force("charge", d3.forceManyBody().strength(-260).distanceMax(400))
      .force("link", d3.forceLink().id((d) => d.key).distance(90).strength(0.6))
      .force("x", d3.forceX(0).strength(0.06))
      .force("y", d3.forceY(0).strength(0.1))
      .force("collide", d3.forceCollide(26));
    // For tests and the curious: the layout's state (alpha says whether it has settled).
    window.__msgtier_sim = ui.sim;
  }
  ui.sim.on("tick", () => positionTopology(area));
  ui.sim.nodes([...simNodes.values()]);
  ui.sim.force("link").links(links).distance(n > 20 ? 60 : 90);
  ui.sim.force("charge").strength(n > 20 ? -140 : -260);
  if (changed) ui.sim.alpha(old.size ? 0.5 : 1).restart();
  else positionTopology(area);
}

// Updates the SVG in place, element by element (keyed), so a focused or selected node keeps
// its focus across updates and nothing jumps.
function keyed(layer, items, keyOf, create, update) {
  const existing = new Map([...layer.children].map((e) => [e._key, e]));
  const wanted = new Set(items.map(keyOf));
  for (const [k, e] of existing) if (!wanted.has(k)) e.remove();
  for (const item of items) {
    const k = keyOf(item);
    let e = existing.get(k);
    if (!e) {
      e = create(item);
      e._key = k;
      layer.append(e);
    }
    update(e, item);
  }
}

function setAttr(e, name, value) {
  if (e.getAttribute(name) !== value) e.setAttribute(name, value);
}

function edgeRtt(l) {
  const ours = l.rtt_us != null || l.transports.length > 0;
  return { ours, rtt: ours ? l.rtt_us : l.cost_us };
}

function drawTopology(nodes, links) {
  const labelled = links.length <= 40;
  keyed(
    $("edges"),
    links,
    (l) => l.key,
    (l) => {
      const line = svg("line", { "data-edge": l.key });
      line.append(svg("title", {}));
      return line;
    },
    (line, l) => {
      const { ours, rtt } = edgeRtt(l);
      const cls = ["edge", rttClass(rtt), ours ? "ours" : "", l.punched ? "punched" : ""];
      setAttr(line, "class", cls.filter(Boolean).join(" "));
      const what = `${l.source.id} – ${l.target.id}: ${l.transports.join("+") || "link"}, ` +
        `${rtt == null ? "RTT not measured" : ms(rtt / 1000)}${l.punched ? ", punched" : ""}`;
      if (line.firstChild.textContent !== what) line.firstChild.textContent = what;
      line._link = l;
    },
  );
  keyed(
    $("edge-labels"),
    labelled ? links : [],
    (l) => l.key,
    () => svg("text", { class: "edge-label", "text-anchor": "middle", "aria-hidden": "true" }),
    (text, l) => {
      const { ours, rtt } = edgeRtt(l);
      const t = [ours ? l.transports.join("+") : "", rtt == null ? "" : ms(rtt / 1000)]
        .filter(Boolean)
        .join(" ");
      if (text.textContent !== t) text.textContent = t;
      text._link = l;
    },
  );
  keyed(
    $("nodes"),
    nodes,
    (n) => n.key,
    (n) => {
      const g = svg("g", { tabindex: "0", role: "button", "data-node": n.id });
      g.append(svg("circle", { class: "halo", r: "17" }), svg("circle", {}), svg("text", { "text-anchor": "middle" }));
      g.addEventListener("click", () => select(g._node.key));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          select(g._node.key);
        }
      });
      return g;
    },
    (g, n) => {
      setAttr(g, "class", `node${ui.selected === n.key ? " selected" : ""}`);
      setAttr(g, "data-kind", n.kind);
      setAttr(
        g,
        "aria-label",
        `${n.id}${n.home === false ? ` (network ${n.network})` : ""}: ${kindName(n)}`,
      );
      const want = n.kind === "relay" ? "rect" : "circle";
      let mark = g.children[1];
      if (mark.tagName !== want) {
        const fresh = svg(want, {});
        mark.replaceWith(fresh);
        mark = fresh;
      }
      if (want === "rect") {
        for (const [k, v] of Object.entries({ x: -9, y: -9, width: 18, height: 18, transform: "rotate(45)" }))
          setAttr(mark, k, String(v));
      } else {
        setAttr(mark, "r", n.kind === "self" ? "13" : "10");
      }
      setAttr(mark, "class", `shape n-${n.kind}`);
      setAttr(g.firstChild, "r", n.kind === "self" ? "19" : "16");
      const label = g.lastChild;
      setAttr(label, "y", n.kind === "self" ? "28" : "24");
      const text = n.home === false ? `${n.id} · ${n.network}` : n.id;
      if (label.textContent !== text) label.textContent = text;
      g._node = n;
    },
  );
  if (ui.selected) showDetails(ui.selected);
}

function kindName(n) {
  return {
    self: "this node",
    member: n.hops > 1 ? `member, ${n.hops} hops away` : "member, linked directly",
    relay: "public node of another network",
    foreign: "member of a network we relay for",
    down: "unreachable",
  }[n.kind];
}

// Fits the drawing into the view box: scale the layout's bounding box to the area.
function positionTopology(area) {
  const nodes = [...ui.simNodes.values()];
  if (!nodes.length) return;
  const pad = 40;
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const n of nodes) {
    minX = Math.min(minX, n.x); maxX = Math.max(maxX, n.x);
    minY = Math.min(minY, n.y); maxY = Math.max(maxY, n.y);
  }
  const w = Math.max(maxX - minX, 1);
  const h = Math.max(maxY - minY, 1);
  const scale = Math.min((area.w - 2 * pad) / w, (area.h - 2 * pad) / h, 2.2);
  const ox = area.w / 2 - ((minX + maxX) / 2) * scale;
  const oy = area.h / 2 - ((minY + maxY) / 2) * scale;
  const X = (v) => (v * scale + ox).toFixed(1);
  const Y = (v) => (v * scale + oy).toFixed(1);
  for (const line of $("edges").children) {
    const l = line._link;
    line.setAttribute("x1", X(l.source.x));
    line.setAttribute("y1", Y(l.source.y));
    line.setAttribute("x2", X(l.target.x));
    line.setAttribute("y2", Y(l.target.y));
  }
  for (const text of $("edge-labels").children) {
    const l = text._link;
    text.setAttribute("x", X((l.source.x + l.target.x) / 2));
    text.setAttribute("y", Y((l.source.y + l.target.y) / 2) - 4);
  }
  for (const g of $("nodes").children) {
    const n = g._node;
    g.setAttribute("transform", `translate(${X(n.x)},${Y(n.y)})`);
  }
}

function select(key) {
  ui.selected = key;
  for (const g of $("nodes").children) g.classList.toggle("selected", g._node.key === key);
  showDetails(key);
}

function showDetails(key) {
  const n = ui.simNodes.get(key);
  const box = $("node-details");
  if (!n) {
    box.replaceChildren(el("p", { class: "hint", text: "That node is gone from the graph." }));
    return;
  }
  const facts = [["Network", n.network], ["Kind", kindName(n)]];
  const peer = n.home !== false ? (ui.status.peers || []).find((p) => p.id === n.id) : null;
  if (n.kind === "self") {
    facts.push(["Listeners", ui.status.listeners.join(" ")]);
  }
  if (peer) {
    const r = peerRow(ui.status, peer);
    facts.push(["State", peer.state], ["Path", r.path]);
    if (r.transports.length) facts.push(["Transports", r.transports.join(", ")]);
    if (r.rttLast != null) facts.push(["RTT", `${ms(r.rttLast)} (avg ${ms(r.rttAvg)})`]);
    if (peer.key) facts.push(["Key", `${peer.key}: ${peer.public_key.slice(0, 16)}…`]);
    if ((peer.addrs || []).length) facts.push(["Addresses", peer.addrs.join(" ")]);
    if (peer.version) facts.push(["Version", peer.version]);
  }
  const links = [...$("edges").children]
    .map((line) => line._link)
    .filter((l) => l.source.key === key || l.target.key === key)
    .map((l) => {
      const other = l.source.key === key ? l.target : l.source;
      const rtt = l.rtt_us ?? l.cost_us;
      return `${other.id}${l.transports.length ? ` (${l.transports.join("+")})` : ""}: ${ms(rtt / 1000)}`;
    });
  facts.push(["Links", links.join("; ") || "none"]);
  const dl = el("dl");
  for (const [k, v] of facts) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  box.replaceChildren(el("h3", { class: "mono", text: n.id }), dl);
}

// --- send ---------------------------------------------------------------------------------

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const target = $("send-target").value.trim();
  const message = $("send-message").value;
  const ttl = $("send-ttl").value.trim();
  const out = $("send-result");
  const button = $("send-button");
  button.disabled = true;
  out.replaceChildren(el("p", { class: "hint", text: `Sending to ${target}…` }));
  try {
    const headers = { target, accept: "application/json" };
    if (ttl) headers.ttl = ttl;
    const r = await api("/send", { method: "POST", headers, body: message });
    const body = await r.json().catch(() => null);
    out.replaceChildren(...describeAnswer(target, r.status, body));
    if (r.status === 202) loadOutbox();
  } catch (err) {
    if (err.status === 401) {
      out.replaceChildren(el("p", { class: "bad", text: "Not sent: the node wants its API token." }));
    } else {
      out.replaceChildren(el("p", { class: "bad", text: `Not sent: ${err.message}` }));
    }
  } finally {
    button.disabled = false;
  }
});

function describeAnswer(target, status, body) {
  if (body && body.type === "script") {
    const code = body.exit_code;
    const ok = code === 0;
    const head = el("p", {
      class: ok ? "ok" : "bad",
      text: code == null
        ? `Script on ${target} ${body.timed_out ? "timed out" : "was killed"}`
        : `Script on ${target} exited with ${code}`,
    });
    const parts = [head, el("pre", { "aria-label": "stdout", text: body.stdout || "(no output)" })];
    if (body.stderr) parts.push(el("pre", { "aria-label": "stderr", class: "stderr", text: body.stderr }));
    return parts;
  }
  if (status === 200 && body && body.delivered) {
    return [el("p", { class: "ok", text: `Delivered to ${target} (${body.hops} hop${body.hops === 1 ? "" : "s"}, id ${body.id})` })];
  }
  if (status === 202 && body) {
    const until = new Date(body.expires_unix_ms).toLocaleString();
    return [el("p", { class: "ok", text: `Queued for ${target}: on disk and retried until ${until} (id ${body.id}). The outbox shows its status.` })];
  }
  return [
    el("p", { class: "bad", text: `Not delivered (HTTP ${status})` }),
    el("pre", { text: JSON.stringify(body, null, 2) }),
  ];
}

// --- events feed --------------------------------------------------------------------------

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function describeEvent(e) {
  switch (e.type) {
    case "message":
      return `from ${e.source}: ${e.body}${e.truncated ? "…" : ""}`;
    case "script":
      return e.error
        ? `${e.name} for ${e.source} did not run: ${e.error}`
        : `${e.name} for ${e.source}: exit ${e.exit_code ?? (e.timed_out ? "timeout" : "killed")}, ${e.duration_ms} ms`;
    case "peer_up":
      return `${e.node} over ${e.transport} (${e.kind})`;
    case "peer_down":
      return `${e.node} over ${e.transport}: ${e.reason}`;
    case "punch":
      return `${e.node}: ${e.outcome}${e.reason ? ` (${e.reason})` : ""}`;
    case "delivery":
      return `${e.message_id} to ${e.target}: ${e.status}${e.custody ? ` (with ${e.custody})` : ""}${e.error ? `: ${e.error}` : ""}`;
    case "missed":
      return e.missed == null
        ? "the node restarted: the events before are gone"
        : `${e.missed} earlier event${e.missed === 1 ? " is" : "s are"} no longer kept`;
    case "lagged":
      return "the stream fell behind; reloading";
    default:
      return JSON.stringify(e);
  }
}

function addToFeed(e) {
  const feed = $("feed");
  const time = e.time_unix_ms || Date.now();
  const item = el(
    "li",
    { "data-type": e.type },
    el("time", { datetime: new Date(time).toISOString(), text: clock(time) }),
    el("span", { class: `kind ${e.type}`, text: e.type.replace("_", " ") }),
    el("span", { class: "what", text: describeEvent(e) }),
  );
  feed.prepend(item);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  $("feed-empty").hidden = true;
}

// --- messages -----------------------------------------------------------------------------

async function loadInbox() {
  try {
    const { messages } = await apiJson("/messages?limit=50");
    const tbody = $("inbox").tBodies[0];
    tbody.replaceChildren(
      ...messages.reverse().map((m) =>
        el(
          "tr",
          { "data-message": m.id },
          el("td", { text: clock(m.received_unix_ms) }),
          el("td", { class: "mono", text: m.source }),
          el("td", { class: "wrap", text: m.body + (m.truncated ? "…" : "") }),
        ),
      ),
    );
    $("inbox-empty").hidden = messages.length > 0;
  } catch (err) {
    if (err.status !== 401) $("inbox-empty").textContent = `Inbox unavailable: ${err.message}`;
  }
}

async function loadOutbox() {
  try {
    const { messages } = await apiJson("/outbox?limit=100");
    const tbody = $("outbox").tBodies[0];
    tbody.replaceChildren(
      ...messages.map((m) =>
        el(
          "tr",
          { "data-message": m.id },
          el("td", { class: "mono", text: m.id }),
          el("td", { class: "mono", text: m.target }),
          el("td", { text: m.status + (m.custody ? ` (${m.custody})` : "") }),
          el("td", { text: m.expires_unix_ms ? new Date(m.expires_unix_ms).toLocaleString() : "–" }),
        ),
      ),
    );
    $("outbox-empty").hidden = messages.length > 0;
  } catch (err) {
    if (err.status !== 401) $("outbox-empty").textContent = `Outbox unavailable: ${err.message}`;
  }
}

// --- foreign relay ------------------------------------------------------------------------

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function renderForeign() {
  const foreign = ui.status.foreign || {};
  const names = Object.keys(foreign).sort();
  $("foreign-card").hidden = names.length === 0;
  $("foreign").tBodies[0].replaceChildren(
    ...names.map((name) => {
      const f = foreign[name];
      return el(
        "tr",
        { "data-network": name },
        el("th", { scope: "row", text: name }),
        el("td", { class: "wrap mono", text: f.members.join(", ") || "none linked" }),
        el("td", { text: f.control_only ? "control only" : "control and data" }),
        el("td", { class: "num", text: f.bps_limit ? `${bytes(f.bps_limit)}/s` : "unlimited" }),
        el("td", { class: "num", text: `${f.messages_relayed} (${bytes(f.bytes_relayed)})` }),
        el("td", { class: "num", text: `${f.messages_queued} (${bytes(f.bytes_queued)})` }),
        el("td", { class: "num", text: `${f.messages_dropped} (${bytes(f.bytes_dropped)})` }),
        el("td", { class: "num", text: String(f.messages_over_budget) }),
      );
    }),
  );
}

// --- start --------------------------------------------------------------------------------

async function start() {
  try {
    ui.config = await apiJson("/config");
  } catch (err) {
    if (err.status === 401) return;
    ui.config = null;
  }
  await refresh();
  if (!ui.status) return;
  loadInbox();
  loadOutbox();
  connectEvents();
}

setInterval(() => {
  if (ui.status && !$("token-dialog").open) refresh();
}, POLL_MS);
start();
