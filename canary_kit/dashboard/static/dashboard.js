// canary dashboard: polls /api/state twice a second (the server reads the stack once a second for every page),
// shows it, and sends the actions with the token in the X-Canary-Token header. No inline script: the page's CSP
// allows only this file. Server data goes into the page as text, except the charts, which the server draws as SVG.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "canary-dashboard-token";
  const COLORS = ["blue", "green"];
  let token = sessionStorage.getItem(KEY) || "";
  const found = location.hash.match(/token=([^&]+)/);
  if (found) { // the token printed at start, in the URL's fragment (never sent to the server): keep it, hide it
    token = decodeURIComponent(found[1]);
    sessionStorage.setItem(KEY, token);
    history.replaceState(null, "", location.pathname);
  }
  let lastTick = -1, serial = null, minSerial = -1, rollout = null, busy = false;

  const fmt = (v, digits = 1, suffix = "") => (v == null ? "-" : `${Number(v).toFixed(digits)}${suffix}`);
  const setText = (id, text) => { const el = $(id); if (el && el.textContent !== text) el.textContent = text; };
  const auth = () => (token ? { "X-Canary-Token": token } : {});

  function message(text, error = false) {
    setText("message", text);
    $("message").classList.toggle("error", error);
  }

  function showSplit(weight) {
    setText("split", `blue ${100 - weight}% / green ${weight}%`);
    setText("blue-weight", `${100 - weight}%`);
    setText("green-weight", `${weight}%`);
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function renderVersions(s, latest) {
    const fresh = !(s.state_file && s.state_file.serial < minSerial); // not older than our own last change
    if (fresh) showSplit(s.green_weight);
    serial = s.state_file ? s.state_file.serial : null;
    if (s.shadow) setText("split", `${$("split").textContent}   shadow: green gets a copy of each /predict`);
    setText("since", s.since ? `figures since ${s.since.slice(0, 19).replace("T", " ")} UTC` : "figures since start");
    for (const c of COLORS) {
      const b = s.backends[c], f = b.since_change || {}, now = (latest && latest[c]) || {};
      const free = c === "green" && s.green_free;
      setText(`${c}-version`, free ? "-" : b.version || "-");
      setText(`${c}-health`, free ? "free" : b.healthy ? "up" : "DOWN");
      $(`${c}-health`).className = free ? "" : b.healthy ? "up" : "down";
      setText(`${c}-rps`, fmt(now.rps, 1));
      setText(`${c}-requests`, f.requests == null ? "-" : String(f.requests));
      setText(`${c}-errors`, f.requests ? `${fmt(100 * (f.error_rate || 0), 2, "%")} (${f.errors})` : "-");
      setText(`${c}-latency`, `${fmt(f.p50_ms)} / ${fmt(f.p99_ms)}`);
      const rows = f.class_rows || {}, total = f.rows || 0;
      if (s.task === "regression") {  // a regressor: its predicted values' mean and spread
        setText(`${c}-confidence`, `${fmt(f.value_mean, 4)} / ${fmt(f.value_sd, 4)}`);
        setText(`${c}-classes`, total ? `${total} rows` : "-");
        continue;
      }
      setText(`${c}-confidence`, fmt(f.confidence_mean, 3));
      setText(`${c}-classes`, total ? Object.entries(rows).map(([k, n]) => `${k} ${Math.round((100 * n) / total)}%`).join("  ") + ` (${total} rows)` : "-");
    }
    const regression = s.task === "regression";
    setText("confidence-label", regression ? "predicted mean / sd" : "mean confidence");
    setText("classes-label", regression ? "predicted rows" : "predicted classes");
    const distance = regression ? s.ks_distance : s.class_divergence;
    const what = regression ? "KS distance of predicted values" : "class divergence (JS distance";
    setText("divergence", distance == null ? "" : `${what}${regression ? " (" : ", "}green vs blue, since the last change): ${distance.toFixed(3)}`);
  }

  const num = (v) => (v == null ? "-" : Math.abs(v) < 1000 ? Number(v).toPrecision(3) : Number(v).toFixed(0));

  function gateLines(g) { // sequential: fails above the tolerance, passes below the threshold; fixed: the threshold
    if (g.tolerance != null) return `fails > ${num(g.tolerance)}, passes < ${num(g.threshold)}`;
    return g.threshold == null ? "-" : String(g.threshold);
  }

  function renderRollout(r) {
    rollout = r;
    const running = !!r && r.state === "running";
    $("pause").disabled = $("abort").disabled = !running || busy;
    const hold = $("rollout-hold");
    hold.hidden = !running;
    const state = $("rollout-state");
    state.className = r ? `state-${r.state.replace(" ", "-")}` : "";
    const steps = $("rollout-steps");
    if (!r) { setText("rollout-state", "no rollout yet"); steps.replaceChildren(); return; }
    const plan = r.steps || [];
    const sequential = r.mode === "sequential";
    const look = sequential && running ? r.look : null;
    if (running) {
      const now = Date.now() / 1000;
      if (!r.step) {
        setText("rollout-state", "running: shadow phase");
      } else if (sequential) {
        const held = r.step_started ? Math.max(0, now - r.step_started) : 0;
        setText("rollout-state", `running: step ${r.step}/${plan.length} (${plan.join(", ")}), green ${r.weight}%, step held ${held.toFixed(0)} s (sequential: ${r.min_step_seconds}-${r.max_step_seconds} s)`);
        hold.value = Math.min(1, held / (r.max_step_seconds || 1));
      } else {
        const held = r.window_started ? Math.max(0, now - r.window_started) : 0;
        setText("rollout-state", `running: step ${r.step}/${plan.length} (${plan.join(", ")}), green ${r.weight}%, window ${held.toFixed(0)} s of ${r.hold_seconds} s`);
        hold.value = Math.min(1, held / (r.hold_seconds || 1));
      }
    } else {
      setText("rollout-state", `${r.state}: ${r.reason || ""}; green at ${r.final_weight}%  (started ${String(r.started).slice(0, 19).replace("T", " ")})`);
    }
    const checks = r.checks || [];
    const last = checks[checks.length - 1];
    if (look) setText("rollout-check", `last look: step ${r.step} (${r.weight}%), ${look.seconds.toFixed(0)} s: ${look.verdict} - ${look.reason}`);
    else setText("rollout-check", last ? `last check: step ${last.step} (${last.weight}%): ${last.outcome || "-"}, verdict ${last.verdict} - ${last.reason}` : "no check yet");
    const body = $("gates").tBodies[0];
    body.replaceChildren();
    for (const g of (look ? look.gates : last && last.gates) || []) {
      const row = document.createElement("tr");
      row.title = g.detail;
      cell(row, g.name);
      cell(row, num(g.figure));
      cell(row, g.low == null || g.high == null ? "-" : `[${num(g.low)}, ${num(g.high)}]`);
      cell(row, gateLines(g));
      const failedDry = g.dry_run && g.status === "fail";
      cell(row, g.dry_run && g.status !== "skipped" ? `${g.status} (dry-run)` : g.status, failedDry ? "dry-run" : g.status);
      body.appendChild(row);
    }
    steps.replaceChildren(...checks.filter((c) => c.verdict !== "hold").map((c) => { // why each step ended
      const li = document.createElement("li");
      li.textContent = `step ${c.step} (${c.weight}%) ${c.verdict} after ${(c.seconds || 0).toFixed(0)} s: ${c.reason}`;
      return li;
    }));
    const sh = r.shadow;
    setText("shadow", sh ? `shadow phase: agreement ${sh.agreement == null ? "-" : (100 * sh.agreement).toFixed(2) + "%"} over ${sh.rows_compared} rows${sh.gate ? "; " + sh.gate.detail : ""}` : "");
  }

  function renderHistory(entries) {
    const body = $("history").tBodies[0];
    body.replaceChildren();
    for (const e of entries) {
      const row = document.createElement("tr");
      cell(row, String(e.time || "").slice(0, 19).replace("T", " "));
      cell(row, e.event || "set-weight");
      cell(row, e.blue_version || "-");
      cell(row, e.green_version || "-");
      cell(row, `${e.old_green_weight ?? "-"} -> ${e.new_green_weight ?? "-"}`);
      cell(row, e.by || "");
      cell(row, e.reason || "");
      body.appendChild(row);
    }
  }

  function render(v) {
    const problem = $("problem");
    problem.hidden = !v.problem;
    setText("problem", v.problem ? `stack down or unreadable: ${v.problem}` : "");
    const warnings = $("warnings");
    warnings.replaceChildren(...(v.warnings || []).map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
    if (v.status) renderVersions(v.status, v.latest);
    setText("updated", `updated ${new Date(v.time * 1000).toLocaleTimeString()}`);
    renderRollout(v.rollout);
    renderHistory(v.history || []);
    for (const [name, svg] of Object.entries(v.charts || {})) {
      const el = $(`chart-${name}`);
      if (!el) continue;
      el.hidden = !svg;
      el.innerHTML = svg; // drawn by the server (charts.py, rollout/report.py), every text in it escaped
    }
  }

  async function refresh() {
    try {
      const r = await fetch("/api/state", { headers: auth(), cache: "no-store" });
      const data = await r.json();
      if (!r.ok) {
        $("problem").hidden = false;
        setText("problem", `error: ${data.error}`);
        $("token-box").hidden = false;
        return;
      }
      if (data.tick !== lastTick) { lastTick = data.tick; render(data); }
      else if (rollout) renderRollout(rollout); // the hold's clock
    } catch (err) {
      $("problem").hidden = false;
      setText("problem", "the dashboard does not answer (was `canary dashboard` stopped?)");
    }
  }

  async function act(action, body = {}) {
    if (!token) {
      message("error: actions need the dashboard's token (printed by `canary dashboard`, or CANARY_DASHBOARD_TOKEN)", true);
      $("token-box").hidden = false;
      return;
    }
    busy = true;
    for (const id of ["set-weight", "promote", "rollback", "pause", "abort"]) $(id).disabled = true;
    message(`${action} ...`);
    try {
      const r = await fetch(`/api/${action}`, {
        method: "POST",
        headers: { ...auth(), "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, reason: $("reason").value }),
      });
      const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
      if (r.ok) {
        message(data.message);
        if (data.green_weight != null) { minSerial = data.serial; showSplit(data.green_weight); }
      } else {
        message(`error: ${data.error}`, true);
        if (r.status === 401 || r.status === 403) $("token-box").hidden = false;
      }
    } catch (err) {
      message(`error: the dashboard did not answer (${err})`, true);
    } finally {
      busy = false;
      for (const id of ["set-weight", "promote", "rollback"]) $(id).disabled = false;
      renderRollout(rollout);
      refresh();
    }
  }

  $("set-weight").addEventListener("click", () => {
    const text = $("weight").value.trim();
    act("set-weight", { weight: /^\d+$/.test(text) ? Number(text) : text, serial });
  });
  $("promote").addEventListener("click", () => act("promote", { serial }));
  $("rollback").addEventListener("click", () => act("rollback"));
  $("pause").addEventListener("click", () => act("pause"));
  $("abort").addEventListener("click", () => act("abort"));
  $("token-save").addEventListener("click", () => {
    token = $("token").value.trim();
    sessionStorage.setItem(KEY, token);
    $("token-box").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, 500);
})();
