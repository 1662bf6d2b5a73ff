"""The page at ``/``: static HTML and a little JavaScript, no build step, nothing from the internet.

Drop (or pick) a file: it goes to the node's own ``/v2/models/{name}/infer`` with the Open Inference
Protocol's binary extension (the ``image`` input, the ``heatmap`` output), and the call, probability,
threshold and heatmap are shown with the bundle (name, digest, signer). Below: the node's latest
readings by SOP Instance UID, refreshed every 2 s, and its health. Usable on a phone-sized screen.
"""

LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>edgecxr: token needed</title>
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem}
input{width:100%;font-size:1rem;padding:.5rem;box-sizing:border-box}button{margin-top:.5rem;font-size:1rem;padding:.5rem 1rem}
.e{color:#b00}</style></head><body><h1>edgecxr</h1><p>This node needs its access token.</p>
<p class="e">{{error}}</p><form method="get" action="/"><input name="token" type="password" autocomplete="off"
aria-label="token"><button type="submit">Open</button></form></body></html>"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgecxr node</title>
<style>
 body{font-family:system-ui,-apple-system,sans-serif;margin:0;background:#f4f5f7;color:#111}
 header{background:#1d2733;color:#fff;padding:.6rem 1rem}
 header h1{font-size:1.15rem;margin:0}
 .warn{background:#fff3cd;border-bottom:1px solid #e0c36a;padding:.5rem 1rem;font-weight:600}
 main{display:flex;flex-wrap:wrap;gap:1rem;padding:1rem}
 section{background:#fff;border-radius:8px;padding:1rem;flex:1 1 22rem;min-width:0;box-shadow:0 1px 3px #0002}
 h2{font-size:1rem;margin:.1rem 0 .6rem}
 #drop{border:2px dashed #7a8899;border-radius:8px;padding:1.4rem;text-align:center;cursor:pointer}
 #drop.over{background:#e8f0fe}
 #result{margin-top:.8rem}
 .call{font-size:1.4rem;font-weight:700}
 .PNEUMONIA{color:#b3261e}.NORMAL{color:#1e7b34}.refused{color:#8a5300}
 img{max-width:100%;height:auto;border-radius:4px}
 table{border-collapse:collapse;width:100%;font-size:.85rem}
 td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top}
 td.uid{word-break:break-all;font-family:ui-monospace,monospace;font-size:.75rem}
 .small{font-size:.8rem;color:#555;word-break:break-all}
 .ok{color:#1e7b34}.bad{color:#b3261e}
</style></head>
<body>
<header><h1>edgecxr: chest X-ray pneumonia reading on this node</h1></header>
<div class="warn" id="warn">Not a diagnosis. The reading supports a clinician, who reads the film and decides.</div>
<main>
<section aria-labelledby="h-read">
 <h2 id="h-read">Read an image</h2>
 <div id="drop" tabindex="0">Drop a DICOM, PNG or JPEG chest X-ray here, or
  <label><u>choose a file</u><input id="file" type="file" hidden></label></div>
 <div id="result" aria-live="polite"></div>
 <p class="small" id="bundle"></p>
</section>
<section aria-labelledby="h-latest">
 <h2 id="h-latest">Latest readings</h2>
 <table><thead><tr><th>time</th><th>SOP Instance UID</th><th>door</th><th>reading</th></tr></thead>
 <tbody id="latest"></tbody></table>
</section>
<section aria-labelledby="h-health">
 <h2 id="h-health">Node health</h2>
 <div id="health">...</div>
</section>
</main>
<script>
"use strict";
const MODEL = {{model}};
const $ = (id) => document.getElementById(id);
function esc(s){return String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));}

async function read(file){
  const out = $("result");
  out.innerHTML = "Reading " + esc(file.name) + "...";
  const data = new Uint8Array(await file.arrayBuffer());
  const head = new TextEncoder().encode(JSON.stringify({
    inputs:[{name:"image",datatype:"BYTES",shape:[1],parameters:{binary_data_size:4+data.length}}],
    outputs:[{name:"probability"},{name:"call"},{name:"threshold"},{name:"heatmap",parameters:{binary_data:true}}]}));
  const len = new Uint8Array(4); new DataView(len.buffer).setUint32(0, data.length, true);
  let r;
  try {
    r = await fetch("/v2/models/" + encodeURIComponent(MODEL) + "/infer", {method:"POST",
      headers:{"Inference-Header-Content-Length": String(head.length), "Content-Type":"application/octet-stream"},
      body:new Blob([head, len, data])});
  } catch (e) { out.innerHTML = '<p class="refused">The node did not answer: ' + esc(e) + "</p>"; return; }
  const buf = new Uint8Array(await r.arrayBuffer());
  if (!r.ok) {
    let msg = "HTTP " + r.status;
    try { msg = JSON.parse(new TextDecoder().decode(buf)).error || msg; } catch (e) {}
    out.innerHTML = '<p class="call refused" id="call">NOT READ</p><p id="reason">' + esc(msg) + "</p>";
    return;
  }
  const hl = parseInt(r.headers.get("Inference-Header-Content-Length") || String(buf.length), 10);
  const resp = JSON.parse(new TextDecoder().decode(buf.slice(0, hl)));
  const o = {}; let off = hl;
  for (const t of resp.outputs) {
    if (t.parameters && t.parameters.binary_data_size) {
      const raw = buf.slice(off, off + t.parameters.binary_data_size); off += t.parameters.binary_data_size;
      const n = new DataView(raw.buffer, raw.byteOffset).getUint32(0, true);
      o[t.name] = raw.slice(4, 4 + n);
    } else { o[t.name] = t.data; }
  }
  const call = o.call[0], p = o.probability[0], thr = o.threshold[0];
  const url = URL.createObjectURL(new Blob([o.heatmap], {type:"image/png"}));
  out.innerHTML = '<p class="call ' + esc(call) + '" id="call">' + esc(call) + "</p>" +
    '<p>p(pneumonia) = <b id="prob">' + p.toFixed(4) + '</b>, threshold <span id="thr">' + thr.toFixed(4) + "</span></p>" +
    '<img id="heatmap" alt="occlusion heatmap, not for diagnosis" src="' + url + '">' +
    '<p class="small">Heatmap: where covering the image moves the reading (occlusion). Not for diagnosis.</p>';
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) read(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) read(e.dataTransfer.files[0]); });

async function refresh(){
  try {
    const [rr, nr, hr] = await Promise.all([fetch("/api/readings"), fetch("/api/node"), fetch("/v2/health/ready")]);
    if (rr.ok) {
      const rows = await rr.json();
      $("latest").innerHTML = rows.map(x => "<tr><td>" + esc((x.time || "").slice(11, 19)) + '</td><td class="uid">' +
        esc(x.sop_instance_uid || x.request_id || "") + "</td><td>" + esc(x.door || "dicom") + "</td><td>" +
        (x.status === "read" ? '<span class="' + esc(x.call) + '">' + esc(x.call) + "</span> " + Number(x.prob).toFixed(3)
          : '<span class="refused">' + esc(x.status) + "</span> " + esc((x.reason || "").slice(0, 90))) +
        "</td></tr>").join("") || '<tr><td colspan="4">none yet</td></tr>';
    }
    if (nr.ok) {
      const n = await nr.json();
      $("bundle").innerHTML = "Bundle " + esc(n.bundle) + " (" + esc(n.backend) + " " + esc(n.precision) + "), " +
        esc(n.digest) + "<br>" + (n.signer ? "signed by " + esc(n.signer) : "<b>not signed</b>") +
        "<br>" + esc(n.note);
      $("health").innerHTML = '<p class="' + (hr.ok ? "ok" : "bad") + '" id="ready">' + (hr.ok ? "ready" : "not ready") +
        "</p><p>waiting: " + esc(n.queue) + "</p><p>DICOM: " + esc(n.dicom || "off") + "</p>";
    } else { $("health").innerHTML = '<p class="bad">HTTP ' + nr.status + "</p>"; }
  } catch (e) { $("health").innerHTML = '<p class="bad" id="ready">node not answering</p>'; }
}
refresh(); setInterval(refresh, 2000);
</script>
</body></html>
"""
