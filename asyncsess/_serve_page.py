"""The web service's ``GET /`` page: live loss curve and step rate, self-contained."""

from __future__ import annotations

import base64
import hashlib

# Both charts are drawn on canvases by the inline script from ``GET /history``,
# polled every second. Each canvas's ``data-points`` says how many points it
# drew (tests/test_serve_browser.py reads it).
_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; }
#facts { display: flex; gap: 1.5em; flex-wrap: wrap; margin-bottom: 1em; }
#facts div { min-width: 8em; }
#facts b { display: block; font-size: 1.4em; font-variant-numeric: tabular-nums; }
canvas { border: 1px solid #ccc; display: block; margin-bottom: 1em;
         width: 100%; max-width: 900px; }
.stopped { color: #a40; } .error { color: #b00; }
"""

_SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
function fmt(v, digits) {
  return v === null || v === undefined ? "n/a" : Number(v).toPrecision(digits);
}
function draw(canvas, points, color, logScale) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 44;
  ctx.clearRect(0, 0, w, h);
  const ok = points.filter(p => p[1] !== null && isFinite(p[1]) &&
                                (!logScale || p[1] > 0));
  canvas.dataset.points = String(ok.length);
  if (ok.length === 0) return;
  const f = logScale ? Math.log10 : (v) => v;
  const xs = ok.map(p => p[0]), ys = ok.map(p => f(p[1]));
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (w - 2 * pad);
  const sy = (y) => h - pad + (y0 - y) / (y1 - y0) * (h - 2 * pad);
  ctx.strokeStyle = "#999"; ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(pad, pad / 2); ctx.lineTo(pad, h - pad);
  ctx.lineTo(w - pad / 2, h - pad); ctx.stroke();
  const label = (y) => logScale ? Math.pow(10, y).toPrecision(3) : y.toPrecision(3);
  ctx.fillText(label(y1), 2, sy(y1) + 4); ctx.fillText(label(y0), 2, sy(y0));
  ctx.fillText("step " + x0, pad, h - pad + 16);
  ctx.fillText("step " + x1, w - pad - 60, h - pad + 16);
  ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
  ok.forEach((p, i) => {
    const X = sx(p[0]), Y = sy(f(p[1]));
    if (i === 0) ctx.moveTo(X, Y); else ctx.lineTo(X, Y);
  });
  ctx.stroke();
}
async function refresh() {
  try {
    const r = await fetch("history", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const d = await r.json();
    $("step").textContent = d.global_step;
    $("loss").textContent = fmt(d.loss, 4);
    $("rate").textContent = fmt(d.steps_per_sec, 4);
    const state = $("state");
    state.textContent = d.running ? "training" :
        (d.predictions_from ? "serving " + d.predictions_from : "stopped");
    state.className = d.running ? "" : "stopped";
    $("note").textContent = d.error ? "error: " + d.error :
        (d.stop_reason ? "stopped: " + d.stop_reason : "");
    draw($("loss-chart"), d.points.map(p => [p[0], p[1]]), "#1565c0", true);
    draw($("rate-chart"), d.points.map(p => [p[0], p[2]]), "#2e7d32", false);
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    $("note").textContent = "cannot reach the service: " + err.message;
  }
}
refresh();
setInterval(refresh, 1000);
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>asyncsess: training and serving</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>asyncsess: live training</h1>
<div id="facts">
  <div>state<b id="state">…</b></div>
  <div>global step<b id="step">…</b></div>
  <div>loss<b id="loss">…</b></div>
  <div>steps/s<b id="rate">…</b></div>
</div>
<p id="note" class="error"></p>
<h2>Loss (log scale)</h2>
<canvas id="loss-chart" width="900" height="300" data-points="0"></canvas>
<h2>Steps per second</h2>
<canvas id="rate-chart" width="900" height="160" data-points="0"></canvas>
<p>The API: <a href="/openapi.json">/openapi.json</a> (OpenAPI), with
<a href="/status">/status</a>, <a href="/metrics">/metrics</a> and TensorFlow
Serving's <code>/v1/models/&hellip;</code> routes.</p>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


#: The page may run its own inline script and style and fetch from this origin,
#: nothing else.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; "
        f"style-src {_csp_hash(_STYLE)}; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
