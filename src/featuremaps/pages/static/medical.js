(function () {
  "use strict";
  // ------------------------------------------------------------ scale bars (the same geometry as render/scalebar.py)
  function margin(w) { return Math.max(4, Math.min(12, Math.floor(w / 28))); }
  function scaleBar(ctx, bar) {
    var c = ctx.canvas, m = margin(c.width), thick = Math.max(2, Math.floor(c.height / 100));
    var top = c.height - m - thick - 11 - 4;
    ctx.save();
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "top";
    var right = m + Math.max(bar.px, Math.ceil(ctx.measureText(bar.label).width));
    ctx.fillStyle = "rgba(0, 0, 0, 0.59)";
    ctx.fillRect(m - 3, top - 2, right - m + 6, c.height - top);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(m, c.height - m - thick, bar.px, thick);
    ctx.fillText(bar.label, m, top);
    ctx.restore();
  }
  window.featuremapsScaleBar = scaleBar;

  // ------------------------------------------------------------ the slice viewer of a volume
  var node = document.getElementById("report-data");
  var data = node ? JSON.parse(node.textContent) : null;
  var V = data && data.volume;
  if (!V) { return; }
  var D = V.shape[0], H = V.shape[1], W = V.shape[2];
  var $ = function (id) { return document.getElementById(id); };
  var lut = (function (hex) {
    var a = new Uint8Array(hex.length / 2);
    for (var i = 0; i < a.length; i++) { a[i] = parseInt(hex.substr(2 * i, 2), 16); }
    return a;
  })(data.colormaps.inferno);

  // a sprite of D axial tiles (H x W each) -> one Uint8Array indexed d*H*W + h*W + w
  function unpack(uri) {
    return new Promise(function (resolve, reject) {
      var im = new Image();
      im.onload = function () {
        var c = document.createElement("canvas");
        c.width = im.naturalWidth; c.height = im.naturalHeight;
        var ctx = c.getContext("2d");
        ctx.drawImage(im, 0, 0);
        var px = ctx.getImageData(0, 0, c.width, c.height).data, out = new Uint8Array(D * H * W);
        for (var k = 0; k < D; k++) {
          var y0 = Math.floor(k / V.cols) * H, x0 = (k % V.cols) * W;
          for (var h = 0; h < H; h++) {
            for (var w = 0; w < W; w++) { out[(k * H + h) * W + w] = px[((y0 + h) * c.width + x0 + w) * 4]; }
          }
        }
        resolve(out);
      };
      im.onerror = reject;
      im.src = uri;
    });
  }
  function voxel(view, k, r, c) {  // the voxel shown at row r, column c of slice k of a view
    var rr = view.flip ? view.rows - 1 - r : r;
    if (view.axis === 0) { return (k * H + rr) * W + c; }
    if (view.axis === 1) { return (rr * H + k) * W + c; }
    return (rr * H + c) * W + k;
  }

  var grey = unpack(V.sprite), heats = {};
  var method = $("vol-method"), klass = $("vol-class"), opacity = $("vol-opacity");
  function currentHeat() {
    if (!V.cams || !method || !method.value) { return Promise.resolve(null); }
    var key = klass.value + ":" + method.value;
    if (!heats[key]) { heats[key] = unpack(V.cams.classes[Number(klass.value)].maps[method.value]); }
    return heats[key];
  }
  function draw(view) {
    var slider = $("vol-" + view.name + "-slider"), k = Number(slider.value);
    $("vol-" + view.name + "-out").textContent = (k + 1) + " / " + view.n;
    return Promise.all([grey, currentHeat()]).then(function (res) {
      var g = res[0], heat = res[1], a = heat ? Number(opacity.value) : 0;
      var tmp = document.createElement("canvas");
      tmp.width = view.cols; tmp.height = view.rows;
      var tctx = tmp.getContext("2d"), img = tctx.createImageData(view.cols, view.rows), d = img.data;
      for (var r = 0; r < view.rows; r++) {
        for (var c = 0; c < view.cols; c++) {
          var i = voxel(view, k, r, c), o = (r * view.cols + c) * 4, v = g[i];
          if (heat) {
            var t = heat[i] * 3;
            d[o] = (1 - a) * v + a * lut[t]; d[o + 1] = (1 - a) * v + a * lut[t + 1]; d[o + 2] = (1 - a) * v + a * lut[t + 2];
          } else { d[o] = d[o + 1] = d[o + 2] = v; }
          d[o + 3] = 255;
        }
      }
      tctx.putImageData(img, 0, 0);
      var canvas = $("vol-" + view.name), ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(tmp, 0, 0, view.width, view.height);
      scaleBar(ctx, view.bar);
      var what = heat ? ", " + method.value + " for " + V.cams.classes[Number(klass.value)].name + " over it" : "";
      canvas.setAttribute("aria-label", view.name.charAt(0).toUpperCase() + view.name.slice(1) + " slice " + (k + 1) +
        " of " + view.n + " of the input" + what);
      canvas.setAttribute("data-slice", String(k));
    });
  }
  function drawAll() { return Promise.all(V.views.map(draw)); }
  V.views.forEach(function (view) {
    $("vol-" + view.name + "-slider").addEventListener("input", function () { draw(view); });
  });
  [method, klass, opacity].forEach(function (e) { if (e) { e.addEventListener("input", drawAll); } });
  drawAll().then(function () { $("volume").setAttribute("data-drawn", "true"); });
})();
