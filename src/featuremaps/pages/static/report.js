(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var layers = data.layers;
  var $ = function (id) { return document.getElementById(id); };
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    return e;
  }
  function fmt(v, digits) {  // a number for people: `digits` significant digits (default 4)
    if (v === null || v === undefined || !isFinite(v)) { return "n/a"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) { return v.toExponential(2); }
    return String(Number(v.toPrecision(digits || 4)));
  }
  // A name as text nodes with <wbr> after each dot, so long dotted names wrap at their parts.
  function breakable(node, name) {
    String(name).split(/(?<=\.)/).forEach(function (part, k) {
      if (k) { node.appendChild(document.createElement("wbr")); }
      node.appendChild(document.createTextNode(part));
    });
    return node;
  }
  // "112x112 map, averaged to 32x32 here" or "7x7 map".
  function resolution(L) {
    var full = L.shape.slice(2), tile = L.kind === "strip" ? [L.tile[1]] : L.tile, same = full.length === tile.length;
    for (var k = 0; same && k < full.length; k++) { same = full[k] === tile[k]; }
    var txt = full.join("\u00d7") + (full.length === 3 ? " volume (its maximum over depth)" : full.length === 1 ? " positions" : " map");
    return same ? txt : txt + ", averaged to " + tile.join("\u00d7") + " here";
  }
  function pct(v) { return (v === null || v === undefined) ? "n/a" : (100 * v).toFixed(0) + "%"; }

  // ---------------------------------------------------------------- colormaps
  var luts = {};
  Object.keys(data.colormaps).forEach(function (name) {
    var hex = data.colormaps[name], a = new Uint8Array(hex.length / 2);
    for (var i = 0; i < a.length; i++) { a[i] = parseInt(hex.substr(2 * i, 2), 16); }
    luts[name] = a;
  });

  // ------------------------------------------------------------- predictions
  Array.prototype.forEach.call(document.querySelectorAll(".pred"), function (li) {
    var fill = li.querySelector(".fill");
    if (fill) { fill.style.width = (100 * Number(li.getAttribute("data-p"))).toFixed(1) + "%"; }
  });

  // ------------------------------------------------------- sprites (lazy decode)
  var decoded = {};
  function decode(i) { return decodeInto(decoded, i, layers[i].sprite); }
  // The full-resolution channels of a pooled layer (its "detail"), decoded on first use only.
  var decodedDetail = {};
  function decodeDetail(i) { return decodeInto(decodedDetail, i, layers[i].detail.sprite); }
  function decodeInto(cache, i, src) {
    if (!cache[i]) {
      cache[i] = new Promise(function (resolve, reject) {
        var img = new Image();
        img.onload = function () {
          var c = document.createElement("canvas");
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          var ctx = c.getContext("2d");
          ctx.drawImage(img, 0, 0);
          var rgba = ctx.getImageData(0, 0, c.width, c.height).data;
          var g = new Uint8Array(c.width * c.height);
          for (var k = 0; k < g.length; k++) { g[k] = rgba[4 * k]; }
          resolve({ g: g, w: c.width, h: c.height });
        };
        img.onerror = function () { reject(new Error("cannot decode layer " + i)); };
        img.src = src;
      });
    }
    return cache[i];
  }
  // What the enlarged view and the histogram read: the full-resolution channels when the page has them.
  function detailView(L) {
    if (!L.detail) { return L; }
    // the layer's colormap kind (signed or not) is kept, so the grid and the enlarged view share one colormap
    return { tile: L.detail.tile, cols: L.cols, lo: L.detail.lo, hi: L.detail.hi, kind: L.kind, shape: L.shape, full: true,
             signed: layerRange(L).signed };
  }

  // ---------------------------------------------------------------- state
  var state = { layer: 0, slot: null, order: [], sort: "index", norm: "layer", zoom: 3, opacity: 0.6 };

  function layerRange(L) {
    var lo = Infinity, hi = -Infinity;
    for (var s = 0; s < L.lo.length; s++) {
      if (L.lo[s] !== null && L.lo[s] < lo) { lo = L.lo[s]; }
      if (L.hi[s] !== null && L.hi[s] > hi) { hi = L.hi[s]; }
    }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    return { lo: lo, hi: hi, signed: lo < 0 && hi > 0 };
  }

  // A function mapping (slot, 8-bit sprite value) to a colormap index, and the colormap.
  function scaler(L, norm) {
    if (norm === "channel") {
      return { lut: luts.viridis, map: function (s, v) { return v; }, lo: null, hi: null, cmap: "viridis" };
    }
    var r = layerRange(L);
    if (L.signed !== undefined) { r.signed = L.signed; }
    if (r.signed) {
      var m = Math.max(-r.lo, r.hi);
      return { lut: luts.RdBu_r, cmap: "RdBu_r", lo: -m, hi: m, map: function (s, v) {
        var val = L.lo[s] + v / 255 * (L.hi[s] - L.lo[s]);
        return Math.max(0, Math.min(255, Math.round((val / m * 0.5 + 0.5) * 255)));
      } };
    }
    var span = r.hi > r.lo ? r.hi - r.lo : 1;
    return { lut: luts.viridis, cmap: "viridis", lo: r.lo, hi: r.hi, map: function (s, v) {
      var val = L.lo[s] + v / 255 * (L.hi[s] - L.lo[s]);
      return Math.max(0, Math.min(255, Math.round((val - r.lo) / span * 255)));
    } };
  }

  function sortOrder(L, key) {
    var order = L.shown.map(function (c, s) { return s; });
    if (key !== "index") {
      var vals = L[key];
      order.sort(function (a, b) {
        var va = vals[a] === null ? -Infinity : vals[a], vb = vals[b] === null ? -Infinity : vals[b];
        return vb - va || a - b;
      });
    }
    return order;
  }

  function tileValue(sp, L, s, y, x) {
    var th = L.tile[0], tw = L.tile[1], row = Math.floor(s / L.cols), col = s % L.cols;
    return sp.g[(row * th + y) * sp.w + col * tw + x];
  }

  // Paint one tile (slot s) into an ImageData at (ox, oy).
  function paintTile(out, outW, sp, L, s, ox, oy, sc) {
    var th = L.tile[0], tw = L.tile[1], lut = sc.lut;
    for (var y = 0; y < th; y++) {
      for (var x = 0; x < tw; x++) {
        var ci = sc.map(s, tileValue(sp, L, s, y, x)) * 3, o = ((oy + y) * outW + ox + x) * 4;
        out[o] = lut[ci]; out[o + 1] = lut[ci + 1]; out[o + 2] = lut[ci + 2]; out[o + 3] = 255;
      }
    }
  }

  // ---------------------------------------------------------------- the grid
  var grid = $("grid");
  function geometry(L) {
    var n = L.shown.length, th = L.tile[0], tw = L.tile[1], strip = L.kind === "strip";
    var cols = strip ? 1 : Math.max(1, Math.ceil(Math.sqrt(n * th / tw)));
    var rows = Math.ceil(n / cols);
    return { cols: cols, rows: rows, th: th, tw: tw, cellW: tw + 1, cellH: th + 1, strip: strip };
  }

  function drawGrid() {
    var i = state.layer, L = layers[i];
    return decode(i).then(function (sp) {
      if (i !== state.layer) { return; }
      var g = geometry(L), W = g.cols * g.cellW + 1, H = g.rows * g.cellH + 1;
      grid.width = W; grid.height = H;
      var zoom = Math.max(1, Math.round(state.zoom * Math.max(1, 24 / Math.max(g.th, g.tw))));
      var stretch = g.strip ? 6 : 1;
      grid.style.width = (W * zoom) + "px";
      grid.style.height = (H * zoom * stretch) + "px";
      var ctx = grid.getContext("2d"), img = ctx.createImageData(W, H), out = img.data;
      for (var k = 0; k < out.length; k += 4) { out[k] = 255; out[k + 1] = 255; out[k + 2] = 255; out[k + 3] = 255; }
      var sc = scaler(L, state.norm);
      state.order.forEach(function (s, pos) {
        var r = Math.floor(pos / g.cols), c = pos % g.cols;
        paintTile(out, W, sp, L, s, 1 + c * g.cellW, 1 + r * g.cellH, sc);
      });
      ctx.putImageData(img, 0, 0);
      if (state.slot !== null) {
        var pos = state.order.indexOf(state.slot);
        if (pos >= 0) {
          ctx.strokeStyle = "#e0302a"; ctx.lineWidth = 1;
          var rr = Math.floor(pos / g.cols), cc = pos % g.cols;
          ctx.strokeRect(cc * g.cellW + 0.5, rr * g.cellH + 0.5, g.cellW, g.cellH);
        }
      }
      drawLegend(sc, $("legend"), null);
      grid.setAttribute("data-layer", L.name);
      grid.setAttribute("data-cmap", sc.cmap);
    });
  }

  // The colour bar of a scale, with its values; ``range`` gives them for a per-channel scale.
  function drawLegend(sc, box, range) {
    box.textContent = "";
    var c = el("canvas");
    c.width = 256; c.height = 1;
    var ctx = c.getContext("2d"), img = ctx.createImageData(256, 1);
    for (var k = 0; k < 256; k++) {
      img.data[4 * k] = sc.lut[3 * k]; img.data[4 * k + 1] = sc.lut[3 * k + 1];
      img.data[4 * k + 2] = sc.lut[3 * k + 2]; img.data[4 * k + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    if (sc.lo === null && range) {
      box.appendChild(el("span", null, fmt(range.lo)));
      box.appendChild(c);
      box.appendChild(el("span", null, fmt(range.hi) + " (" + sc.cmap + ", this channel's own range)"));
    } else if (sc.lo === null) {
      box.appendChild(el("span", null, "channel min"));
      box.appendChild(c);
      box.appendChild(el("span", null, "channel max (" + sc.cmap + ", each channel its own range)"));
    } else {
      box.appendChild(el("span", null, fmt(sc.lo)));
      box.appendChild(c);
      box.appendChild(el("span", null, fmt(sc.hi) + " (" + sc.cmap + (sc.cmap === "RdBu_r" ? ", centred at 0" : "") + ")"));
    }
  }

  grid.addEventListener("click", function (ev) {
    var L = layers[state.layer], g = geometry(L), rect = grid.getBoundingClientRect();
    var x = (ev.clientX - rect.left) / rect.width * grid.width, y = (ev.clientY - rect.top) / rect.height * grid.height;
    var c = Math.floor(x / g.cellW), r = Math.floor(y / g.cellH), pos = r * g.cols + c;
    if (c >= 0 && c < g.cols && pos >= 0 && pos < state.order.length) { openChannel(state.order[pos]); }
  });

  // ---------------------------------------------------------------- outline
  var buttons = [], stages = [];
  function sparkline(L) {
    var w = 64, h = 18, vals = L.mean.map(function (v) { return v === null ? 0 : v; });
    var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals), span = hi > lo ? hi - lo : 1;
    var n = vals.length, pts = vals.map(function (v, k) {
      return (n === 1 ? w / 2 : k / (n - 1) * w).toFixed(1) + "," + (h - 1 - (v - lo) / span * (h - 2)).toFixed(1);
    });
    var s = svg("svg", { width: w, height: h, viewBox: "0 0 " + w + " " + h, "aria-hidden": "true" });
    s.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#2456a4", "stroke-width": "1" }));
    return s;
  }

  function buildOutline() {
    var list = $("layer-list"), stage = null, group = null;
    layers.forEach(function (L, i) {
      if (L.stage !== stage) {
        stage = L.stage;
        var det = el("details", "stage");
        det.open = true;
        det.appendChild(el("summary", null, stage));
        group = el("ul", "layer-group");
        det.appendChild(group);
        list.appendChild(det);
        stages.push({ node: det, items: [] });
      }
      var b = el("button", "layer-btn"), item = el("li");
      b.type = "button";
      b.setAttribute("data-i", String(i));
      b.setAttribute("data-name", L.name);
      b.appendChild(breakable(el("span", "lname"), L.name));
      b.appendChild(sparkline(L));
      b.appendChild(el("span", "lmeta", L.type + " " + L.shape.join("\u00d7") + " \u00b7 zeros " + pct(L.stats.zeros) + " \u00b7 dead " + L.stats.dead));
      b.title = "mean activation per channel";
      b.addEventListener("click", function () { selectLayer(i); });
      item.appendChild(b);
      group.appendChild(item);
      buttons.push(b);
      stages[stages.length - 1].items.push(item);
    });
    $("filter").addEventListener("input", function () { filterLayers(this.value); });
  }

  // Hide the layers whose name and type do not contain the query; a stage with none left hides too.
  function filterLayers(query) {
    var q = String(query).trim().toLowerCase(), shown = 0, k = 0;
    stages.forEach(function (st) {
      var any = false;
      st.items.forEach(function (item) {
        var L = layers[k++], hit = q === "" || (L.name + " " + L.type).toLowerCase().indexOf(q) >= 0;
        item.hidden = !hit;
        if (hit) { shown++; any = true; }
      });
      st.node.hidden = !any;
    });
    $("filter-count").textContent = q === "" ? "" :
      (shown ? shown + " of " + layers.length + " layers match" : "No layer matches \u201c" + query + "\u201d");
  }

  function selectLayer(i, keepSlot) {
    if (!layers.length) { return; }
    i = Math.max(0, Math.min(layers.length - 1, i));
    state.layer = i;
    var L = layers[i];
    state.order = sortOrder(L, state.sort);
    if (!keepSlot) { state.slot = null; }
    buttons.forEach(function (b, k) { b.setAttribute("aria-current", k === i ? "true" : "false"); });
    buttons[i].scrollIntoView({ block: "nearest" });
    $("layer-name").textContent = L.name;
    var shown = L.shown.length === L.channels ? L.channels + " channels" : L.shown.length + " of " + L.channels + " channels (most active)";
    $("layer-meta").textContent = L.type + " \u00b7 " + L.layout + " " + L.shape.join("\u00d7") + " \u00b7 " + shown +
      " \u00b7 range [" + fmt(L.stats.min) + ", " + fmt(L.stats.max) + "] \u00b7 mean " + fmt(L.stats.mean) +
      " \u00b7 zeros " + pct(L.stats.zeros) + " \u00b7 dead " + L.stats.dead +
      (L.stats.nonfinite ? " \u00b7 " + L.stats.nonfinite + " NaN/Inf values" : "");
    var done = drawGrid();
    if (!$("detail").hidden) {
      if (state.slot === null) { state.slot = state.order[0]; }
      done.then(function () { openChannel(state.slot); });
    }
    return done;
  }

  // ---------------------------------------------------------------- channel detail
  var photo = new Image();
  var photoReady = new Promise(function (resolve) { photo.onload = resolve; photo.src = data.photo; });

  function tileCanvas(sp, L, s, lut, mapFn) {
    var th = L.tile[0], tw = L.tile[1], c = el("canvas");
    c.width = tw; c.height = th;
    var ctx = c.getContext("2d"), img = ctx.createImageData(tw, th);
    paintTile(img.data, tw, sp, L, s, 0, 0, { lut: lut, map: mapFn });
    ctx.putImageData(img, 0, 0);
    return c;
  }

  function drawOverlay() {
    var L = layers[state.layer], s = state.slot;
    if (s === null) { return Promise.resolve(); }
    return Promise.all([decode(state.layer), photoReady]).then(function (res) {
      var sp = res[0], c = $("detail-overlay"), ctx = c.getContext("2d"), sc = scaler(L, state.norm);
      c.width = photo.naturalWidth; c.height = photo.naturalHeight;
      ctx.globalAlpha = 1;
      ctx.drawImage(photo, 0, 0);
      var heat = tileCanvas(sp, L, s, sc.lut, sc.map);
      ctx.imageSmoothingEnabled = true;
      ctx.globalAlpha = state.opacity;
      if (L.kind === "strip") {
        ctx.drawImage(heat, 0, 0, c.width, c.height / 8);
      } else {
        ctx.drawImage(heat, 0, 0, c.width, c.height);
      }
      ctx.globalAlpha = 1;
      c.setAttribute("data-opacity", String(state.opacity));
      c.setAttribute("data-cmap", sc.cmap);
    });
  }

  function drawHistogram(sp, L, s) {
    var bins = 32, counts = new Array(bins).fill(0), th = L.tile[0], tw = L.tile[1];
    for (var y = 0; y < th; y++) {
      for (var x = 0; x < tw; x++) { counts[Math.min(bins - 1, Math.floor(tileValue(sp, L, s, y, x) / 256 * bins))]++; }
    }
    var w = 320, h = 90, maxc = Math.max.apply(null, counts), box = $("detail-hist");
    box.textContent = "";
    var g = svg("svg", { viewBox: "0 0 " + w + " " + (h + 16) });
    counts.forEach(function (n, k) {
      var bh = maxc ? n / maxc * h : 0;
      g.appendChild(svg("rect", { x: (k * w / bins + 0.5).toFixed(1), y: (h - bh).toFixed(1), width: (w / bins - 1).toFixed(1), height: bh.toFixed(1) }));
    });
    var t1 = svg("text", { x: 0, y: h + 13 }); t1.textContent = fmt(L.lo[s]);
    var t2 = svg("text", { x: w, y: h + 13, "text-anchor": "end" }); t2.textContent = fmt(L.hi[s]);
    g.appendChild(t1); g.appendChild(t2);
    box.appendChild(g);
  }

  function openChannel(s) {
    var L = layers[state.layer];
    state.slot = s;
    var panel = $("detail");
    panel.hidden = false;
    $("layer-body").classList.add("open");
    $("detail-title").textContent = "Channel " + L.shown[s] + " of " + L.name;
    $("detail-meta").textContent = "max " + fmt(L.max[s]) + " \u00b7 mean " + fmt(L.mean[s]) + " \u00b7 variance " +
      fmt(L.var[s]) + " \u00b7 " + (L.detail ? L.shape.slice(2).join("\u00d7") + " map" : resolution(L));
    panel.setAttribute("data-channel", String(L.shown[s]));
    var atlasP = $("detail-atlas-p");
    if (L.atlas) {
      $("detail-atlas").setAttribute("href", L.atlas + "#c" + L.shown[s]);
      atlasP.hidden = false;
    } else {
      atlasP.hidden = true;
    }
    var synthFig = $("detail-synth-fig");
    if (L.synth && L.synth[s]) {
      $("detail-synth").src = L.synth[s];
      synthFig.hidden = false;
    } else {
      synthFig.hidden = true;
      $("detail-synth").removeAttribute("src");
    }
    var D = detailView(L), i = state.layer;
    return (D.full ? decodeDetail(i) : decode(i)).then(function (sp) {
      var big = $("detail-map"), th = D.tile[0], tw = D.tile[1], z = Math.max(1, Math.floor(256 / Math.max(th, tw)));
      var sc = scaler(D, state.norm);
      big.width = tw * z; big.height = (L.kind === "strip" ? Math.max(16, th) : th) * z;
      var ctx = big.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(tileCanvas(sp, D, s, sc.lut, sc.map), 0, 0, big.width, big.height);
      big.setAttribute("data-cmap", sc.cmap);
      big.setAttribute("data-values", tw + "x" + th);
      $("detail-map-cap").textContent = "Channel, enlarged (" + tw + "\u00d7" + th + " values" +
        (D.full ? ", the map's full resolution)" : D === L && resolution(L).indexOf("averaged") >= 0 ? ", averages of the map)" : ")");
      drawLegend(sc, $("detail-legend"), sc.lo === null ? { lo: D.lo[s], hi: D.hi[s] } : null);
      drawHistogram(sp, D, s);
      return Promise.all([drawOverlay(), drawGrid()]);
    });
  }

  function closeChannel() {
    $("detail").hidden = true;
    $("layer-body").classList.remove("open");
    state.slot = null;
    drawGrid();
    grid.focus();
  }

  $("detail-close").addEventListener("click", closeChannel);
  $("opacity").addEventListener("input", function () { state.opacity = Number(this.value); drawOverlay(); });
  $("sort").addEventListener("change", function () { state.sort = this.value; state.order = sortOrder(layers[state.layer], state.sort); drawGrid(); });
  $("norm").addEventListener("change", function () {
    state.norm = this.value;
    if (state.slot !== null && !$("detail").hidden) { openChannel(state.slot); } else { drawGrid(); }
  });
  $("zoom").addEventListener("input", function () { state.zoom = Number(this.value); drawGrid(); });

  function stepChannel(d) {
    var pos = state.slot === null ? (d > 0 ? -1 : state.order.length) : state.order.indexOf(state.slot);
    var next = Math.max(0, Math.min(state.order.length - 1, pos + d));
    openChannel(state.order[next]);
  }

  document.addEventListener("keydown", function (ev) {
    var tag = (ev.target && ev.target.tagName) || "";
    if (ev.key === "Escape") { if (!$("detail").hidden) { closeChannel(); ev.preventDefault(); } return; }
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if (ev.key === "ArrowDown" || ev.key === "j") { selectLayer(state.layer + 1, false); ev.preventDefault(); }
    else if (ev.key === "ArrowUp" || ev.key === "k") { selectLayer(state.layer - 1, false); ev.preventDefault(); }
    else if (ev.key === "ArrowRight" || ev.key === "l") { stepChannel(1); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft" || ev.key === "h") { stepChannel(-1); ev.preventDefault(); }
  });

  // ---------------------------------------------------------------- depth chart
  // Drawn at the box's own width (text stays 11 px on a phone), with room for the widest tick label.
  function depthChart() {
    var box = $("depth-chart"), n = layers.length;
    box.textContent = "";
    if (!n) { box.textContent = "No layers."; return; }
    var mean = layers.map(function (L) { return L.stats.mean; });
    var band = layers.map(function (L) { var m = L.stats.mean || 0, d = L.stats.std || 0; return [m - d, m + d]; });
    var lo = Math.min.apply(null, band.map(function (b) { return b[0]; }));
    var hi = Math.max.apply(null, band.map(function (b) { return b[1]; }));
    var dead = layers.map(function (L) { return L.stats.dead; });
    var deadMax = Math.max(1, Math.max.apply(null, dead));
    var ticks = [fmt(lo), fmt(hi), "0", "1", String(deadMax)];
    var widest = Math.max.apply(null, ticks.map(function (t) { return t.length; }));
    var W = Math.max(300, Math.round(box.clientWidth || 900)), P = Math.ceil(10 + 6.8 * widest);
    var panelH = 70, gap = 22, H = 3 * panelH + 2 * gap + 30, step = (W - P - 10) / Math.max(1, n);
    var s = svg("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Statistics of every layer in forward order" });
    function xOf(i) { return P + (i + 0.5) * step; }
    function panel(k, title, values, kind, color, lo, hi) {
      var top = k * (panelH + gap) + 14;
      var t = svg("text", { x: P, y: top - 3 }); t.textContent = title; s.appendChild(t);
      s.appendChild(svg("line", { x1: P, x2: W - 10, y1: top + panelH, y2: top + panelH, "class": "axis" }));
      var span = hi > lo ? hi - lo : 1;
      function yOf(v) { return top + panelH - (v - lo) / span * panelH; }
      var tl = svg("text", { x: P - 4, y: top + 8, "text-anchor": "end" }); tl.textContent = fmt(hi); s.appendChild(tl);
      var bl = svg("text", { x: P - 4, y: top + panelH, "text-anchor": "end" }); bl.textContent = fmt(lo); s.appendChild(bl);
      if (kind === "bar") {
        values.forEach(function (v, i) {
          if (v === null) { return; }
          var y = yOf(v);
          s.appendChild(svg("rect", { x: (xOf(i) - step * 0.4).toFixed(1), y: y.toFixed(1), width: Math.max(0.5, step * 0.8).toFixed(1), height: (top + panelH - y).toFixed(1), fill: color }));
        });
      } else {
        var pts = values.map(function (v, i) { return xOf(i).toFixed(1) + "," + yOf(v === null ? lo : v).toFixed(1); });
        if (kind.band) {
          var up = kind.band.map(function (b, i) { return xOf(i).toFixed(1) + "," + yOf(b[1]).toFixed(1); });
          var dn = kind.band.map(function (b, i) { return xOf(i).toFixed(1) + "," + yOf(b[0]).toFixed(1); }).reverse();
          s.appendChild(svg("polygon", { points: up.concat(dn).join(" "), fill: color, "fill-opacity": "0.18" }));
        }
        s.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": "1.5" }));
      }
    }
    panel(0, "mean \u00b1 std", mean, { band: band }, "#2456a4", lo, hi);
    panel(1, "fraction of zeros", layers.map(function (L) { return L.stats.zeros; }), "bar", "#4f8a3f", 0, 1);
    panel(2, "dead channels", dead, "bar", "#a8452c", 0, deadMax);
    layers.forEach(function (L, i) {
      var r = svg("rect", { x: (xOf(i) - step / 2).toFixed(1), y: 0, width: step.toFixed(1), height: H, "class": "hit" });
      var tt = svg("title"); tt.textContent = L.name + ": mean " + fmt(L.stats.mean) + ", zeros " + pct(L.stats.zeros) + ", dead " + L.stats.dead;
      r.appendChild(tt);
      r.addEventListener("click", function () { selectLayer(i); $("layer-view").scrollIntoView({ behavior: "smooth" }); });
      s.appendChild(r);
    });
    box.appendChild(s);
  }

  // ------------------------------------------------- helpers of the CAM and relevance sections
  var loadedImages = {};
  function loadImage(uri) {  // each data URI decoded once
    if (!loadedImages[uri]) {
      loadedImages[uri] = new Promise(function (resolve) { var im = new Image(); im.onload = function () { resolve(im); }; im.src = uri; });
    }
    return loadedImages[uri];
  }
  function colorize(im, lut, alpha) {  // a grayscale picture through a colormap, as a canvas (alpha(v): opacity)
    var c = el("canvas");
    c.width = im.naturalWidth; c.height = im.naturalHeight;
    var ctx = c.getContext("2d");
    ctx.drawImage(im, 0, 0);
    var d = ctx.getImageData(0, 0, c.width, c.height);
    for (var k = 0; k < d.data.length; k += 4) {
      var g = d.data[k], v = g * 3;
      d.data[k] = lut[v]; d.data[k + 1] = lut[v + 1]; d.data[k + 2] = lut[v + 2]; d.data[k + 3] = alpha ? alpha(g) : 255;
    }
    ctx.putImageData(d, 0, 0);
    return c;
  }
  function classOptions(select, classes) {
    classes.forEach(function (c, k) {
      var o = el("option", null, c.name + " (" + (100 * c.p).toFixed(1) + "%)");
      o.value = String(k);
      select.appendChild(o);
    });
  }

  // ---------------------------------------------------------------- CAMs
  function camSection() {
    var cams = data.cams;
    if (!cams || !$("cams")) { return; }
    var select = $("cam-class"), opacity = $("cam-opacity");
    $("cam-meta").textContent = cams.note;
    $("cam-hint").textContent = cams.hint || "";
    classOptions(select, cams.classes);
    function render() {
      var cls = cams.classes[Number(select.value)], box = $("cam-grid");
      box.textContent = "";
      cams.methods.forEach(function (m) {
        var entry = cls.maps[m];
        if (!entry) { return; }
        var fig = el("figure", "cam-card"), c = el("canvas");
        c.setAttribute("role", "img");
        c.setAttribute("aria-label", m + " heatmap for " + cls.name + " over the input image");
        fig.appendChild(c);
        fig.appendChild(el("h3", null, m));
        if (entry.same) { fig.appendChild(el("p", "same", "the same map as " + entry.same)); }
        if (entry.scores) {
          var dl = el("dl", "scores");
          Object.keys(entry.scores).forEach(function (k) {
            dl.appendChild(el("dt", null, k));
            dl.appendChild(el("dd", null, score(k, entry.scores[k])));
          });
          fig.appendChild(dl);
        }
        box.appendChild(fig);
        Promise.all([loadImage(entry.png), photoReady]).then(function (res) {
          c.width = photo.naturalWidth; c.height = photo.naturalHeight;
          var ctx = c.getContext("2d");
          ctx.drawImage(photo, 0, 0);
          ctx.globalAlpha = Number(opacity.value);
          ctx.imageSmoothingEnabled = true;
          ctx.drawImage(colorize(res[0], luts.inferno), 0, 0, c.width, c.height);
          ctx.globalAlpha = 1;
          if (data.scale && window.featuremapsScaleBar) { window.featuremapsScaleBar(ctx, data.scale); }
          c.setAttribute("data-drawn", "true");
        });
      });
    }
    // People read "0.33" and "12.5%", not "0.3279" or "avg drop % 0.0000".
    function score(label, v) {
      if (v === null || v === undefined || !isFinite(v)) { return "n/a"; }
      return label.indexOf("%") >= 0 ? v.toFixed(1) + "%" : v.toFixed(2);
    }
    select.addEventListener("change", render);
    opacity.addEventListener("input", render);
    render();
  }

  // ---------------------------------------------------------------- what drove the prediction
  function driversSection() {
    var drv = data.drivers;
    if (!drv || !$("drivers")) { return; }
    var select = $("drivers-class"), L = drv.layer_index === null ? null : layers[drv.layer_index];
    $("drivers-meta").textContent = drv.note;
    classOptions(select, drv.classes);
    function render() {
      var cls = drv.classes[Number(select.value)], box = $("drivers-grid");
      box.textContent = "";
      cls.channels.forEach(function (ch) {
        var fig = el("figure", "cam-card driver"), c = el("canvas");
        c.setAttribute("role", "img");
        c.setAttribute("aria-label", "Where channel " + ch.channel + " contributed to " + cls.name + ", over the input image");
        fig.appendChild(c);
        fig.appendChild(el("h3", null, "channel " + ch.channel));
        fig.appendChild(el("p", "same", (100 * ch.share).toFixed(1) + "% of the contributions \u00b7 relevance " + fmt(ch.relevance)));
        if (L && ch.slot !== null) {
          var b = el("button", "open", "Open in the layer view");
          b.type = "button";
          b.setAttribute("data-channel", String(ch.channel));
          b.addEventListener("click", function () {
            selectLayer(drv.layer_index).then(function () { openChannel(ch.slot); });
            $("layer-view").scrollIntoView({ behavior: "smooth" });
          });
          fig.appendChild(b);
        }
        if (L && L.atlas) {
          var p = el("p", "same"), a = el("a", null, "its top dataset examples");
          a.href = L.atlas + "#c" + ch.channel;
          p.appendChild(a);
          fig.appendChild(p);
        }
        box.appendChild(fig);
        Promise.all([loadImage(ch.png), photoReady]).then(function (res) {
          var tmp = colorize(res[0], luts.RdBu_r);
          c.width = photo.naturalWidth; c.height = photo.naturalHeight;
          var ctx = c.getContext("2d");
          ctx.drawImage(photo, 0, 0);
          ctx.globalAlpha = 0.6;
          ctx.imageSmoothingEnabled = true;
          ctx.drawImage(tmp, 0, 0, c.width, c.height);
          ctx.globalAlpha = 1;
          c.setAttribute("data-drawn", "true");
        });
      });
    }
    select.addEventListener("change", render);
    render();
  }

  buildOutline();
  depthChart();
  driversSection();
  var resizeTimer = null, lastWidth = $("depth-chart").clientWidth;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if ($("depth-chart").clientWidth !== lastWidth) { lastWidth = $("depth-chart").clientWidth; depthChart(); }
    }, 150);
  });
  camSection();
  // what the section scripts that run after this one share (report_concepts.js)
  window.featuremapsReport = { el: el, fmt: fmt, luts: luts, loadImage: loadImage, colorize: colorize };
  if (layers.length) { selectLayer(0); } else { $("layer-name").textContent = "No layers with channels were captured."; }
  document.documentElement.setAttribute("data-ready", "true");
})();
