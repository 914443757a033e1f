// circuitray's attribution-graph viewer: vanilla JS on the vendored d3, every file
// served by `circuitray serve` itself (no request leaves the machine).
//
// Reads /data/graph-metadata.json, the chosen graph /data/<slug>.json (circuit-tracer's
// frontend Model) and, when the metadata entry lists one, its feature sidecar
// /data/<slug>.features.json (format circuitray-features/1). Every string of the data
// reaches the page through textContent, never as markup.
"use strict";

(function () {
  const DEFAULT_LINKS = 300;
  const SPACING = 16; // px between nodes of one cell
  const MAX_PER_ROW = 24; // nodes side by side in a cell before it wraps
  const MIN_COL = 76; // px, a token column at least
  const MIN_ROW = 58; // px, a layer row at least
  const MARGIN = { top: 24, right: 24, bottom: 64, left: 64 };
  const MAX_EXAMPLES = 5;
  const MAX_SPARE_COL = 200; // px a column may grow by to fill the window
  const MAX_SPARE_ROW = 80; // px a row may grow by

  const state = {
    graph: null,
    nodes: [],
    byId: new Map(),
    allLinks: [], // sorted by |weight|, strongest first
    shown: [], // the drawn links
    neighbours: new Map(),
    features: {},
    pinned: new Set(),
    hovered: null,
    matches: null, // Set of node ids, or null when the search box is empty
  };

  const $ = (id) => document.getElementById(id);

  function showError(message, error) {
    const box = $("error");
    box.hidden = false;
    box.textContent = "viewer error: " + message;
    console.error("circuitray viewer:", message, error || "");
  }

  window.addEventListener("error", (e) => showError(e.message, e.error));
  window.addEventListener("unhandledrejection", (e) =>
    showError(String(e.reason && e.reason.message ? e.reason.message : e.reason), e.reason)
  );

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-cache" });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }

  // ---- nodes --------------------------------------------------------------------

  function kind(node) {
    switch (node.feature_type) {
      case "cross layer transcoder":
        return "feature";
      case "mlp reconstruction error":
        return "error";
      case "embedding":
        return "embedding";
      case "logit":
        return "logit";
      default:
        return node.layer === "E" ? "embedding" : "feature";
    }
  }

  // A feature node's "<layer>/<feature index>": node_id is "{layer}_{feat}_{pos}"
  // (node.feature is a Cantor pairing, not the index).
  function featureKey(node) {
    const parts = String(node.node_id).split("_");
    return parts.length === 3 ? `${parts[0]}/${parts[1]}` : null;
  }

  function tokenAt(pos) {
    const tokens = (state.graph && state.graph.metadata.prompt_tokens) || [];
    return pos >= 0 && pos < tokens.length ? String(tokens[pos]) : "";
  }

  function label(node) {
    if (node.clerp) return String(node.clerp);
    if (node.kind === "feature") {
      const f = state.features[node.key];
      if (f && f.label) return String(f.label);
      return "";
    }
    if (node.kind === "embedding") return `token "${tokenAt(node.ctx_idx)}"`;
    if (node.kind === "error") return `reconstruction error, layer ${node.layer}`;
    return "";
  }

  function shortName(node) {
    if (node.kind === "feature") return `L${node.layer}/${node.key.split("/")[1]}`;
    if (node.kind === "error") return `err L${node.layer}`;
    if (node.kind === "embedding") return `tok ${node.ctx_idx}`;
    return "logit";
  }

  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : x.toFixed(3);
  }

  // ---- layout -------------------------------------------------------------------

  // Rows from the top: logits, layers high to low, tokens. Columns: token positions,
  // each as wide as its fullest cell needs (wrapping past MAX_PER_ROW).
  function layout(nodes, nTokens, availW, availH) {
    let maxLayer = 0;
    let maxPos = nTokens - 1;
    for (const n of nodes) {
      if (n.kind === "feature" || n.kind === "error") maxLayer = Math.max(maxLayer, +n.layer);
      maxPos = Math.max(maxPos, n.ctx_idx);
    }
    const rowOf = (n) =>
      n.kind === "logit" ? maxLayer + 2 : n.kind === "embedding" ? 0 : +n.layer + 1;
    const nRows = maxLayer + 3;
    const cells = new Map();
    for (const n of nodes) {
      n.row = rowOf(n);
      const key = n.row * 100000 + n.ctx_idx;
      if (!cells.has(key)) cells.set(key, []);
      cells.get(key).push(n);
    }
    const perRow = new Array(maxPos + 1).fill(1);
    for (const [key, list] of cells) {
      const pos = key % 100000;
      perRow[pos] = Math.max(perRow[pos], Math.min(MAX_PER_ROW, list.length));
    }
    const subRows = new Array(nRows).fill(1);
    for (const [key, list] of cells) {
      const row = Math.floor(key / 100000);
      const pos = key % 100000;
      subRows[row] = Math.max(subRows[row], Math.ceil(list.length / perRow[pos]));
    }
    const colW = perRow.map((k) => Math.max(MIN_COL, k * SPACING + 20));
    // Spread over the space there is (a little graph fills the window), up to a cap.
    const spareW = availW - MARGIN.left - MARGIN.right - d3.sum(colW);
    if (spareW > 0) colW.forEach((w, i) => (colW[i] = w + Math.min(MAX_SPARE_COL, spareW / colW.length)));
    const colX = [];
    let x = MARGIN.left;
    for (const w of colW) {
      colX.push(x);
      x += w;
    }
    const rowH = subRows.map((k) => Math.max(MIN_ROW, k * SPACING + 26));
    const spareH = availH - MARGIN.top - MARGIN.bottom - d3.sum(rowH);
    if (spareH > 0) rowH.forEach((h, i) => (rowH[i] = h + Math.min(MAX_SPARE_ROW, spareH / rowH.length)));
    const rowY = new Array(nRows);
    let y = MARGIN.top;
    for (let r = nRows - 1; r >= 0; r--) {
      rowY[r] = y + rowH[r] / 2;
      y += rowH[r];
    }
    for (const [key, list] of cells) {
      const row = Math.floor(key / 100000);
      const pos = key % 100000;
      const k = perRow[pos];
      const subs = Math.ceil(list.length / k);
      // Most influential first (influence is cumulative: smaller is more important).
      list.sort((a, b) => (a.influence ?? 1) - (b.influence ?? 1) || (b.activation ?? 0) - (a.activation ?? 0));
      list.forEach((n, i) => {
        const sub = Math.floor(i / k);
        const inSub = Math.min(k, list.length - sub * k);
        n.x = colX[pos] + colW[pos] / 2 + (i % k - (inSub - 1) / 2) * SPACING;
        n.y = rowY[row] + (sub - (subs - 1) / 2) * SPACING;
      });
    }
    return {
      width: x + MARGIN.right,
      height: y + MARGIN.bottom,
      colX,
      colW,
      rowY,
      rowH,
      nRows,
      maxLayer,
      bottom: y,
    };
  }

  // ---- drawing ------------------------------------------------------------------

  let svg, zoomLayer, linkLayer, nodeLayer, labelLayer, widthScale, SYMBOLS;

  function draw() {
    const g = state.graph;
    const tokens = g.metadata.prompt_tokens || [];
    svg = d3.select("#graph-svg");
    const box = svg.node().getBoundingClientRect();
    const lay = layout(state.nodes, tokens.length, box.width, box.height);
    SYMBOLS = {
      feature: d3.symbol(d3.symbolCircle, 80),
      error: d3.symbol(d3.symbolSquare, 70),
      embedding: d3.symbol(d3.symbolDiamond, 110),
      logit: d3.symbol(d3.symbolTriangle, 110),
    };

    svg.selectAll("*").remove();
    zoomLayer = svg.append("g").attr("class", "zoom");
    const axis = zoomLayer.append("g").attr("class", "axis");

    // Row bands and their names.
    for (let r = 0; r < lay.nRows; r++) {
      const name = r === 0 ? "tokens" : r === lay.nRows - 1 ? "logits" : `L${r - 1}`;
      axis
        .append("rect")
        .attr("class", r % 2 ? "band odd" : "band")
        .attr("x", MARGIN.left)
        .attr("y", lay.rowY[r] - lay.rowH[r] / 2)
        .attr("width", lay.width - MARGIN.left - MARGIN.right)
        .attr("height", lay.rowH[r]);
      axis
        .append("text")
        .attr("class", "row-label")
        .attr("x", MARGIN.left - 8)
        .attr("y", lay.rowY[r])
        .attr("dy", "0.35em")
        .text(name);
    }
    // Columns: a faint divider and the prompt token under each.
    lay.colX.forEach((x0, pos) => {
      if (pos > 0) {
        axis
          .append("line")
          .attr("class", "col-line")
          .attr("x1", x0)
          .attr("x2", x0)
          .attr("y1", MARGIN.top)
          .attr("y2", lay.bottom);
      }
      const tok = tokens[pos] === undefined ? "" : String(tokens[pos]);
      const shown = tok.length > 12 ? tok.slice(0, 11) + "…" : tok;
      const t = axis
        .append("text")
        .attr("class", "token-label")
        .attr("x", x0 + lay.colW[pos] / 2)
        .attr("y", lay.bottom + 18)
        .text(shown);
      t.append("title").text(tok);
      axis
        .append("text")
        .attr("class", "pos-label")
        .attr("x", x0 + lay.colW[pos] / 2)
        .attr("y", lay.bottom + 36)
        .text(pos);
    });

    linkLayer = zoomLayer.append("g").attr("class", "links");
    nodeLayer = zoomLayer.append("g").attr("class", "nodes");
    labelLayer = zoomLayer.append("g").attr("class", "pin-labels");

    const maxW = d3.max(state.allLinks, (l) => Math.abs(l.weight)) || 1;
    widthScale = d3.scaleSqrt().domain([0, maxW]).range([0.25, 5]);

    nodeLayer
      .selectAll("g.node")
      .data(state.nodes, (d) => d.node_id)
      .join("g")
      .attr("class", (d) => `node ${d.kind}` + (d.is_target_logit ? " target" : ""))
      .attr("data-node-id", (d) => d.node_id)
      .attr("transform", (d) => `translate(${d.x},${d.y})`)
      .call((gs) => gs.append("path").attr("class", (d) => `shape ${d.kind}`).attr("d", (d) => SYMBOLS[d.kind]()))
      .on("mouseenter", (event, d) => {
        state.hovered = d.node_id;
        showTooltip(event, d);
        applyState();
      })
      .on("mousemove", (event) => placeTooltip(event))
      .on("mouseleave", () => {
        state.hovered = null;
        $("tooltip").hidden = true;
        applyState();
      })
      .on("click", (event, d) => {
        event.stopPropagation();
        togglePin(d.node_id);
      });

    const zoom = d3
      .zoom()
      .scaleExtent([0.1, 8])
      .on("zoom", (event) => zoomLayer.attr("transform", event.transform));
    svg.call(zoom).on("dblclick.zoom", null);
    const fit = Math.min(1, box.width / lay.width, box.height / lay.height);
    svg.call(zoom.transform, d3.zoomIdentity.scale(fit > 0 ? fit : 1));

    drawLinks(+$("link-count").value);
  }

  function linkPath(l) {
    const s = state.byId.get(l.source);
    const t = state.byId.get(l.target);
    const my = (s.y + t.y) / 2;
    return `M${s.x},${s.y}C${s.x},${my} ${t.x},${my} ${t.x},${t.y}`;
  }

  function drawLinks(count) {
    state.shown = state.allLinks.slice(0, count);
    state.neighbours = new Map(state.nodes.map((n) => [n.node_id, new Set()]));
    for (const l of state.shown) {
      state.neighbours.get(l.source).add(l.target);
      state.neighbours.get(l.target).add(l.source);
    }
    linkLayer
      .selectAll("path.link")
      .data(state.shown.slice().reverse(), (l) => l.source + ">" + l.target) // strongest on top
      .join("path")
      .attr("class", (l) => "link " + (l.weight >= 0 ? "pos" : "neg"))
      .attr("d", linkPath)
      .attr("stroke-width", (l) => widthScale(Math.abs(l.weight)));
    $("link-count-value").textContent = `${state.shown.length} of ${state.allLinks.length}`;
    window.circuitrayViewer = Object.assign(window.circuitrayViewer || {}, {
      nodes: state.nodes.length,
      links: state.shown.length,
    });
    applyState();
  }

  // ---- highlight state (hover, pins, search) ------------------------------------

  function applyState() {
    const focus = new Set();
    const centres = new Set(state.pinned);
    if (state.hovered) centres.add(state.hovered);
    for (const id of centres) {
      focus.add(id);
      for (const n of state.neighbours.get(id) || []) focus.add(n);
    }
    const matches = state.matches;
    const dimming = focus.size > 0 || matches !== null;
    nodeLayer
      .selectAll("g.node")
      .classed("pinned", (d) => state.pinned.has(d.node_id))
      .classed("hovered", (d) => d.node_id === state.hovered)
      .classed("neighbour", (d) => focus.has(d.node_id) && !centres.has(d.node_id))
      .classed("match", (d) => matches !== null && matches.has(d.node_id))
      .classed(
        "dim",
        (d) => dimming && !focus.has(d.node_id) && !(matches !== null && matches.has(d.node_id))
      );
    // Pinned nodes carry their label on the graph too.
    const pinned = [...state.pinned].map((id) => state.byId.get(id)).filter(Boolean);
    labelLayer
      .selectAll("text")
      .data(pinned, (d) => d.node_id)
      .join("text")
      .attr("class", "pin-text")
      .attr("x", (d) => d.x + 8)
      .attr("y", (d) => d.y - 8)
      .text((d) => {
        const text = label(d) || shortName(d);
        return text.length > 40 ? text.slice(0, 39) + "…" : text;
      });
    linkLayer
      .selectAll("path.link")
      .classed("hl", (l) => centres.has(l.source) || centres.has(l.target))
      .classed("dim", (l) => dimming && !(centres.has(l.source) || centres.has(l.target)));
  }

  function togglePin(id) {
    if (state.pinned.has(id)) state.pinned.delete(id);
    else state.pinned.add(id);
    renderPinned();
    applyState();
  }

  function renderPinned() {
    const list = d3.select("#pinned");
    const items = [...state.pinned].map((id) => state.byId.get(id)).filter(Boolean);
    list
      .selectAll("li")
      .data(items, (d) => d.node_id)
      .join((enter) => {
        const li = enter.append("li").attr("data-node-id", (d) => d.node_id);
        li.append("span").attr("class", (d) => `pin-kind ${d.kind}`).text((d) => shortName(d));
        li.append("span").attr("class", "pin-label").text((d) => label(d) || d.node_id);
        li.append("button")
          .attr("type", "button")
          .attr("class", "unpin")
          .attr("title", "unpin")
          .text("×")
          .on("click", (event, d) => togglePin(d.node_id));
        return li;
      });
    $("pinned-n").textContent = `(${items.length})`;
    const url = new URL(window.location.href);
    if (items.length) url.searchParams.set("pinned", items.map((d) => d.node_id).join(","));
    else url.searchParams.delete("pinned");
    window.history.replaceState(null, "", url);
  }

  function runSearch() {
    const q = $("search").value.trim().toLowerCase();
    if (!q) {
      state.matches = null;
      $("search-count").textContent = "";
    } else {
      state.matches = new Set(
        state.nodes
          .filter((n) => n.kind === "feature")
          .filter((n) => label(n).toLowerCase().includes(q) || shortName(n).toLowerCase().includes(q))
          .map((n) => n.node_id)
      );
      $("search-count").textContent = `${state.matches.size} matching feature node(s)`;
    }
    applyState();
  }

  // ---- tooltip ------------------------------------------------------------------

  function showTooltip(event, d) {
    const tip = d3.select("#tooltip");
    tip.selectAll("*").remove();
    tip.append("div").attr("class", "tip-title").text(label(d) || "(no label)");
    const facts = [
      ["node", d.node_id],
      ["kind", d.kind === "feature" ? `feature ${shortName(d)}` : d.kind],
      ["layer", d.layer],
      ["position", `${d.ctx_idx} "${tokenAt(d.ctx_idx)}"`],
    ];
    if (d.kind === "logit") facts.push(["probability", fmt(d.token_prob)]);
    if (d.activation !== null && d.activation !== undefined) facts.push(["activation", fmt(d.activation)]);
    if (d.influence !== null && d.influence !== undefined) facts.push(["influence", fmt(d.influence)]);
    const f = d.kind === "feature" ? state.features[d.key] : null;
    if (f && f.frequency !== undefined) facts.push(["frequency", fmt(f.frequency)]);
    if (f && f.max_activation !== undefined) facts.push(["max activation", fmt(f.max_activation)]);
    const links = state.neighbours.get(d.node_id);
    facts.push(["links shown", links ? links.size : 0]);
    const dl = tip.append("dl");
    for (const [k, v] of facts) {
      dl.append("dt").text(k);
      dl.append("dd").text(String(v));
    }
    if (f && f.source) tip.append("div").attr("class", "muted").text(`label source: ${f.source}`);
    const examples = (f && Array.isArray(f.top_examples) ? f.top_examples : []).slice(0, MAX_EXAMPLES);
    if (examples.length) {
      tip.append("div").attr("class", "tip-head").text("top examples");
      const ol = tip.append("ol").attr("class", "examples");
      for (const ex of examples) exampleItem(ol.append("li"), ex);
    }
    tip.node().hidden = false;
    placeTooltip(event);
  }

  // An example's text with its token emphasised: the token at `pos` when the example
  // carries its `tokens`, otherwise the last occurrence of `token` in `text`.
  function exampleItem(li, ex) {
    const text = li.append("span").attr("class", "ex-text");
    if (Array.isArray(ex.tokens)) {
      ex.tokens.forEach((t, i) => {
        text.append(i === ex.pos ? "mark" : "span").text(String(t));
      });
    } else {
      const s = String(ex.text ?? "");
      const tok = String(ex.token ?? "");
      const at = tok ? s.lastIndexOf(tok) : -1;
      if (at >= 0) {
        text.append("span").text(s.slice(0, at));
        text.append("mark").text(tok);
        text.append("span").text(s.slice(at + tok.length));
      } else {
        text.append("span").text(s + " ");
        if (tok) text.append("mark").text(tok);
      }
    }
    if (ex.activation !== undefined) li.append("span").attr("class", "ex-act").text(fmt(+ex.activation));
  }

  function placeTooltip(event) {
    const tip = $("tooltip");
    if (tip.hidden) return;
    const pad = 14;
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    let x = event.clientX + pad;
    let y = event.clientY + pad;
    if (x + w > window.innerWidth - 4) x = Math.max(4, event.clientX - pad - w);
    if (y + h > window.innerHeight - 4) y = Math.max(4, window.innerHeight - 4 - h);
    tip.style.left = `${x}px`;
    tip.style.top = `${y}px`;
  }

  // ---- start --------------------------------------------------------------------

  async function main() {
    const meta = await getJSON("/data/graph-metadata.json");
    const graphs = (meta && Array.isArray(meta.graphs) ? meta.graphs : []).filter(
      (g) => g && typeof g.slug === "string"
    );
    if (!graphs.length) throw new Error("graph-metadata.json lists no graph");
    const params = new URLSearchParams(window.location.search);
    const wanted = params.get("slug");
    const entry = graphs.find((g) => g.slug === wanted) || graphs[0];
    if (wanted && entry.slug !== wanted) showError(`no graph "${wanted}"; showing ${entry.slug}`);

    const select = d3.select("#graph");
    select
      .selectAll("option")
      .data(graphs)
      .join("option")
      .attr("value", (g) => g.slug)
      .property("selected", (g) => g === entry)
      .text((g) => (g.prompt ? `${g.slug}: ${g.prompt}` : g.slug));
    select.on("change", function () {
      const url = new URL(window.location.href);
      url.search = "";
      url.searchParams.set("slug", this.value);
      window.location.assign(url);
    });

    const [graph, sidecar] = await Promise.all([
      getJSON(`/data/${encodeURIComponent(entry.slug)}.json`),
      typeof entry.features === "string"
        ? getJSON(`/data/${encodeURIComponent(entry.features)}`).catch((e) => {
            // No features file: the graph still draws, with the labels its nodes carry.
            console.warn(`${entry.features}: ${e.message}; drawing without it`);
            return null;
          })
        : Promise.resolve(null),
    ]);
    if (!graph || !Array.isArray(graph.nodes) || !Array.isArray(graph.links) || !graph.metadata) {
      throw new Error(`${entry.slug}.json is not an exported graph (metadata, nodes, links)`);
    }
    state.graph = graph;
    state.features = (sidecar && sidecar.features) || {};
    state.nodes = graph.nodes.map((n) => {
      const node = Object.assign({}, n);
      node.kind = kind(n);
      node.key = node.kind === "feature" ? featureKey(n) : null;
      return node;
    });
    state.byId = new Map(state.nodes.map((n) => [n.node_id, n]));
    state.allLinks = graph.links
      .filter((l) => state.byId.has(l.source) && state.byId.has(l.target))
      .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));

    document.title = `circuitray: ${graph.metadata.slug || entry.slug}`;
    $("prompt").textContent = graph.metadata.prompt || "";
    $("scan").textContent = [
      graph.metadata.scan && `model ${graph.metadata.scan}`,
      `${state.nodes.length} nodes, ${state.allLinks.length} links`,
      sidecar && sidecar.transcoders && `labels: ${sidecar.transcoders}`,
    ]
      .filter(Boolean)
      .join(" · ");

    const slider = $("link-count");
    slider.max = String(state.allLinks.length);
    slider.value = String(Math.min(DEFAULT_LINKS, state.allLinks.length));
    slider.addEventListener("input", () => drawLinks(+slider.value));
    $("search").addEventListener("input", runSearch);
    $("clear").addEventListener("click", () => {
      state.pinned.clear();
      renderPinned();
      applyState();
    });

    draw();
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        draw();
        applyState();
      }, 150);
    });
    for (const id of (params.get("pinned") || "").split(",")) {
      if (state.byId.has(id)) state.pinned.add(id);
    }
    renderPinned();
    applyState();
    window.circuitrayViewer = {
      slug: entry.slug,
      nodes: state.nodes.length,
      links: state.shown.length,
      totalLinks: state.allLinks.length,
    };
    document.body.dataset.ready = "1";
  }

  function start() {
    if (typeof d3 === "undefined") {
      showError("d3 did not load (vendor/d3-7.9.0.min.js)");
      return;
    }
    main().catch((e) => showError(e && e.message ? e.message : String(e), e));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
