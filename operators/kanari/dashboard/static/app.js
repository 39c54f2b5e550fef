// Kanari dashboard: draws one view from its JSON document (fetched live, or embedded in an export) and keeps
// it current from the server's event stream. Text goes in with textContent only: nothing from the cluster is
// ever parsed as HTML.
(function () {
  "use strict";
  var body = document.body;
  var VIEW = body.dataset.view, API = body.dataset.api, ROOT = body.dataset.root, LIVE = body.dataset.mode === "live";
  var CSRF = body.dataset.csrf;
  var root = document.getElementById("view");
  var liveStatus = document.getElementById("live");
  var charts = [];
  var doc = null;

  var COLORS = { stable: "#1565c0", canary: "#ef6c00", Successful: "#2e7d32", Failed: "#c62828",
    Inconclusive: "#757575", Error: "#6a1b9a", warn: "#b7791f", critical: "#c62828" };
  var PALETTE = ["#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#455a64"];

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    });
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      (Array.isArray(c) ? c : [c]).forEach(function (x) {
        if (x !== null && x !== undefined) node.appendChild(typeof x === "string" ? document.createTextNode(x) : x);
      });
    }
    return node;
  }
  function pad(n) { return n < 10 ? "0" + n : "" + n; }
  function clock(t) {
    if (t === null || t === undefined) return "-";
    var d = new Date(t * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function isoToEpoch(s) { var t = Date.parse(s); return isNaN(t) ? null : t / 1000; }
  function num(v, unit) { return v === null || v === undefined ? "-" : (+v).toPrecision(4).replace(/\.?0+$/, "") + (unit || ""); }
  function badge(text, kind) { return el("span", { class: "badge " + (kind || text || "none"), text: text || "-" }); }
  function table(caption, headers, rows, cls) {
    return el("table", { class: cls || "" }, el("caption", { text: caption }),
      el("thead", {}, el("tr", {}, headers.map(function (h) { return el("th", { scope: "col", text: h }); }))),
      el("tbody", {}, rows));
  }
  function section(title, id) {
    var s = el("section", { "aria-labelledby": id });
    s.appendChild(el("h2", { id: id, text: title }));
    return s;
  }
  function link(href, text) { return el("a", { href: href, text: text }); }
  function mdHref(ns, name, sub) {
    var base = ROOT + "md/" + encodeURIComponent(ns) + "/" + encodeURIComponent(name);
    if (LIVE) return base + (sub ? "/" + sub : "");
    return base + "/" + (sub ? sub + ".html" : "index.html");
  }
  function width(node) { return Math.max(320, Math.min(1100, (node.clientWidth || root.clientWidth || 900) - 8)); }

  // ---------------------------------------------------------------------------------------- charts
  function chart(container, opts, data) {
    opts.width = width(container);
    opts.height = opts.height || 220;
    var u = new uPlot(opts, data, container);
    // uPlot's legend is a layout table (swatches and live values): not data a screen reader should walk.
    u.root.querySelectorAll("table").forEach(function (t) { t.setAttribute("role", "presentation"); });
    charts.push(u);
    return u;
  }
  function destroyCharts() { charts.forEach(function (u) { u.destroy(); }); charts = []; }
  function hline(value, n) { var a = []; for (var i = 0; i < n; i++) a.push(value); return a; }
  function figure(title, caption) {
    var fig = el("figure", { class: "chart" });
    fig.appendChild(el("figcaption", {}, el("strong", { text: title }), caption ? el("span", { text: " " + caption }) : null));
    return fig;
  }

  function trafficChart(t) {
    var fig = figure("Traffic split", "(percent of requests; steps are the rollout's weight changes)");
    if (!t || !t.t || !t.t.length) { fig.appendChild(el("p", { class: "empty", text: "No weight changes recorded." })); return fig; }
    var stepped = uPlot.paths.stepped({ align: 1 });
    var holder = el("div", { role: "img", "aria-label": "traffic split over time: canary now " + t.canary[t.canary.length - 1] + "%" });
    fig.appendChild(holder);
    requestAnimationFrame(function () {
      chart(holder, {
        series: [{}, { label: "stable %", stroke: COLORS.stable, width: 2, paths: stepped },
          { label: "canary %", stroke: COLORS.canary, width: 2, paths: stepped }],
        scales: { y: { range: [0, 105] } }, axes: [{}, { label: "%" }],
      }, [t.t, t.stable, t.canary]);
    });
    return fig;
  }

  function metricChart(c) {
    var unit = c.unit ? " (" + c.unit + ")" : "";
    var thr = [c.min !== null ? ">= " + num(c.min, c.unit) : null, c.max !== null ? "<= " + num(c.max, c.unit) : null]
      .filter(Boolean).join(" and ");
    var fig = figure(c.metric + unit, thr ? "threshold " + thr : "");
    if (!c.points.length) { fig.appendChild(el("p", { class: "empty", text: "No measurements yet." })); return fig; }
    // Two bare timestamps either side: threshold lines span the chart even with one measurement.
    var first = c.points[0].t, last = c.points[c.points.length - 1].t, padt = Math.max(5, (last - first) * 0.05);
    var pts = [{ t: first - padt }].concat(c.points, [{ t: last + padt }]);
    var xs = pts.map(function (p) { return p.t; });
    var verdicts = ["Successful", "Failed", "Inconclusive", "Error"];
    var series = [{}], data = [xs];
    verdicts.forEach(function (v) {
      var ys = pts.map(function (p) { return p.verdict === v ? p.value : null; });
      if (!ys.some(function (y) { return y !== null; })) return;
      series.push({ label: v, stroke: COLORS[v], fill: COLORS[v], width: 0, paths: function () { return null; },
        points: { show: true, size: v === "Failed" ? 11 : 7, fill: COLORS[v], stroke: COLORS[v] } });
      data.push(ys);
    });
    var stableVals = pts.map(function (p) { return p.stable === undefined ? null : p.stable; });
    if (stableVals.some(function (y) { return y !== null; })) {
      series.push({ label: "stable", stroke: COLORS.stable, dash: [4, 4], width: 1, spanGaps: true,
        points: { show: true, size: 5 } });
      data.push(stableVals);
    }
    [["min", c.min], ["max", c.max]].forEach(function (b) {
      if (b[1] === null || b[1] === undefined) return;
      series.push({ label: "threshold " + (b[0] === "min" ? ">= " : "<= ") + num(b[1], c.unit), stroke: COLORS.critical,
        dash: [6, 4], width: 1.5, points: { show: false } });
      data.push(hline(b[1], xs.length));
    });
    var failure = c.failure;
    var holder = el("div", { role: "img", "aria-label": c.metric + " measurements" + (failure ? "; failed: " + failure.message : "") });
    fig.appendChild(holder);
    if (failure) fig.appendChild(el("p", { class: "failure", text: "Rolled back on " + clock(failure.t) + ": " + failure.message }));
    var values = c.points.map(function (p) { return p.value; }).concat([c.min, c.max]).filter(function (v) { return v !== null && v !== undefined; });
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values), padv = (hi - lo) * 0.15 || Math.abs(hi) * 0.1 || 1;
    requestAnimationFrame(function () {
      chart(holder, {
        series: series, scales: { y: { range: [Math.max(lo >= 0 ? 0 : -Infinity, lo - padv), hi + padv] } },
        axes: [{}, { label: c.metric + unit }],
        hooks: { draw: [function (u) {
          if (!failure) return;
          var x = u.valToPos(failure.t, "x", true), y = u.valToPos(failure.value, "y", true), ctx = u.ctx;
          ctx.save();
          ctx.fillStyle = COLORS.Failed;
          ctx.font = (12 * devicePixelRatio) + "px system-ui, sans-serif";
          var text = "rollback: " + num(failure.value, c.unit);
          var w = ctx.measureText(text).width;
          ctx.textAlign = x + w + 10 > u.bbox.left + u.bbox.width ? "right" : "left";
          ctx.fillText(text, x + (ctx.textAlign === "left" ? 10 : -10), Math.max(u.bbox.top + 14, y - 8));
          ctx.restore();
        }] },
      }, data);
    });
    return fig;
  }

  function driftChart(f, d) {
    var fig = figure(f.feature, "(" + d.method + "; warn " + d.warn + ", critical " + d.critical + (f.axis.distr === "split" ? "; logarithmic above " + num(f.axis.knee) : "") + ")");
    var holder = el("div", { role: "img", "aria-label": "drift of " + f.feature + ": now " + num(f.current) });
    fig.appendChild(holder);
    // One shared time axis: each line's points placed on the union of timestamps.
    var ts = {};
    f.lines.forEach(function (l) { l.t.forEach(function (t) { ts[t] = true; }); });
    var xs = Object.keys(ts).map(Number).sort(function (a, b) { return a - b; });
    // From the first sample to the end of the window, so the lines reach "now"; warn/critical span it all.
    var end = Math.max(xs.length ? xs[xs.length - 1] : 0, d.window ? d.window[1] : 0);
    if (!xs.length || end > xs[xs.length - 1]) xs.push(end);
    if (xs.length === 1 || xs[xs.length - 1] - xs[0] < 60) xs.unshift(xs[xs.length - 1] - 60);
    var index = {}; xs.forEach(function (t, i) { index[t] = i; });
    var series = [{}], data = [xs];
    f.lines.forEach(function (l, i) {
      var ys = xs.map(function () { return null; });
      l.t.forEach(function (t, j) { ys[index[t]] = l.v[j]; });
      series.push({ label: l.label, stroke: l.live ? PALETTE[i % PALETTE.length] : "#9e9e9e", width: l.live ? 2 : 1,
        dash: l.live ? null : [3, 3], spanGaps: false, points: { show: l.t.length < 3 } });
      data.push(ys);
    });
    series.push({ label: "warn " + d.warn, stroke: COLORS.warn, dash: [6, 4], width: 1.5, points: { show: false } });
    data.push(hline(d.warn, xs.length));
    series.push({ label: "critical " + d.critical, stroke: COLORS.critical, dash: [6, 4], width: 1.5, points: { show: false } });
    data.push(hline(d.critical, xs.length));
    var axis = f.axis, scale, yaxis = { label: d.method };
    if (axis.distr === "split") {
      // The same split axis as views.drift_axis: linear to the knee (60% of the height), logarithmic above.
      var knee = axis.knee, kf = axis.kneeFraction, top = axis.max, span = Math.log(top / knee);
      var fwd = function (v) { return v <= knee ? kf * v / knee : kf + (1 - kf) * Math.log(v / knee) / span; };
      var bwd = function (f) { return f <= kf ? f * knee / kf : knee * Math.exp((f - kf) / (1 - kf) * span); };
      scale = { distr: 100, fwd: fwd, bwd: bwd, range: [0, top] };
      var ticks = [0, d.warn, d.critical, knee];
      for (var k = 1; k <= 3; k++) ticks.push(bwd(kf + (1 - kf) * k / 3));
      yaxis.splits = function () { return ticks; };
      yaxis.values = function (u, vals) { return vals.map(function (v) { return num(v); }); };
    } else {
      scale = { range: [axis.min, axis.max] };
    }
    requestAnimationFrame(function () {
      chart(holder, { series: series, scales: { y: scale }, axes: [{}, yaxis] }, data);
    });
    return fig;
  }

  // ------------------------------------------------------------------------------------------ views
  var PHASES = ["Pending", "Progressing", "Paused", "Promoting", "Succeeded", "RolledBack", "Degraded", "Failed"];

  function weights(r) {
    var bar = el("span", { class: "split", "aria-hidden": "true" },
      el("span", { class: "stable", style: null }), el("span", { class: "canary" }));
    bar.firstChild.style.width = r.stableWeight + "%";
    bar.lastChild.style.width = r.canaryWeight + "%";
    return el("span", { class: "weights" }, bar,
      el("span", { class: "weight-text", text: r.stableWeight + " / " + r.canaryWeight }));
  }

  function listRow(r) {
    var key = r.namespace + "/" + r.name;
    var drift = r.drift === "off" ? "-" : r.drift + (r.driftValue !== null && r.driftValue !== undefined ? " " + num(r.driftValue) : "");
    return el("tr", { "data-key": key, "data-phase": r.phase, "data-search": (key + " " + r.phase + " " + r.stable + " " + r.canary).toLowerCase() },
      el("th", { scope: "row" }, link(mdHref(r.namespace, r.name), r.name)),
      el("td", { text: r.namespace }),
      el("td", {}, badge(r.phase), r.paused ? el("span", { class: "sub", text: " " + r.paused }) : null),
      el("td", { text: r.stable || "-" }), el("td", { text: r.canary || "-" }),
      el("td", { class: "weight" }, weights(r)),
      el("td", { text: r.step }),
      el("td", {}, r.verdict ? badge(r.verdict) : "-"),
      el("td", { title: r.driftFeature ? "worst feature: " + r.driftFeature : null }, badge(drift, "drift-" + r.drift)),
      el("td", { class: "age", "data-created": r.created, text: r.age }));
  }

  function renderList(d) {
    var before = { q: (document.getElementById("filter") || {}).value || "", p: (document.getElementById("phase-filter") || {}).value || "" };
    var frag = document.createDocumentFragment();
    var search = el("input", { type: "search", id: "filter", placeholder: "name, namespace, version…", autocomplete: "off" });
    var phase = el("select", { id: "phase-filter" }, el("option", { value: "", text: "all phases" }),
      PHASES.map(function (p) { return el("option", { value: p, text: p }); }));
    var count = el("span", { id: "count", role: "status" });
    frag.appendChild(el("div", { class: "controls" }, el("label", { for: "filter", text: "Filter " }), search,
      el("label", { for: "phase-filter", text: " Phase " }), phase, count));
    if (d.prometheus) frag.appendChild(el("p", { class: "notice", text: "Drift column unavailable: " + d.prometheus }));
    var tbody = d.rows.map(listRow);
    var t = table("ModelDeployments" + (d.scope ? " in " + d.scope : "") + (d.user ? " as " + d.user : ""),
      ["Name", "Namespace", "Phase", "Stable", "Canary", "Weight stable / canary %", "Step", "Analysis", "Drift", "Age"], tbody, "list");
    t.id = "md-table";
    frag.appendChild(t);
    if (!d.rows.length) frag.appendChild(el("p", { class: "empty", text: "No ModelDeployments you can read." }));
    Object.keys(d.notes || {}).forEach(function (title, i) {
      var s = section(title, "note-" + i);
      s.appendChild(el("ul", {}, d.notes[title].map(function (x) { return el("li", { text: x }); })));
      frag.appendChild(s);
    });
    function apply() {
      var q = search.value.trim().toLowerCase(), p = phase.value, shown = 0;
      document.querySelectorAll("#md-table tbody tr").forEach(function (tr) {
        var ok = (!q || tr.dataset.search.indexOf(q) >= 0) && (!p || tr.dataset.phase === p);
        tr.hidden = !ok; if (ok) shown++;
      });
      count.textContent = " " + shown + " of " + document.querySelectorAll("#md-table tbody tr").length + " shown";
    }
    search.addEventListener("input", apply);
    phase.addEventListener("change", apply);
    search.value = before.q;
    phase.value = before.p;
    root.replaceChildren(frag);
    apply();
  }

  function updateRow(msg) {
    var tbody = document.querySelector("#md-table tbody");
    if (!tbody) return;
    var old = tbody.querySelector('tr[data-key="' + CSS.escape(msg.key) + '"]');
    if (msg.type === "DELETED") { if (old) old.remove(); }
    else if (old) { old.replaceWith(listRow(msg.row)); }
    else { tbody.appendChild(listRow(msg.row)); }
    var f = document.getElementById("filter");
    if (f) f.dispatchEvent(new Event("input"));
  }

  function actions(d) {
    if (!LIVE || !d.actionsEnabled || !d.actions.length) return null;
    var s = d.summary;
    var labels = { "promote": "Promote", "promote-full": "Promote fully", "pause": "Pause", "resume": "Resume",
      "abort": "Abort", "retry": "Retry" };
    var explain = { "promote": "move to the next step", "promote-full": "skip the remaining steps and analysis: 100% now",
      "pause": "hold at the current step", "resume": "continue the rollout", "abort": "roll back now: canary weight 0",
      "retry": "roll out the rolled-back revision again" };
    var out = el("div", { class: "actions", role: "group", "aria-label": "rollout actions" });
    // The result lives outside the view, which is redrawn as the rollout changes.
    var result = document.getElementById("action-result");
    d.actions.forEach(function (a) {
      var b = el("button", { type: "button", "data-action": a, class: a === "abort" ? "danger" : "", text: labels[a] });
      b.addEventListener("click", function () {
        confirmThen(labels[a] + " " + s.namespace + "/" + s.name + "? This will " + explain[a] + ".", function () {
          result.textContent = "requesting " + a + "…";
          result.className = "";
          fetch(ROOT + "api/md/" + encodeURIComponent(s.namespace) + "/" + encodeURIComponent(s.name) + "/action", {
            method: "POST", headers: { "Content-Type": "application/json", "X-Kanari-CSRF": CSRF },
            body: JSON.stringify({ action: a }), credentials: "same-origin",
          }).then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
            .then(function (x) {
              if (x[0] === 200) { result.textContent = a + " requested (" + x[1].annotation + "); the controller acts on it next."; result.className = "ok"; }
              else { result.textContent = "Refused (" + x[0] + "): " + (x[1].error || "unknown error"); result.className = "error"; result.setAttribute("role", "alert"); }
            })
            .catch(function () { result.textContent = "The dashboard server did not answer."; result.className = "error"; });
        });
      });
      out.appendChild(b);
    });
    return out;
  }

  function confirmThen(text, go) {
    var dlg = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    dlg.returnValue = "";
    dlg.onclose = function () { if (dlg.returnValue === "ok") go(); };
    dlg.showModal();
  }

  function summaryBlock(d) {
    var s = d.summary, st = d.status;
    var dl = el("dl", { class: "summary" });
    function row(k, v) { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", {}, v)); }
    row("Phase", [badge(s.phase), st.message ? el("span", { text: " " + st.message }) : null]);
    row("Strategy", (d.strategy || "-") + ", step " + s.step);
    row("Stable", st.stable ? st.stable.version + " (revision " + st.stable.revision + ") at " + s.stableWeight + "%" : "-");
    row("Canary", st.canary ? st.canary.version + " (revision " + st.canary.revision + ") at " + s.canaryWeight + "%" : "-");
    if (st.abortedRevision) row("Rolled back", "revision " + st.abortedRevision + " (not retried until the spec changes or retry)");
    if (st.lastAction) row("Last action", st.lastAction);
    if (d.specError) row("Spec", el("span", { class: "error", text: d.specError }));
    return dl;
  }

  function stepsBlock(d) {
    var s = section("Steps", "steps-h");
    if (!d.steps.length) { s.appendChild(el("p", { class: "empty", text: "No steps (invalid spec)." })); return s; }
    s.appendChild(el("ol", { class: "steps" }, d.steps.map(function (st) {
      return el("li", { class: "step " + st.state + " " + st.kind, "aria-current": st.state === "current" ? "step" : null },
        el("span", { class: "n", text: st.index + 1 }), el("span", { text: st.label }),
        el("span", { class: "visually-hidden", text: " (" + st.state + ")" }));
    })));
    return s;
  }

  function renderDetail(d) {
    destroyCharts();
    var frag = document.createDocumentFragment();
    frag.appendChild(summaryBlock(d));
    var act = actions(d);
    if (act) frag.appendChild(act);
    if (d.rollbackReason) frag.appendChild(el("p", { class: "banner error", role: "alert", text: "Rolled back: " + d.rollbackReason }));
    var pcs = d.status.pauseConditions;
    if (pcs.length) {
      var ps = section("Paused", "pause-h");
      ps.appendChild(el("ul", {}, pcs.map(function (p) {
        return el("li", {}, el("strong", { text: p.reason }), " since " + clock(isoToEpoch(p.startTime)) + (p.message ? ": " + p.message : ""));
      })));
      frag.appendChild(ps);
    }
    frag.appendChild(stepsBlock(d));
    var ch = section("Traffic and analysis", "charts-h");
    ch.appendChild(trafficChart(d.traffic));
    d.charts.forEach(function (c) { ch.appendChild(metricChart(c)); });
    frag.appendChild(ch);
    var sc = section("Analysis runs", "runs-h");
    if (!d.scorecards.length) sc.appendChild(el("p", { class: "empty", text: "No analysis yet." }));
    d.scorecards.forEach(function (card, i) {
      var rows = card.metrics.map(function (m) {
        return el("tr", { class: "verdict-" + m.verdict },
          el("th", { scope: "row", text: m.metric + (m.dryRun ? " (dry run)" : "") }),
          el("td", { class: "num", text: m.canary }), el("td", { class: "num", text: m.stable }),
          el("td", { text: m.threshold || "-" }), el("td", {}, badge(m.verdict)),
          el("td", { class: "num", text: m.samples }), el("td", { text: m.why || "" }),
          el("td", {}, m.query ? el("details", {}, el("summary", { text: "PromQL" }), el("code", { text: m.query })) : "-"),
          el("td", { class: "sub", text: m.counts }));
      });
      var t = table(card.name + " · revision " + card.revision + " · " + card.phase + (card.startedAt ? " · started " + clock(isoToEpoch(card.startedAt)) : ""),
        ["Metric", "Canary", "Stable", "Threshold", "Verdict", "Samples", "Why", "Query", "Measurements"], rows, "scorecard");
      t.dataset.run = card.name; t.dataset.phase = card.phase;
      if (i === 0) t.id = "latest-run";
      sc.appendChild(t);
    });
    frag.appendChild(sc);
    var cs = section("Conditions", "cond-h");
    cs.appendChild(table("Conditions", ["Type", "Status", "Reason", "Since", "Message"], d.status.conditions.map(function (c) {
      return el("tr", {}, el("th", { scope: "row", text: c.type }), el("td", { text: c.status }), el("td", { text: c.reason }),
        el("td", { text: clock(isoToEpoch(c.lastTransitionTime)) }), el("td", { text: c.message }));
    })));
    frag.appendChild(cs);
    var es = section("Events", "events-h");
    if (!d.events.length) es.appendChild(el("p", { class: "empty", text: "No Events (they expire after an hour on most clusters)." }));
    else es.appendChild(table("Events, newest first", ["Time", "Type", "Reason", "Message", "Count"], d.events.slice().reverse().map(function (e) {
      return el("tr", { class: e.type === "Warning" ? "warning" : "" }, el("td", { text: clock(e.time) }), el("td", { text: e.type }),
        el("th", { scope: "row", text: e.reason }), el("td", { text: e.message }), el("td", { class: "num", text: e.count }));
    }), "events"));
    frag.appendChild(es);
    root.replaceChildren(frag);
  }

  function renderDrift(d) {
    destroyCharts();
    var frag = document.createDocumentFragment();
    if (!d.monitoring) frag.appendChild(el("p", { class: "notice", text: "Monitoring is not enabled in this ModelDeployment's spec." }));
    if (d.problem) frag.appendChild(el("p", { class: "notice error", role: "alert", text: d.problem }));
    var ws = section("Worst features now", "worst-h");
    if (!d.worst.length) ws.appendChild(el("p", { class: "empty", text: "No drift measured for the serving revisions." }));
    else ws.appendChild(table("Feature drift of the serving revisions (" + d.method + "), worst first", ["Feature", "Drift", "Level"],
      d.worst.map(function (w) {
        var level = w.value >= d.critical ? "critical" : w.value >= d.warn ? "warn" : "ok";
        return el("tr", {}, el("th", { scope: "row", text: w.feature }), el("td", { class: "num", text: num(w.value) }), el("td", {}, badge(level, "drift-" + level)));
      }), "worst"));
    frag.appendChild(ws);
    var cs = section("Over time", "drift-charts-h");
    d.features.forEach(function (f) { cs.appendChild(driftChart(f, d)); });
    if (!d.features.length) cs.appendChild(el("p", { class: "empty", text: "No drift series in the window." }));
    frag.appendChild(cs);
    var as = section("Alerts firing", "alerts-h");
    if (!d.alerts.length) as.appendChild(el("p", { class: "empty", text: "None." }));
    else as.appendChild(table("Firing alerts", ["Alert", "Severity", "Feature"], d.alerts.map(function (a) {
      return el("tr", {}, el("th", { scope: "row", text: a.alertname }), el("td", {}, badge(a.severity)), el("td", { text: a.feature || "-" }));
    })));
    frag.appendChild(as);
    var rs = section("Retraining runs", "retrain-h");
    if (!d.retraining.length) rs.appendChild(el("p", { class: "empty", text: "None recorded." }));
    else rs.appendChild(table("Retraining runs started by drift alerts", ["When", "Alert (why)", "Run", "Outcome"], d.retraining.slice().reverse().map(function (r) {
      return el("tr", {}, el("td", { text: clock(isoToEpoch(r.at)) }), el("th", { scope: "row", text: r.alert }), el("td", { text: r.run || "-" }), el("td", { text: r.outcome || "-" }));
    })));
    frag.appendChild(rs);
    root.replaceChildren(frag);
  }

  function renderLineage(d) {
    var frag = document.createDocumentFragment();
    frag.appendChild(el("p", {}, "Serving: ", badge(d.summary.phase), " " + (d.summary.canary ? d.summary.canary + " (canary), " : "") + (d.summary.stable || "-") + " (stable)"));
    frag.appendChild(el("ol", { class: "lineage" }, d.lineage.map(function (n) {
      var value = n.value ? (n.href ? el("a", { href: n.href, rel: "noopener noreferrer", target: "_blank", text: n.value }) : el("code", { text: n.value }))
        : el("span", { class: "empty", text: "not recorded" });
      return el("li", {}, el("span", { class: "stage", text: n.stage }), value);
    })));
    root.replaceChildren(frag);
  }

  function renderLogin() {
    var form = el("form", { id: "login" },
      el("label", { for: "token", text: "Kubernetes token (kubectl create token NAME, or your OIDC id-token)" }),
      el("textarea", { id: "token", rows: 4, required: true, autocomplete: "off", spellcheck: "false" }),
      el("label", { for: "namespace", text: "Namespace (when you may not list across namespaces)" }),
      el("input", { id: "namespace", type: "text", value: "default", autocomplete: "off", spellcheck: "false" }),
      el("button", { type: "submit", text: "Sign in" }), el("p", { id: "login-result", role: "alert" }));
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      fetch(ROOT + "login", { method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
        body: JSON.stringify({ token: document.getElementById("token").value, namespace: document.getElementById("namespace").value }) })
        .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
        .then(function (x) { if (x[0] === 200) location.href = ROOT; else document.getElementById("login-result").textContent = x[1].error; });
    });
    root.replaceChildren(form);
    liveStatus.textContent = "";
    root.removeAttribute("aria-busy");
  }

  var RENDER = { list: renderList, detail: renderDetail, drift: renderDrift, lineage: renderLineage };

  function render(d) {
    doc = d;
    RENDER[VIEW](d);
    root.removeAttribute("aria-busy");
  }

  function fail(text) {
    root.replaceChildren(el("p", { class: "notice error", role: "alert", text: text }));
    root.removeAttribute("aria-busy");
  }

  var pending = null;
  function load() {
    return fetch(API, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { location.href = ROOT + "login"; return null; }
        return r.json().then(function (j) { if (!r.ok) throw new Error(j.error || r.statusText); return j; });
      })
      .then(function (j) { if (j) { render(j); liveStatus.textContent = "live · " + clock(Date.now() / 1000); } })
      .catch(function (e) { fail(String(e.message || e)); });
  }
  function reloadSoon() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; load(); }, 150);
  }
  function currentKey() {
    var m = location.pathname.match(/\/md\/([^/]+)\/([^/]+)/);
    return m ? decodeURIComponent(m[1]) + "/" + decodeURIComponent(m[2]) : null;
  }
  function connect() {
    var es = new EventSource(ROOT + "api/stream");
    var key = currentKey();
    var connected = false;
    // On a reconnect, changes may have been missed: fetch the view again (the first hello follows the load).
    es.addEventListener("hello", function () { liveStatus.textContent = "live"; if (connected) reloadSoon(); connected = true; });
    es.addEventListener("md", function (e) {
      var msg = JSON.parse(e.data);
      if (VIEW === "list") { updateRow(msg); liveStatus.textContent = "live · " + clock(Date.now() / 1000); }
      else if (msg.key === key) reloadSoon();
    });
    es.addEventListener("event", function (e) {
      var msg = JSON.parse(e.data);
      if (VIEW === "detail" && msg.key === key) reloadSoon();
    });
    es.onerror = function () { liveStatus.textContent = "reconnecting…"; };
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { if (doc && VIEW !== "list" && VIEW !== "lineage") render(doc); }, 200);
  });

  if (VIEW === "login") { renderLogin(); return; }
  var embedded = document.getElementById("view-data");
  if (embedded) { render(JSON.parse(embedded.textContent)); return; }
  load().then(connect);
  if (VIEW === "list") setInterval(function () {
    document.querySelectorAll("td.age[data-created]").forEach(function (td) {
      var s = Math.max(0, Math.floor(Date.now() / 1000 - Number(td.dataset.created)));
      td.textContent = s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" + (s % 60) + "s" : s < 86400 ? Math.floor(s / 3600) + "h" + Math.floor(s % 3600 / 60) + "m" : Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
    });
  }, 5000);
})();
