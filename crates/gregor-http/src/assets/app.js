// Gregor console: polls the broker's JSON API (/api/...) every second and redraws the
// current page (overview, topic, group). No dependencies, no network beyond this broker.
"use strict";

const POLL_MS = 1000;
const app = document.getElementById("app");
const statusEl = document.getElementById("status");
let timer = null;
let generation = 0;

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
function card(k, v, id, bad) {
  return `<div class="card${bad ? " bad" : ""}"><div class="k">${esc(k)}</div><div class="v" data-testid="${id}">${esc(v)}</div></div>`;
}

// ------------------------------------------------------------------ overview
async function overview() {
  const [o, topics, groups] = await Promise.all([getJSON("/api/overview"), getJSON("/api/topics"), getJSON("/api/groups")]);
  const brokers = o.brokers.map((b) => `<tr data-testid="broker-${b.id}"><td>${b.id}${b.id === o.controller_id ? ' <span class="tag leader">controller</span>' : ""}${b.fenced ? ' <span class="tag idle">fenced</span>' : ""}</td>
      <td>${esc(b.host)}:${b.port}</td><td class="num" data-testid="broker-${b.id}-led">${b.partitions_led}</td></tr>`).join("");
  const trows = topics.filter((t) => !t.internal).map((t) => `<tr data-testid="topic-row-${esc(t.name)}">
      <td><a href="#/topic/${encodeURIComponent(t.name)}">${esc(t.name)}</a></td><td class="num">${t.partitions}</td>
      <td class="num">${fmtBytes(t.size_bytes)}</td><td class="num" data-testid="topic-end-${esc(t.name)}">${t.log_end_offset_sum}</td></tr>`).join("");
  const grows = groups.map((g) => `<tr data-testid="group-row-${esc(g.group_id)}">
      <td><a href="#/group/${encodeURIComponent(g.group_id)}">${esc(g.group_id)}</a></td><td><span class="tag ${esc(g.state)}">${esc(g.state)}</span></td>
      <td class="num">${g.members}</td><td class="num" data-testid="group-lag-${esc(g.group_id)}">${g.lag}</td></tr>`).join("");
  return `<h1>Cluster <span class="muted">${esc(o.cluster_id)}</span></h1>
    <div class="cards">
      ${card("Brokers", o.brokers.length, "brokers")}
      ${card("Controller", o.controller_id, "controller")}
      ${card("Topics", o.topics, "topics")}
      ${card("Partitions", o.partitions, "partitions")}
      ${card("Under-replicated", o.under_replicated_partitions, "under-replicated", o.under_replicated_partitions > 0)}
      ${card("Offline", o.offline_partitions, "offline", o.offline_partitions > 0)}
      ${card("Groups", o.groups, "groups")}
    </div>
    <h2>Brokers</h2>
    <table><tr><th>Id</th><th>Endpoint</th><th>Partitions led</th></tr>${brokers}</table>
    <h2>Topics</h2>
    <table><tr><th>Topic</th><th>Partitions</th><th>Size</th><th>End offsets (sum)</th></tr>${trows || '<tr><td colspan="4" class="muted">no topics</td></tr>'}</table>
    <h2>Consumer groups</h2>
    <table><tr><th>Group</th><th>State</th><th>Members</th><th>Lag</th></tr>${grows || '<tr><td colspan="4" class="muted">no groups</td></tr>'}</table>`;
}

// ------------------------------------------------------------------ topic
// A partition drawn as a log: the retained range [start, end) as a bar, the high watermark
// as a marker, the replicas as boxes (leader marked, ISR members green, others orange).
function partitionSvg(p, maxEnd) {
  const W = 640, X0 = 10, barW = W - 20;
  const scale = (v) => X0 + (maxEnd > 0 ? (v / maxEnd) * barW : 0);
  const xs = scale(p.log_start_offset), xe = Math.max(scale(p.log_end_offset), xs + 2), xh = scale(p.high_watermark);
  const reps = p.replicas.map((r, i) => {
    const inIsr = p.isr.includes(r), lead = r === p.leader;
    const x = 10 + i * 92;
    return `<g><rect x="${x}" y="62" width="84" height="26" rx="5" fill="${inIsr ? "#dcf3e4" : "#fdebd8"}" stroke="${lead ? "#2f6fde" : "#9aa4b2"}" stroke-width="${lead ? 2.5 : 1}"/>
      <text x="${x + 8}" y="79">broker ${r}${lead ? " ★" : ""}</text></g>`;
  }).join("");
  return `<svg width="${W}" height="96" viewBox="0 0 ${W} 96" role="img" aria-label="partition ${p.partition} log">
    <rect x="${X0}" y="18" width="${barW}" height="22" fill="#eef1f6" stroke="#d9dee7"/>
    <rect x="${xs}" y="18" width="${xe - xs}" height="22" fill="#cfe0fb" stroke="#2f6fde"/>
    <line x1="${xh}" y1="12" x2="${xh}" y2="46" stroke="#2e9e5b" stroke-width="3"/>
    <text x="${X0}" y="12">start ${p.log_start_offset}</text>
    <text x="${Math.min(xh + 4, W - 120)}" y="56" fill="#2e9e5b">HW ${p.high_watermark}</text>
    <text x="${Math.max(Math.min(xe - 60, W - 90), X0 + 90)}" y="12">end ${p.log_end_offset}</text>
    ${reps}
  </svg>`;
}

async function topicPage(name) {
  const t = await getJSON("/api/topics/" + encodeURIComponent(name));
  const maxEnd = Math.max(1, ...t.partitions.map((p) => p.log_end_offset));
  const parts = t.partitions.map((p) => `<div class="partition" data-testid="partition-${p.partition}">
      <b>Partition ${p.partition}</b>
      <span class="muted">start <span data-testid="p${p.partition}-start">${p.log_start_offset}</span> ·
      HW <span data-testid="p${p.partition}-hw">${p.high_watermark}</span> ·
      end <span data-testid="p${p.partition}-end">${p.log_end_offset}</span> ·
      ${fmtBytes(p.size_bytes)} · leader <span data-testid="p${p.partition}-leader">${p.leader}</span> ·
      replicas [${p.replicas.join(", ")}] · ISR [${p.isr.join(", ")}]</span><br>
      ${partitionSvg(p, maxEnd)}</div>`).join("");
  const configs = Object.entries(t.configs).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("");
  const end = t.partitions.reduce((a, p) => a + p.log_end_offset, 0);
  return `<h1>Topic <span data-testid="topic-name">${esc(t.name)}</span></h1>
    <div class="cards">${card("Partitions", t.partitions.length, "topic-partitions")}${card("End offsets (sum)", end, "topic-end")}
      ${card("Size", fmtBytes(t.partitions.reduce((a, p) => a + p.size_bytes, 0)), "topic-size")}</div>
    <h2>Partitions</h2>${parts}
    <h2>Config overrides</h2>
    <table data-testid="topic-configs"><tr><th>Key</th><th>Value</th></tr>${configs || '<tr><td colspan="2" class="muted">none: broker defaults</td></tr>'}</table>`;
}

// ------------------------------------------------------------------ group
// Members on the left, owned partitions on the right, a line per ownership; a member that
// owns nothing is marked idle.
function membershipSvg(g) {
  const parts = [];
  g.members.forEach((m) => m.assignment.forEach((a) => a.partitions.forEach((p) => parts.push(a.topic + "-" + p))));
  g.offsets.forEach((o) => { const k = o.topic + "-" + o.partition; if (!parts.includes(k)) parts.push(k); });
  parts.sort();
  const rows = Math.max(g.members.length, parts.length, 1);
  const H = rows * 34 + 10, W = 640;
  const my = (i) => 10 + i * 34, py = (i) => 10 + i * 34;
  let s = `<svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="members and partitions">`;
  g.members.forEach((m, i) => {
    const idle = m.assignment.every((a) => a.partitions.length === 0);
    m.assignment.forEach((a) => a.partitions.forEach((p) => {
      const j = parts.indexOf(a.topic + "-" + p);
      s += `<line x1="250" y1="${my(i) + 12}" x2="420" y2="${py(j) + 12}" stroke="#2f6fde" stroke-width="1.5"/>`;
    }));
    s += `<rect x="10" y="${my(i)}" width="240" height="24" rx="5" fill="${idle ? "#fdebd8" : "#dce7fb"}" stroke="#9aa4b2"/>
      <text x="18" y="${my(i) + 16}">${esc(m.client_id)} ${esc(m.member_id.slice(-8))}${idle ? " (idle)" : ""}</text>`;
  });
  parts.forEach((k, j) => {
    const o = g.offsets.find((o) => o.topic + "-" + o.partition === k);
    s += `<rect x="420" y="${py(j)}" width="210" height="24" rx="5" fill="#eef1f6" stroke="#9aa4b2"/>
      <text x="428" y="${py(j) + 16}">${esc(k)}${o ? " lag " + o.lag : ""}</text>`;
  });
  return s + "</svg>";
}

const COLORS = ["#2f6fde", "#d64545", "#2e9e5b", "#d9822b", "#8e44ad", "#16a2b8", "#7f8c8d", "#c0392b"];
function lagChart(history) {
  const W = 640, H = 180, L = 50, R = 10, T = 10, B = 24;
  const keys = [...new Set(history.flatMap((s) => Object.keys(s.lags)))].sort();
  if (history.length < 2 || keys.length === 0) return `<p class="muted">collecting lag samples (every 2 s)…</p>`;
  const t0 = history[0].t, t1 = history[history.length - 1].t;
  const maxLag = Math.max(1, ...history.flatMap((s) => Object.values(s.lags)));
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / maxLag) * (H - T - B);
  let s = `<svg width="${W}" height="${H + 20 * Math.ceil(keys.length / 4)}" role="img" aria-label="lag over time" data-testid="lag-chart">
    <line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#9aa4b2"/><line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#9aa4b2"/>
    <text x="4" y="${T + 10}">${maxLag}</text><text x="4" y="${H - B}">0</text>
    <text x="${L}" y="${H - 6}">-${Math.round((t1 - t0) / 1000)} s</text><text x="${W - R - 30}" y="${H - 6}">now</text>`;
  keys.forEach((k, i) => {
    const pts = history.filter((h) => k in h.lags).map((h) => `${x(h.t).toFixed(1)},${y(h.lags[k]).toFixed(1)}`).join(" ");
    const c = COLORS[i % COLORS.length];
    s += `<polyline points="${pts}" fill="none" stroke="${c}" stroke-width="2"/>`;
    s += `<rect x="${L + (i % 4) * 145}" y="${H + 4 + 20 * Math.floor(i / 4)}" width="10" height="10" fill="${c}"/><text x="${L + 14 + (i % 4) * 145}" y="${H + 13 + 20 * Math.floor(i / 4)}">${esc(k)}</text>`;
  });
  return s + "</svg>";
}

async function groupPage(id) {
  const g = await getJSON("/api/groups/" + encodeURIComponent(id));
  const offs = g.offsets.map((o) => `<tr><td>${esc(o.topic)}</td><td class="num">${o.partition}</td>
      <td class="num" data-testid="committed-${esc(o.topic)}-${o.partition}">${o.committed}</td>
      <td class="num" data-testid="end-${esc(o.topic)}-${o.partition}">${o.log_end_offset}</td>
      <td class="num" data-testid="lag-${esc(o.topic)}-${o.partition}">${o.lag}</td></tr>`).join("");
  const members = g.members.map((m) => {
    const owned = m.assignment.flatMap((a) => a.partitions.map((p) => a.topic + "-" + p));
    return `<tr data-testid="member"><td>${esc(m.member_id)}</td><td>${esc(m.client_id)}</td><td>${esc(m.client_host)}</td>
      <td>${owned.length ? esc(owned.join(", ")) : '<span class="tag idle">idle</span>'}</td></tr>`;
  }).join("");
  return `<h1>Group <span data-testid="group-id">${esc(g.group_id)}</span> <span class="tag ${esc(g.state)}" data-testid="group-state">${esc(g.state)}</span></h1>
    <div class="cards">${card("Members", g.members.length, "group-members")}${card("Total lag", g.lag, "group-lag")}
      ${card("Protocol", g.protocol || "-", "group-protocol")}</div>
    <h2>Members → partitions</h2>${membershipSvg(g)}
    <table><tr><th>Member</th><th>Client</th><th>Host</th><th>Owns</th></tr>${members || '<tr><td colspan="4" class="muted">no members</td></tr>'}</table>
    <h2>Lag over the last minutes</h2>${lagChart(g.lag_history)}
    <h2>Committed offsets</h2>
    <table><tr><th>Topic</th><th>Partition</th><th>Committed</th><th>Log end</th><th>Lag</th></tr>${offs || '<tr><td colspan="5" class="muted">nothing committed</td></tr>'}</table>`;
}

// ------------------------------------------------------------------ routing
function route() {
  const h = location.hash.replace(/^#/, "") || "/";
  let m;
  if ((m = h.match(/^\/topic\/(.+)$/))) return () => topicPage(decodeURIComponent(m[1]));
  if ((m = h.match(/^\/group\/(.+)$/))) return () => groupPage(decodeURIComponent(m[1]));
  return overview;
}

async function refresh() {
  const mine = generation;
  try {
    const html = await route()();
    if (mine !== generation) return; // the page changed meanwhile
    app.innerHTML = html;
    statusEl.textContent = "updated " + new Date().toLocaleTimeString();
    statusEl.classList.remove("stale");
    document.body.dataset.loaded = "1";
  } catch (e) {
    statusEl.textContent = "error: " + e.message;
    statusEl.classList.add("stale");
  }
}

function start() {
  generation++;
  clearTimeout(timer);
  const loop = async () => {
    const mine = generation;
    await refresh();
    if (mine === generation) timer = setTimeout(loop, POLL_MS);
  };
  loop();
}

window.addEventListener("hashchange", start);
start();
