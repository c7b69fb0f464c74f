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

  // the slice viewer of a volume: volume.js (it draws its bars with window.featuremapsScaleBar)
})();
