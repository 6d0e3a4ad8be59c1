// dispatchcount's HTML report: the module icicle, its details panel and the sortable tables.
// Reads the JSON in #dc-data (written by dispatchcount/report_html.py). Strings from the data
// only ever reach the page through textContent and setAttribute, never as markup.
"use strict";
(() => {
  const payload = JSON.parse(document.getElementById("dc-data").textContent);
  const data = payload.data;
  const ROW = 26;        // px per icicle level, as --row in the CSS
  const MIN_WIDTH = 4e-4; // narrower nodes (and their children) are not drawn

  // -- the module tree, from dotted names ------------------------------------------------------
  const nodes = new Map();
  for (const name of payload.order) {
    nodes.set(name, { name, entry: payload.modules[name] || {}, children: [], parent: null, depth: 0 });
  }
  for (const node of nodes.values()) {
    if (node.name === "") continue;
    let up = node.name;
    do { const dot = up.lastIndexOf("."); up = dot < 0 ? "" : up.slice(0, dot); } while (!nodes.has(up));
    node.parent = nodes.get(up);
    node.parent.children.push(node);
  }
  const root = nodes.get("");
  let maxDepth = 0;
  const setDepth = (node, depth) => {
    node.depth = depth;
    maxDepth = Math.max(maxDepth, depth);
    node.children.forEach((child) => setDepth(child, depth + 1));
  };
  setDepth(root, 0);
  const labelOf = (node) => {
    if (node === root) return "model";
    return node.parent === root ? node.name : node.name.slice(node.parent.name.length + 1);
  };
  // One hue per kind of module: its class when known, else its name ("ss2d"; list items take
  // their container's kind plus "[]"), hues handed out in tree order, 137.5 degrees apart.
  const hues = new Map();
  const paint = (node) => {
    const label = labelOf(node);
    node.kind = node.entry.class ? `class ${node.entry.class}`
      : /^\d+$/.test(label) && node.parent ? `${node.parent.kind}[]` : label;
    if (!hues.has(node.kind)) hues.set(node.kind, (205 + 137.5 * hues.size) % 360);
    node.hue = hues.get(node.kind);
    node.children.forEach(paint);
  };
  paint(root);

  // -- metrics ---------------------------------------------------------------------------------
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : 0);
  const valueOf = (entry, metric, phase) => {
    if (metric === "flops") {
      return phase === "total" ? num(entry.forward) + num(entry.backward) : num(entry[phase]);
    }
    const v = entry[metric];
    if (v && typeof v === "object") {
      if (phase !== "total") return num(v[phase]);
      return "total" in v ? num(v.total) : num(v.forward) + num(v.backward);
    }
    return phase === "total" ? num(v) : 0;
  };
  const hasPhases = (metric) => metric === "flops" ||
    [...nodes.values()].some((n) => n.entry[metric] && typeof n.entry[metric] === "object");

  const sig3 = (x) => String(Number(x.toPrecision(3)));
  const human = (x, units = ["", "K", "M", "G", "T", "P"]) => {
    let i = 0;
    while (Math.abs(x) >= 1000 && i < units.length - 1) { x /= 1000; i += 1; }
    return i === 0 ? String(Math.round(x)) : sig3(x) + units[i];
  };
  const seconds = (s) => {
    if (s === 0) return "0 s";
    for (const [scale, unit] of [[1, "s"], [1e-3, "ms"], [1e-6, "\u00b5s"]]) {
      if (Math.abs(s) >= scale) return sig3(s / scale) + " " + unit;
    }
    return sig3(s / 1e-9) + " ns";
  };
  const METRIC = {
    flops: { label: payload.unit, format: human },
    bytes: { label: "bytes", format: (x) => human(x) + "B" },
    estimated_seconds: { label: "estimated time", format: seconds },
    seconds: { label: "measured time", format: seconds },
  };
  const exact = (x) => x.toLocaleString("en-US");

  // -- state and the controls ------------------------------------------------------------------
  const state = { metric: "flops", phase: "total", colour: "kind", zoom: root, selected: root };
  const form = document.querySelector(".dc-controls");
  const phaseInputs = [...form.querySelectorAll("input[name=dc-phase]")];
  form.addEventListener("change", (event) => {
    const input = event.target;
    if (input.name === "dc-metric") {
      state.metric = input.value;
      const phased = hasPhases(state.metric);
      for (const p of phaseInputs) {
        p.disabled = !phased && p.value !== "total";
        p.parentElement.classList.toggle("dc-off", p.disabled);
        if (!phased && p.value === "total") { p.checked = true; state.phase = "total"; }
      }
    } else if (input.name === "dc-phase") {
      state.phase = input.value;
    } else if (input.name === "dc-colour") {
      state.colour = input.value;
    }
    update();
  });

  const icicle = document.getElementById("dc-icicle");
  const path = document.getElementById("dc-path");
  const details = document.getElementById("dc-details");
  const drawn = new Map(); // node name -> its element

  const colourOf = (node) => {
    if (node === root) return "hsl(220, 12%, 80%)";
    const light = Math.min(88, 64 + 5 * (node.depth - 1));
    if (state.colour === "bound") {
      const bound = node.entry.bound;
      if (bound === "memory") return `hsl(30, 85%, ${light}%)`;
      if (bound === "compute") return `hsl(210, 50%, ${light}%)`;
      return `hsl(0, 0%, ${light}%)`;
    }
    return `hsl(${node.hue}, 50%, ${light}%)`;
  };

  const zoomTo = (node) => {
    const zoomOut = node === state.zoom && node.parent;
    state.zoom = state.selected = zoomOut ? node.parent : node;
    update();
  };

  const makeElement = (node) => {
    const el = document.createElement("div");
    el.className = "dc-node";
    el.tabIndex = 0;
    el.setAttribute("role", "treeitem");
    el.dataset.name = node.name;
    const label = document.createElement("span");
    label.className = "dc-label";
    label.textContent = labelOf(node);
    const value = document.createElement("span");
    value.className = "dc-v";
    el.append(label, value);
    if (node.entry.class) {
      const cls = document.createElement("span");
      cls.className = "dc-c";
      cls.textContent = String(node.entry.class);
      el.append(cls);
    }
    el.addEventListener("click", () => zoomTo(node));
    el.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); zoomTo(node); }
    });
    return el;
  };

  const layout = () => {
    const value = (node) => Math.max(0, valueOf(node.entry, state.metric, state.phase));
    const spans = new Map();
    for (let up = state.zoom; up; up = up.parent) spans.set(up, [0, 1]);
    const place = (node, x0, x1) => {
      spans.set(node, [x0, x1]);
      const sizes = node.children.map(value);
      // Children can add up to more than their parent when a module is also charged by name.
      const scale = Math.max(value(node), sizes.reduce((a, b) => a + b, 0));
      if (!scale) return;
      let x = x0;
      node.children.forEach((child, i) => {
        const width = ((x1 - x0) * sizes[i]) / scale;
        if (width >= MIN_WIDTH) place(child, x, x + width);
        x += width;
      });
    };
    place(state.zoom, 0, 1);
    return { spans, value };
  };

  const drawIcicle = () => {
    const { spans, value } = layout();
    const metric = METRIC[state.metric];
    const whole = value(root);
    for (const [node, [x0, x1]] of spans) {
      let el = drawn.get(node.name);
      if (!el) { el = makeElement(node); drawn.set(node.name, el); icicle.appendChild(el); }
      const v = value(node);
      el.style.left = `${100 * x0}%`;
      el.style.width = `${100 * (x1 - x0)}%`;
      el.style.top = `${node.depth * ROW}px`;
      el.style.background = colourOf(node);
      el.querySelector(".dc-v").textContent = metric.format(v);
      const share = whole ? ` (${(100 * v / whole).toFixed(1)}%)` : "";
      const cls = node.entry.class ? ` [${node.entry.class}]` : "";
      el.title = `${node.name || "model"}${cls}\n${metric.format(v)} ${state.metric === "flops" ? metric.label : ""}${share}`;
      el.classList.toggle("dc-selected", node === state.selected);
      el.setAttribute("aria-selected", String(node === state.selected));
    }
    for (const [name, el] of drawn) {
      if (!spans.has(nodes.get(name))) { el.remove(); drawn.delete(name); }
    }
    icicle.style.height = `${(maxDepth + 1) * ROW + 2}px`;
  };

  const drawPath = () => {
    const chain = [];
    for (let up = state.zoom; up; up = up.parent) chain.unshift(up);
    path.replaceChildren(...chain.flatMap((node, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = labelOf(node);
      button.title = node.name || "model";
      button.addEventListener("click", () => { state.zoom = state.selected = node; update(); });
      if (i === 0) return [button];
      const sep = document.createElement("span");
      sep.className = "dc-sep";
      sep.textContent = "\u203a";
      return [sep, button];
    }));
  };

  const cell = (tag, text, title) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (title) el.title = title;
    return el;
  };

  const drawDetails = () => {
    const node = state.selected;
    const entry = node.entry;
    const heading = cell("h3", node.name || "model");
    if (entry.class) heading.append(cell("small", String(entry.class)));
    const rows = [];
    const row = (label, text, title) => rows.push([label, text, title]);
    if ("params" in entry) row("parameters", human(num(entry.params), ["", "K", "M", "B", "T"]), exact(num(entry.params)));
    if ("calls" in entry) row("forward calls", String(entry.calls));
    const fwd = num(entry.forward), bwd = num(entry.backward);
    row(`forward ${payload.unit}`, human(fwd), exact(fwd));
    row(`backward ${payload.unit}`, human(bwd), exact(bwd));
    row(`total ${payload.unit}`, human(fwd + bwd), exact(fwd + bwd));
    const whole = valueOf(root.entry, state.metric, state.phase);
    const mine = valueOf(entry, state.metric, state.phase);
    row(`share of the model (${METRIC[state.metric].label}, ${state.phase})`,
        whole ? `${(100 * mine / whole).toFixed(2)}%` : "-");
    for (const metric of payload.metrics) {
      if (metric !== "flops" && metric in entry) {
        row(METRIC[metric].label, METRIC[metric].format(valueOf(entry, metric, "total")));
      }
    }
    if (entry.bound) row("bound", String(entry.bound));
    const facts = document.createElement("table");
    facts.className = "dc-kv";
    const factsBody = facts.createTBody();
    for (const [label, text, title] of rows) {
      const tr = factsBody.insertRow();
      tr.append(cell("th", label), cell("td", text, title));
    }

    const perOp = (data.by_module_and_operator || {})[node.name] || {};
    const ops = Object.entries(perOp).filter(([, v]) => num(v) > 0).sort((a, b) => b[1] - a[1]);
    const opsBox = document.createElement("div");
    opsBox.append(cell("div", `operators run inside (${payload.unit}, forward and backward)`));
    opsBox.firstChild.className = "dc-legend";
    const table = document.createElement("table");
    table.className = "dc-table";
    const body = table.createTBody();
    const top = ops.length ? ops[0][1] : 0;
    for (const [op, v] of ops.slice(0, 10)) {
      const tr = body.insertRow();
      const bar = document.createElement("span");
      bar.className = "dc-bar";
      bar.style.width = `${Math.max(1, (80 * v) / top)}px`;
      const name = cell("td", "");
      name.append(bar, document.createTextNode(op));
      tr.append(name, cell("td", human(v), exact(v)));
      tr.lastChild.className = "dc-num";
    }
    if (ops.length > 10) body.insertRow().append(cell("td", `and ${ops.length - 10} more`));
    if (!ops.length) body.insertRow().append(cell("td", "none"));
    opsBox.append(table);
    details.replaceChildren(heading, facts, opsBox);
  };

  const drawLegend = () => {
    let legend = document.getElementById("dc-legend");
    if (state.colour !== "bound") { if (legend) legend.remove(); return; }
    if (!legend) {
      legend = document.createElement("p");
      legend.id = "dc-legend";
      legend.className = "dc-legend";
      for (const [text, colour] of [["compute-bound", "hsl(210, 50%, 60%)"], ["memory-bound", "hsl(30, 85%, 60%)"]]) {
        const swatch = document.createElement("i");
        swatch.style.background = colour;
        legend.append(swatch, document.createTextNode(text));
      }
      icicle.after(legend);
    }
  };

  const update = () => { drawPath(); drawIcicle(); drawLegend(); drawDetails(); };
  update();

  // -- sortable tables and the zero-cost operators toggle -------------------------------------
  for (const table of document.querySelectorAll("table.dc-sortable")) {
    const heads = [...table.tHead.rows[0].cells];
    heads.forEach((th, column) => th.addEventListener("click", () => {
      const numeric = th.dataset.type === "num";
      const current = th.getAttribute("aria-sort");
      const descending = current ? current === "ascending" : numeric;
      heads.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      const key = (tr) => (numeric ? parseFloat(tr.cells[column].dataset.v || "0") : tr.cells[column].textContent);
      const rows = [...table.tBodies[0].rows];
      rows.sort((a, b) => {
        const [ka, kb] = [key(a), key(b)];  // names by code point: the same order in every locale
        const order = numeric ? ka - kb : ka < kb ? -1 : ka > kb ? 1 : 0;
        return descending ? -order : order;
      });
      table.tBodies[0].append(...rows);
    }));
  }
  const showZero = document.getElementById("dc-show-zero");
  if (showZero) {
    showZero.addEventListener("change", () => {
      document.getElementById("dc-ops").classList.toggle("dc-hide-zero", !showZero.checked);
    });
  }
})();
