// gaptun dashboard: polls /api/stats every second, draws the last minutes from
// /api/history plus what it polled since. No library: the charts are a few canvas lines.
"use strict";

const MAX_POINTS = 600;
let points = [];

const $ = (id) => document.getElementById(id);

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
// Rates in bits per second, as links are sold.
function rate(bps) {
  let n = bps * 8;
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
const ms = (v) => (v === null || v === undefined) ? "–" : v.toFixed(1) + " ms";
const pct = (v) => v.toFixed(2);
function age(s) {
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}

// Fills a table body with one row per item; cells are text (never HTML: names come from
// configs and peers).
function fill(table, items, cells) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  if (items.length === 0) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = $(table).tHead.rows[0].cells.length;
    td.className = "empty";
    td.textContent = "none";
    return;
  }
  for (const item of items) {
    const tr = body.insertRow();
    for (const [text, left] of cells(item)) {
      const td = tr.insertCell();
      td.textContent = text;
      if (left) td.className = "l";
    }
  }
}

function chart(id, series, format) {
  const canvas = $(id);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  const left = 70, bottom = 18, top = 6;
  let max = 0;
  for (const s of series) for (const p of points) { const v = s.get(p); if (v !== null && v > max) max = v; }
  if (max <= 0) max = 1;
  max *= 1.1;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#8a96a3";
  ctx.strokeStyle = "#26313c";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const y = top + (h - top - bottom) * i / 3;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(format(max * (3 - i) / 3), 2, y + 4);
  }
  if (points.length < 2) return;
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const span = Math.max(t1 - t0, 1);
  ctx.fillText(Math.round(span / 60000) > 0 ? "last " + Math.round(span / 60000) + " min" : "last " + Math.round(span / 1000) + " s", left + 4, h - 4);
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    for (const p of points) {
      const v = s.get(p);
      if (v === null || v === undefined) { drawing = false; continue; }
      const x = left + (w - left) * (p.t - t0) / span;
      const y = top + (h - top - bottom) * (1 - v / max);
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    }
    ctx.stroke();
  }
}

function draw() {
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  chart("chart-rate", [
    { get: (p) => p.recv_bytes_per_sec, color: color("--down") },
    { get: (p) => p.send_bytes_per_sec, color: color("--up") },
  ], rate);
  chart("chart-rtt", [{ get: (p) => p.rtt_ms, color: color("--rtt") }], (v) => v.toFixed(0) + " ms");
  chart("chart-loss", [{ get: (p) => p.loss_percent, color: color("--loss") }], (v) => v.toFixed(1) + " %");
}

// The carrier in use; with several paths (`--carrier auto`, port ranges), the others and
// their state after it.
function carrierCell(c) {
  const others = (c.paths || []).filter((p) => p.state !== "active" || p.carrier !== c.carrier);
  if (!others.length) return c.carrier;
  const seen = new Set();
  const rest = others
    .map((p) => p.carrier + " " + p.state)
    .filter((t) => !seen.has(t) && seen.add(t));
  return c.carrier + " (" + rest.join(", ") + ")";
}

function show(s) {
  $("role").textContent = s.role;
  $("addr").textContent = s.local_addr + " · v" + s.version;
  $("uptime").textContent = "up " + age(s.uptime_secs);
  $("conns").textContent = s.connections.length + (s.not_established ? " (+" + s.not_established + ")" : "");
  const t = s.totals;
  $("rate-recv").textContent = rate(t.recv_bytes_per_sec);
  $("rate-recv").dataset.value = t.recv_bytes_per_sec;
  $("rate-send").textContent = rate(t.send_bytes_per_sec);
  $("rate-send").dataset.value = t.send_bytes_per_sec;
  const rtts = s.connections.map((c) => c.rtt_ms).filter((v) => v !== null);
  const rtt = rtts.length ? rtts.reduce((a, b) => a + b, 0) / rtts.length : null;
  $("rtt").textContent = ms(rtt);
  const last = points.length ? points[points.length - 1] : null;
  $("loss").textContent = last ? pct(last.loss_percent) + " %" : "–";
  $("totals").textContent = bytes(t.bytes_received) + " / " + bytes(t.bytes_sent);

  fill("conn-table", s.connections, (c) => [
    [String(c.id)], [c.remote, true], [c.user || "–", true], [carrierCell(c), true], [age(c.age_secs)],
    [ms(c.rtt_ms)], [ms(c.min_rtt_ms)], [rate(c.recv_bytes_per_sec)], [rate(c.send_bytes_per_sec)],
    [bytes(c.bytes_received)], [bytes(c.bytes_sent)], [pct(c.loss_percent_now)],
    [pct(c.retransmit_percent_now)], [bytes(c.cwnd)], [String(c.mtu)],
    [c.streams_open + "/" + c.streams_opened_total],
  ]);
  $("users-section").hidden = s.users.length === 0;
  fill("user-table", s.users, (u) => [
    [u.name, true], [String(u.connections)], [String(u.streams_open)], [ms(u.rtt_ms)],
    [rate(u.traffic.recv_bytes_per_sec)], [rate(u.traffic.send_bytes_per_sec)],
    [bytes(u.traffic.bytes_received)], [bytes(u.traffic.bytes_sent)], [String(u.traffic.packets_lost)],
  ]);
  $("exposes-section").hidden = s.exposes.length === 0;
  fill("expose-table", s.exposes, (e) => [
    [e.kind + ":" + e.ports, true], [e.user || e.local || "–", true], [String(e.visitors_now)],
    [String(e.visitors_total)], [rate(e.to_service_bytes_per_sec)], [rate(e.to_visitors_bytes_per_sec)],
    [bytes(e.bytes_to_service)], [bytes(e.bytes_to_visitors)],
  ]);
  $("forwards-section").hidden = s.forwards.length === 0;
  fill("forward-table", s.forwards, (f) => [
    [f.kind + " " + f.listen, true], [f.target || "(per request)", true], [String(f.streams_open)],
    [String(f.streams_total)], [rate(f.up_bytes_per_sec)], [rate(f.down_bytes_per_sec)],
    [bytes(f.bytes_up)], [bytes(f.bytes_down)],
  ]);
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

async function poll() {
  try {
    const s = await getJson("api/stats");
    const rtts = s.connections.map((c) => c.rtt_ms).filter((v) => v !== null);
    const sent = s.connections.reduce((a, c) => a + c.send_bytes_per_sec, 0);
    const lossWeighted = s.connections.reduce((a, c) => a + c.loss_percent_now * c.send_bytes_per_sec, 0);
    const last = points.length ? points[points.length - 1].t : 0;
    if (s.unix_time_ms > last) {
      points.push({
        t: s.unix_time_ms,
        send_bytes_per_sec: s.totals.send_bytes_per_sec,
        recv_bytes_per_sec: s.totals.recv_bytes_per_sec,
        rtt_ms: rtts.length ? rtts.reduce((a, b) => a + b, 0) / rtts.length : null,
        loss_percent: sent > 0 ? lossWeighted / sent : 0,
        connections: s.connections.length,
      });
      if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
    }
    show(s);
    draw();
    $("status").textContent = "live";
    $("status").className = "dim";
  } catch (e) {
    $("status").textContent = "no answer: " + e.message;
    $("status").className = "bad";
  }
}

async function start() {
  try {
    const h = await getJson("api/history");
    points = h.points.slice(-MAX_POINTS);
  } catch (e) {
    points = [];
  }
  await poll();
  setInterval(poll, 1000);
  window.addEventListener("resize", draw);
}

start();
