"""The status page (``/``): one self-contained HTML page, no CDN, works offline.

It polls ``/api/v1/stats`` every two seconds and draws the rates as small
SVG line charts with its own few lines of JavaScript.
"""

from __future__ import annotations

STATUS_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shardmq status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .6em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
.card h2{font-size:.85em;color:#666;margin:0 0 4px;font-weight:600;text-transform:uppercase}
.big{font-size:1.6em;font-weight:600}
svg{width:100%;height:60px;display:block}
polyline{fill:none;stroke:#2a6fdb;stroke-width:1.5}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:2px 6px;border-bottom:1px solid #eee;font-size:.9em}
td{overflow-wrap:anywhere}
th,td+td{white-space:nowrap}
.bad{color:#b00020}
</style></head><body>
<h1>shardmq <span id="state"></span></h1>
<div class="grid">
<div class="card"><h2>Connections</h2><div class="big" id="connections">-</div>
<svg id="c_connections" viewBox="0 0 100 60" preserveAspectRatio="none"></svg></div>
<div class="card"><h2>Messages in /s</h2><div class="big" id="rx">-</div>
<svg id="c_rx" viewBox="0 0 100 60" preserveAspectRatio="none"></svg></div>
<div class="card"><h2>Messages out /s</h2><div class="big" id="tx">-</div>
<svg id="c_tx" viewBox="0 0 100 60" preserveAspectRatio="none"></svg></div>
<div class="card"><h2>Bytes in /s</h2><div class="big" id="brx">-</div>
<svg id="c_brx" viewBox="0 0 100 60" preserveAspectRatio="none"></svg></div>
<div class="card"><h2>Bytes out /s</h2><div class="big" id="btx">-</div>
<svg id="c_btx" viewBox="0 0 100 60" preserveAspectRatio="none"></svg></div>
<div class="card"><h2>Sessions</h2><div class="big" id="sessions">-</div>
<div>retained <b id="retained">-</b> &middot; queued <b id="queued">-</b>
&middot; dropped <b id="dropped">-</b> &middot; subscriptions <b id="subs">-</b></div></div>
</div>
<div class="grid" style="margin-top:12px">
<div class="card" style="grid-column:span 2"><h2>Workers</h2><table id="workers"></table></div>
<div class="card"><h2>Busiest topics (sampled)</h2><table id="topics"></table></div>
</div>
<script>
"use strict";
const N = 60, hist = {connections: [], rx: [], tx: [], brx: [], btx: []};
let prev = null;
function push(k, v) { const h = hist[k]; h.push(v); if (h.length > N) h.shift(); draw(k); }
function draw(k) {
  const h = hist[k], svg = document.getElementById("c_" + k);
  const max = Math.max(1, ...h);
  const pts = h.map((v, i) => (i * 100 / (N - 1)).toFixed(1) + "," +
                     (58 - v * 56 / max).toFixed(1)).join(" ");
  svg.innerHTML = '<polyline points="' + pts + '"/>';
}
function fmt(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n));
}
function text(id, v) { document.getElementById(id).textContent = v; }
function esc(s) { return String(s).replace(/[&<>"]/g, c => "&#" + c.charCodeAt(0) + ";"); }
async function tick() {
  try {
    const r = await fetch("api/v1/stats", {cache: "no-store"});
    const s = await r.json();
    const bad = s.unresponsive_workers.length;
    text("state", (s.nodes ? s.nodes + " nodes, " : "") + s.workers.length + " workers" +
         (bad ? ", " + bad + " not answering" : "") + ", up " + Math.round(s.uptime) + " s");
    document.getElementById("state").className = bad ? "bad" : "";
    text("connections", fmt(s.connections)); push("connections", s.connections);
    if (prev) {
      const dt = Math.max(0.001, s.time - prev.time);
      const rate = k => Math.max(0, (s[k] - prev[k]) / dt);
      const rx = rate("messages_received"), tx = rate("messages_sent");
      const brx = rate("bytes_received"), btx = rate("bytes_sent");
      text("rx", fmt(rx)); push("rx", rx); text("tx", fmt(tx)); push("tx", tx);
      text("brx", fmt(brx)); push("brx", brx); text("btx", fmt(btx)); push("btx", btx);
    }
    prev = s;
    text("sessions", s.sessions.online + " online, " + s.sessions.offline + " offline");
    text("retained", fmt(s.retained)); text("queued", fmt(s.queued));
    text("dropped", fmt(s.dropped)); text("subs", fmt(s.subscriptions));
    document.getElementById("workers").innerHTML =
      "<tr><th>worker</th><th>pid</th><th>conns</th><th>in</th><th>out</th><th>RSS</th></tr>" +
      s.workers.map(w => "<tr><td>" + w.worker + "</td><td>" + w.pid + "</td><td>" +
        w.connections + "</td><td>" + fmt(w.messages_received) + "</td><td>" +
        fmt(w.messages_sent) + "</td><td>" + fmt(w.rss_bytes) + "B</td></tr>").join("");
    document.getElementById("topics").innerHTML =
      "<tr><th>topic</th><th>samples</th></tr>" +
      s.topics.map(t => "<tr><td>" + esc(t.topic) + "</td><td>" + t.samples +
                  "</td></tr>").join("");
  } catch (e) {
    text("state", "(no answer)");
    document.getElementById("state").className = "bad";
  }
}
tick(); setInterval(tick, 2000);
</script></body></html>
"""
