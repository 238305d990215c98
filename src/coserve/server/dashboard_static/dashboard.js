// coserve's dashboard: follows /dashboard/events (one JSON frame a second) and draws it.
// Plain JavaScript on the vendored uPlot; no build step. Without JavaScript the page's
// server-rendered tables stand alone.
"use strict";

(function () {
  const KEEP = 300; // points per chart: five minutes at one frame a second
  const OPEN_FIRST = 4; // model cards open at first; the rest start collapsed
  const SVG = "http://www.w3.org/2000/svg";
  const models = new Map(); // key -> {card, charts, series, open}
  let frames = 0;
  let source = null;
  let chosenSession = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value) && digits !== undefined) return String(value);
    return value.toFixed(digits === undefined ? 1 : digits);
  }

  // -- charts -----------------------------------------------------------------------------

  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d"];

  function lineChart(parent, title, labels, unit) {
    const box = el("div", { class: "chart" });
    parent.append(box);
    const series = [{}].concat(
      labels.map((label, i) => ({ label, stroke: COLOURS[i % COLOURS.length], width: 2 }))
    );
    const data = [[]].concat(labels.map(() => []));
    const plot = new uPlot(
      {
        title,
        width: 360,
        height: 180,
        series,
        scales: { x: { time: true } },
        axes: [{}, { label: unit, size: 50 }],
        legend: { live: false },
      },
      data,
      box
    );
    return { kind: "line", plot, data, labels };
  }

  function barChart(parent, title) {
    const box = el("div", { class: "chart" });
    parent.append(box);
    const bars = uPlot.paths.bars({ size: [0.8, 40] });
    const plot = new uPlot(
      {
        title,
        width: 360,
        height: 180,
        series: [
          { label: "rows" },
          { label: "batches", stroke: COLOURS[0], fill: "rgba(37,99,235,0.35)", paths: bars, points: { show: false } },
        ],
        scales: {
          x: { time: false, range: (u, min, max) => (min === null ? [0, 2] : [Math.max(0, min - 1), max + 1]) },
          y: { range: (u, min, max) => [0, max === null ? 1 : Math.max(1, max * 1.1)] },
        },
        axes: [{ label: "rows per batch" }, { label: "batches", size: 50 }],
        legend: { live: false },
      },
      [[], []],
      box
    );
    return { kind: "bar", plot, data: [[], []] };
  }

  function push(chart, t, values) {
    chart.data[0].push(t);
    values.forEach((v, i) => chart.data[i + 1].push(v === undefined ? null : v));
    if (chart.data[0].length > KEEP) chart.data.forEach((column) => column.shift());
  }

  // -- one card per model version ---------------------------------------------------------

  const CLOSE_REASONS = ["full", "max_wait", "slot_free", "target", "shutdown"];

  function modelCard(model) {
    const summary = el("summary", {}, [
      el("span", { class: "name", text: model.key }),
      el("span", { class: "headline" }),
    ]);
    const card = el("details", { class: "model", "data-key": model.key }, [summary]);
    if (models.size < OPEN_FIRST) card.open = true;
    const body = el("div", { class: "model-body" });
    const charts = el("div", { class: "charts" });
    const side = el("div", { class: "side" });
    body.append(charts, side);
    card.append(body);
    $("models").append(card);
    const entry = {
      card,
      headline: summary.querySelector(".headline"),
      side,
      charts: null,
      chartBox: charts,
      history: [], // frames' entries kept for charts made later
    };
    card.addEventListener("toggle", () => {
      if (card.open) ensureCharts(entry);
    });
    models.set(model.key, entry);
    if (card.open) ensureCharts(entry);
    return entry;
  }

  function ensureCharts(entry) {
    if (entry.charts !== null) return;
    const box = entry.chartBox;
    entry.charts = {
      throughput: lineChart(box, "Requests and batches per second", ["requests/s", "completed/s", "batches/s"], "/s"),
      latency: lineChart(box, "Latency (last 10 s)", ["p50", "p99"], "ms"),
      time: lineChart(box, "Queue time vs execution time", ["queue (mean)", "execution (mean)"], "ms"),
      depth: lineChart(box, "Queue depth and running batches", ["queued", "running"], ""),
      histogram: barChart(box, "Batch sizes (last minute)"),
      closes: lineChart(box, "Batch close reasons per second", CLOSE_REASONS, "/s"),
      rejections: lineChart(box, "Rejections per second", ["queue full", "closed", "errors"], "/s"),
    };
    for (const [t, model] of entry.history) addPoints(entry, t, model);
    redraw(entry);
  }

  function addPoints(entry, t, m) {
    const c = entry.charts;
    push(c.throughput, t, [m.rates.requests, m.rates.completed, m.rates.batches]);
    push(c.latency, t, [m.p50_ms, m.p99_ms]);
    push(c.time, t, [m.queue_ms, m.exec_ms]);
    push(c.depth, t, [m.queued, m.running]);
    push(c.closes, t, CLOSE_REASONS.map((r) => m.close_reasons[r] || 0));
    push(c.rejections, t, [m.rejections.queue_full, m.rejections.closed, m.rates.errors]);
    const sizes = Object.keys(m.histogram).map(Number).sort((a, b) => a - b);
    c.histogram.data = [sizes, sizes.map((s) => m.histogram[String(s)])];
  }

  function redraw(entry) {
    for (const chart of Object.values(entry.charts)) chart.plot.setData(chart.data);
  }

  function keyValues(title, pairs) {
    const rows = pairs.map(([k, v]) => el("tr", {}, [el("th", { text: k }), el("td", { text: fmt(v, 3) })]));
    return el("div", { class: "kv" }, [el("h4", { text: title }), el("table", {}, [el("tbody", {}, rows)])]);
  }

  function renderSide(entry, m) {
    const parts = [];
    parts.push(keyValues("Batching policy", Object.entries(m.policy)));
    if (m.adaptive) {
      const a = m.adaptive;
      parts.push(
        keyValues("Adaptive: " + a.target, [
          ["batch target (rows)", a.batch_target],
          ["batch cap (rows)", a.batch_cap],
          ["linger (ms)", a.linger * 1e3],
          ["arrivals (rows/s)", a.arrival_rate],
          ["fit: ms per batch", a.intercept * 1e3],
          ["fit: ms per row", a.slope * 1e3],
          ["margin", a.margin],
          ["measured (ms)", a.measured === null ? null : a.measured * 1e3],
          ["failed early", a.failed_early],
        ])
      );
    }
    parts.push(
      keyValues(
        "Totals",
        [
          ["completed", m.totals.completed],
          ["failed", m.totals.failed],
          ["expired", m.totals.expired],
          ["cancelled", m.totals.cancelled],
          ["rejected: queue full", m.totals.rejected_queue_full],
          ["rejected: closed", m.totals.rejected_closed],
        ].concat(Object.entries(m.close_totals).map(([r, n]) => ["closed: " + r, n]))
          .concat(Object.entries(m.status_totals).map(([s, n]) => ["status " + s, n]))
      )
    );
    if (m.workers.length) {
      const head = el("tr", {}, ["worker", "req/s", "batches/s", "queued", "running", "exec p99 ms"].map((h) => el("th", { text: h })));
      const rows = m.workers.map((w) =>
        el("tr", {}, [w.worker, fmt(w.requests), fmt(w.batches), w.queued, w.running, fmt(w.exec_p99_ms, 2)].map((v) => el("td", { text: String(v) })))
      );
      parts.push(el("div", { class: "kv" }, [el("h4", { text: "Per worker" }), el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)])]));
    }
    entry.side.replaceChildren(...parts);
  }

  function updateModel(t, m) {
    const entry = models.get(m.key) || modelCard(m);
    entry.history.push([t, m]);
    if (entry.history.length > KEEP) entry.history.shift();
    entry.headline.textContent =
      `${fmt(m.rates.requests)} req/s · p99 ${fmt(m.p99_ms, 2)} ms · ` +
      `mean batch ${fmt(m.mean_batch)} · queued ${m.queued}`;
    if (entry.charts !== null) {
      addPoints(entry, t, m);
      if (entry.card.open) redraw(entry);
    }
    if (entry.card.open) renderSide(entry, m);
    const row = document.querySelector(`#models-table tr[data-key="${CSS.escape(m.key)}"]`);
    if (row) {
      const cells = {
        completed: m.totals.completed,
        errors: m.totals.failed + m.totals.expired + m.totals.aborted,
        rejected: m.totals.rejected,
        queued: m.queued,
        batches: m.totals.batches,
        mean_batch: fmt(m.mean_batch),
        queue_p99_ms: fmt(m.queue_p99_ms, 2),
        exec_p99_ms: fmt(m.exec_p99_ms, 2),
      };
      for (const [field, value] of Object.entries(cells)) {
        const cell = row.querySelector(`td[data-field="${field}"]`);
        if (cell) cell.textContent = String(value);
      }
    }
  }

  // -- sessions ----------------------------------------------------------------------------

  function updateSessions(sessions) {
    const body = document.querySelector("#apps-table tbody");
    const rows = Object.entries(sessions.apps).map(([app, c]) =>
      el("tr", { "data-app": app }, [app, c.active, c.created, c.expired, c.errors, c.messages].map((v, i) =>
        el("td", i ? { "data-field": ["", "active", "created", "expired", "errors", "messages"][i], text: String(v) } : { text: String(v) })))
    );
    if (rows.length) body.replaceChildren(...rows);
    const list = $("live-sessions");
    const items = sessions.live.map((s) => {
      const button = el("button", { type: "button", "data-session": s.id, text: "graph" });
      if (s.id === chosenSession) button.classList.add("chosen");
      button.addEventListener("click", () => chooseSession(s.id === chosenSession ? null : s.id));
      const where = s.worker === null ? "" : ` · worker ${s.worker}`;
      const since = new Date(s.started * 1000).toLocaleTimeString();
      return el("li", {}, [button, ` ${s.app} ${s.id.slice(0, 12)} (since ${since}${where})`]);
    });
    list.replaceChildren(...(items.length ? items : [el("li", { text: "None." })]));
  }

  function chooseSession(id) {
    chosenSession = id;
    if (id === null) $("session-graph").replaceChildren();
    connect();
  }

  // A layered drawing: each node one column right of the furthest node feeding it (links
  // that close a cycle are drawn back), rows in the order the graph lists its nodes.
  function drawGraph(view) {
    const box = $("session-graph");
    if (!view) {
      box.replaceChildren(el("p", { text: "That session has ended." }));
      return;
    }
    const names = view.nodes.map((n) => n.name);
    const outgoing = new Map(names.map((n) => [n, []]));
    for (const link of view.links) outgoing.get(link.from).push(link);
    // A link to a node still being visited closes a cycle: it is drawn back, not ranked.
    const visiting = new Map();
    const back = new Set();
    const visit = (name) => {
      visiting.set(name, 1);
      for (const link of outgoing.get(name)) {
        const seen = visiting.get(link.to);
        if (seen === 1) back.add(link);
        else if (!seen) visit(link.to);
      }
      visiting.set(name, 2);
    };
    for (const name of names) if (!visiting.get(name)) visit(name);
    const level = new Map(names.map((n) => [n, 0]));
    for (let pass = 0; pass < names.length; pass++) {
      for (const link of view.links) {
        if (!back.has(link)) level.set(link.to, Math.max(level.get(link.to), level.get(link.from) + 1));
      }
    }
    const columns = new Map();
    const place = new Map();
    for (const name of names) {
      const col = level.get(name);
      const row = columns.get(col) || 0;
      columns.set(col, row + 1);
      place.set(name, { x: 20 + col * 230, y: 20 + row * 120 });
    }
    const width = 20 + (Math.max(...level.values()) + 1) * 230;
    const height = 20 + Math.max(...columns.values()) * 120;
    const drawing = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `graph of session ${view.id}` });
    drawing.append(svg("defs", {}));
    drawing.firstChild.append(
      (() => {
        const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto" });
        marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
        return marker;
      })()
    );
    const nodes = new Map(view.nodes.map((n) => [n.name, n]));
    for (const link of view.links) {
      const a = place.get(link.from);
      const b = place.get(link.to);
      const port = nodes.get(link.to).inputs[link.input] || { messages: 0, buffered: 0, capacity: 0 };
      const x1 = a.x + 170, y1 = a.y + 35, x2 = b.x, y2 = b.y + 35;
      const back = x2 <= x1;
      const d = back
        ? `M${x1},${y1} C${x1 + 60},${y1 - 90} ${x2 - 60},${y2 - 90} ${x2},${y2}`
        : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
      drawing.append(svg("path", { d, class: port.buffered ? "link busy" : "link", "marker-end": "url(#arrow)" }));
      const label = `${link.output}→${link.input} ${port.messages} · ${port.buffered}/${port.capacity}`;
      drawing.append(svg("text", { x: (x1 + x2) / 2, y: (back ? Math.min(y1, y2) - 50 : (y1 + y2) / 2 - 6), class: "link-label", "text-anchor": "middle" }, label));
    }
    for (const node of view.nodes) {
      const p = place.get(node.name);
      const group = svg("g", { class: `node ${node.state}`, transform: `translate(${p.x},${p.y})` });
      group.append(svg("rect", { width: 170, height: 70, rx: 6 }));
      group.append(svg("text", { x: 8, y: 18, class: "node-name" }, node.name));
      group.append(svg("text", { x: 8, y: 34 }, `${node.kind} · ${node.state}`));
      group.append(svg("text", { x: 8, y: 50 }, `in ${node.messages_in} · out ${node.messages_out} · held ${node.in_hand}`));
      group.append(svg("text", { x: 8, y: 64 }, `errors ${node.errors} · restarts ${node.restarts}`));
      drawing.append(group);
    }
    const mermaid = el("details", {}, [el("summary", { text: "Mermaid" }), el("pre", { text: view.mermaid })]);
    box.replaceChildren(
      el("h4", { text: `Session ${view.id} (${view.app}, ${view.state}, dead letters ${view.dead_letters})` }),
      drawing,
      mermaid
    );
  }

  // -- the stream ----------------------------------------------------------------------------

  function onFrame(event) {
    const frame = JSON.parse(event.data);
    frames += 1;
    const t = frame.time;
    for (const m of frame.models) updateModel(t, m);
    updateSessions(frame.sessions);
    if (frame.session && frame.session.id === chosenSession) drawGraph(frame.session.graph);
    const workers = frame.workers.length > 1 ? ` · ${frame.workers.length} workers` : "";
    $("status").textContent = `Live${workers} · frame ${frame.seq} at ${new Date(t * 1000).toLocaleTimeString()}`;
    document.body.dataset.frames = String(frames);
    applyFilter();
  }

  function connect() {
    if (source !== null) source.close();
    const url = "dashboard/events" + (chosenSession ? "?session=" + encodeURIComponent(chosenSession) : "");
    source = new EventSource(url);
    source.addEventListener("stats", onFrame);
    source.addEventListener("error", () => {
      $("status").textContent = "Reconnecting…";
    });
  }

  function applyFilter() {
    const text = $("filter").value.trim().toLowerCase();
    for (const [key, entry] of models) entry.card.hidden = text !== "" && !key.toLowerCase().includes(text);
    for (const row of document.querySelectorAll("#models-table tbody tr[data-key]")) {
      row.hidden = text !== "" && !row.dataset.key.toLowerCase().includes(text);
    }
  }

  // For tests and the curious: how many points each model's charts hold.
  window.coserveDashboard = {
    frames: () => frames,
    points: (key) => {
      const entry = models.get(key);
      return entry && entry.charts ? entry.charts.throughput.data[0].length : 0;
    },
    histogram: (key) => {
      const entry = models.get(key);
      return entry && entry.charts ? entry.charts.histogram.data[1].reduce((a, b) => a + b, 0) : 0;
    },
    completed: (key) => {
      const entry = models.get(key);
      return entry && entry.history.length ? entry.history[entry.history.length - 1][1].totals.completed : 0;
    },
    chooseSession,
  };

  document.documentElement.classList.add("js");
  const filter = $("filter");
  filter.hidden = false;
  filter.addEventListener("input", applyFilter);
  connect();
})();
