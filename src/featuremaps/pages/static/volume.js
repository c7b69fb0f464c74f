(function () {
  "use strict";
  // The slice viewer of a volume (report/volume.py): three views of the model input, with a 3-D CAM or one
  // channel of a 3-D layer (report/volume_maps.py) laid over the slices, one colour scale and its legend.
  var node = document.getElementById("report-data");
  var data = node ? JSON.parse(node.textContent) : null;
  var V = data && data.volume;
  if (!V) { return; }
  var D = V.shape[0], H = V.shape[1], W = V.shape[2];
  var $ = function (id) { return document.getElementById(id); };
  var scaleBar = window.featuremapsScaleBar || function () {};
  function lutOf(name) {
    var hex = data.colormaps[name] || data.colormaps.viridis, a = new Uint8Array(hex.length / 2);
    for (var i = 0; i < a.length; i++) { a[i] = parseInt(hex.substr(2 * i, 2), 16); }
    return a;
  }
  var luts = {};
  function lut(name) { return luts[name] || (luts[name] = lutOf(name)); }

  // a sprite of d axial tiles (h x w each, cols per row) -> one Uint8Array indexed z*h*w + y*w + x
  function unpack(uri, d, h, w, cols) {
    return new Promise(function (resolve, reject) {
      var im = new Image();
      im.onload = function () {
        var c = document.createElement("canvas");
        c.width = im.naturalWidth; c.height = im.naturalHeight;
        var ctx = c.getContext("2d");
        ctx.drawImage(im, 0, 0);
        var px = ctx.getImageData(0, 0, c.width, c.height).data, out = new Uint8Array(d * h * w);
        for (var k = 0; k < d; k++) {
          var y0 = Math.floor(k / cols) * h, x0 = (k % cols) * w;
          for (var y = 0; y < h; y++) {
            for (var x = 0; x < w; x++) { out[(k * h + y) * w + x] = px[((y0 + y) * c.width + x0 + x) * 4]; }
          }
        }
        resolve(out);
      };
      im.onerror = reject;
      im.src = uri;
    });
  }
  // input index i along an axis of n voxels -> index of the map voxel (of m along that axis) covering it
  function cover(n, m) {
    var a = new Int32Array(n);
    for (var i = 0; i < n; i++) { a[i] = Math.min(m - 1, Math.floor(i * m / n)); }
    return a;
  }
  function voxelOf(view, k, r, c) {  // the input voxel (z, y, x) shown at row r, column c of slice k of a view
    var rr = view.flip ? view.rows - 1 - r : r;
    if (view.axis === 0) { return [k, rr, c]; }
    if (view.axis === 1) { return [rr, k, c]; }
    return [rr, c, k];
  }

  var grey = unpack(V.sprite, D, H, W, V.cols), cache = {};
  var method = $("vol-method"), klass = $("vol-class"), opacity = $("vol-opacity");
  var layerSel = $("vol-layer"), channelSel = $("vol-channel");
  var M = V.maps;

  // the overlay now chosen: {values, at(z, y, x) -> index, lut, lo, hi, what} or null
  function overlay() {
    if (!method || !method.value) { return Promise.resolve(null); }
    if (method.value === "fmap" && M) {
      var L = M.layers[Number(layerSel.value)], ch = Number(channelSel.value), s = L.shape, key = "m" + layerSel.value + ":" + ch;
      if (!cache[key]) { cache[key] = unpack(L.sprites[ch], s[0], s[1], s[2], L.cols); }
      var cz = cover(D, s[0]), cy = cover(H, s[1]), cx = cover(W, s[2]);
      return cache[key].then(function (values) {
        return {
          values: values, at: function (z, y, x) { return (cz[z] * s[1] + cy[y]) * s[2] + cx[x]; }, lut: lut(L.cmap),
          cmap: L.cmap, lo: L.lo, hi: L.hi, what: "channel " + L.kept[ch] + " of layer " + L.name,
          scale: "one scale for the layer's " + L.kept.length + " kept channels" + (L.norm === "symmetric" ? ", centred at 0" : ""),
        };
      });
    }
    if (!V.cams) { return Promise.resolve(null); }
    var cls = V.cams.classes[Number(klass.value)], ckey = klass.value + ":" + method.value;
    if (!cache[ckey]) { cache[ckey] = unpack(cls.maps[method.value], D, H, W, V.cols); }
    return cache[ckey].then(function (values) {
      return {
        values: values, at: function (z, y, x) { return (z * H + y) * W + x; }, lut: lut("inferno"), cmap: "inferno",
        lo: 0, hi: 1, what: method.value + " for " + cls.name, scale: "min-max scaled over the volume",
      };
    });
  }

  function fmt(v) { return v === null ? "n/a" : Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(2) : String(+v.toFixed(3)); }
  function legend(o) {
    var box = $("vol-legend");
    box.textContent = "";
    if (!o) { return; }
    var c = document.createElement("canvas");
    c.width = 256; c.height = 1;
    c.setAttribute("aria-hidden", "true");
    var ctx = c.getContext("2d"), img = ctx.createImageData(256, 1);
    for (var k = 0; k < 256; k++) {
      img.data[4 * k] = o.lut[3 * k]; img.data[4 * k + 1] = o.lut[3 * k + 1]; img.data[4 * k + 2] = o.lut[3 * k + 2];
      img.data[4 * k + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    var lo = document.createElement("span"), hi = document.createElement("span");
    lo.textContent = fmt(o.lo);
    hi.textContent = fmt(o.hi) + " (" + o.what + "; " + o.cmap + ", " + o.scale + ")";
    box.appendChild(lo); box.appendChild(c); box.appendChild(hi);
  }

  function draw(view, o) {
    var k = Number($("vol-" + view.name + "-slider").value);
    $("vol-" + view.name + "-out").textContent = (k + 1) + " / " + view.n;
    return grey.then(function (g) {
      var a = o ? Number(opacity.value) : 0;
      var tmp = document.createElement("canvas");
      tmp.width = view.cols; tmp.height = view.rows;
      var tctx = tmp.getContext("2d"), img = tctx.createImageData(view.cols, view.rows), d = img.data;
      for (var r = 0; r < view.rows; r++) {
        for (var c = 0; c < view.cols; c++) {
          var p = voxelOf(view, k, r, c), v = g[(p[0] * H + p[1]) * W + p[2]], q = (r * view.cols + c) * 4;
          if (o) {
            var t = o.values[o.at(p[0], p[1], p[2])] * 3;
            d[q] = (1 - a) * v + a * o.lut[t]; d[q + 1] = (1 - a) * v + a * o.lut[t + 1]; d[q + 2] = (1 - a) * v + a * o.lut[t + 2];
          } else { d[q] = d[q + 1] = d[q + 2] = v; }
          d[q + 3] = 255;
        }
      }
      tctx.putImageData(img, 0, 0);
      var canvas = $("vol-" + view.name), ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(tmp, 0, 0, view.width, view.height);
      scaleBar(ctx, view.bar);
      canvas.setAttribute("aria-label", view.name.charAt(0).toUpperCase() + view.name.slice(1) + " slice " + (k + 1) +
        " of " + view.n + " of the input" + (o ? ", " + o.what + " over it" : ""));
      canvas.setAttribute("data-slice", String(k));
      canvas.setAttribute("data-overlay", o ? o.what : "");
    });
  }
  var pending = Promise.resolve();
  function redraw(views) {  // draws run one after another, so a slow sprite never paints over a newer choice
    pending = pending.then(overlay).then(function (o) {
      legend(o);
      return Promise.all(views.map(function (view) { return draw(view, o); }));
    }).catch(function (e) { console.error(e); });  // reported, and the next choice still draws
    return pending;
  }
  function fillChannels() {
    var L = M.layers[Number(layerSel.value)];
    channelSel.textContent = "";
    L.kept.forEach(function (ch, i) {
      var opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = ch + (L.peak[i] === null ? "" : " (max " + fmt(L.peak[i]) + ")");
      channelSel.appendChild(opt);
    });
    var note = $("vol-maps-note"), pooled = L.shape.join("\u00d7") !== L.captured.join("\u00d7");
    note.setAttribute("data-layer", L.name);
    note.lastChild && note.lastChild.nodeType === 1 && note.removeChild(note.lastChild);
    var b = document.createElement("span");
    b.textContent = " Layer " + L.name + ": " + L.kept.length + " of " + L.channels + " channels kept; " +
      L.captured.join("\u00d7") + " voxels" + (pooled ? ", averaged to " + L.shape.join("\u00d7") + " to keep the page small." : ".");
    note.appendChild(b);
  }
  function enable() {  // the class applies to a CAM, the layer and channel to a feature map
    var fmap = method && method.value === "fmap";
    if (klass) { klass.disabled = fmap || !method.value; }
    if (layerSel) { layerSel.disabled = channelSel.disabled = !fmap; }
  }
  V.views.forEach(function (view) {
    $("vol-" + view.name + "-slider").addEventListener("input", function () { redraw([view]); });
  });
  if (method) { method.addEventListener("input", enable); enable(); }
  if (M) {
    fillChannels();
    layerSel.addEventListener("input", function () { fillChannels(); redraw(V.views); });
  }
  [method, klass, opacity, channelSel].forEach(function (e) { if (e) { e.addEventListener("input", function () { redraw(V.views); }); } });
  redraw(V.views).then(function () { $("volume").setAttribute("data-drawn", "true"); });
})();
