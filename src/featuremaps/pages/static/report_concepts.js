// The concepts in "What drove this prediction" (report_concepts.html): each concept's importance for the class
// chosen in the section's class chooser, its heatmap over the photo, its example patches and a link to its page.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var con = data.concepts;
  var $ = function (id) { return document.getElementById(id); };
  if (!con || !$("concepts")) { return; }

  var shared = window.featuremapsReport;  // report.js's helpers (it runs first)
  var el = shared.el, loadImage = shared.loadImage, viridis = shared.luts.viridis;
  function fmt(v) { return shared.fmt(v, 3); }
  function colorize(im) {  // grayscale presence through viridis; alpha follows presence so the photo shows where it is absent
    return shared.colorize(im, viridis, function (v) { return Math.round(60 + 0.75 * v); });
  }
  var photo = $("photo");
  var photoReady = new Promise(function (resolve) {
    if (photo.complete && photo.naturalWidth) { resolve(); } else { photo.addEventListener("load", function () { resolve(); }); }
  });

  var select = $("drivers-class");
  if (!select.options.length) {  // no channel drivers: the concepts fill the class chooser
    con.classes.forEach(function (c, k) {
      var o = el("option", null, c.name + " (" + (100 * c.p).toFixed(1) + "%)");
      o.value = String(k);
      select.appendChild(o);
    });
  }
  $("concepts-meta").textContent = con.note;
  if (con.index) { $("concepts-index").href = con.index; $("concepts-index-p").hidden = false; }

  function render() {
    var cls = con.classes[Number(select.value) || 0], box = $("concepts-grid");
    box.textContent = "";
    box.setAttribute("data-class", String(cls.index));
    cls.concepts.forEach(function (entry) {
      var m = con.maps[entry.concept], fig = el("figure", "cam-card driver concept");
      fig.setAttribute("data-concept", String(entry.concept));
      var title = "concept " + entry.concept;
      if (m.png) {
        var c = el("canvas");
        c.setAttribute("role", "img");
        c.setAttribute("aria-label", "Where " + title + " is present in the input image");
        fig.appendChild(c);
        Promise.all([loadImage(m.png), photoReady]).then(function (res) {
          c.width = photo.naturalWidth; c.height = photo.naturalHeight;
          var ctx = c.getContext("2d");
          ctx.drawImage(photo, 0, 0);
          ctx.imageSmoothingEnabled = true;
          ctx.drawImage(colorize(res[0]), 0, 0, c.width, c.height);
          c.setAttribute("data-drawn", "true");
        });
      }
      fig.appendChild(el("h4", null, title));
      var sign = entry.importance > 0 ? "raised" : entry.importance < 0 ? "lowered" : "did not change";
      fig.appendChild(el("p", "same importance", sign + " the score: importance " + fmt(entry.importance) +
        " (" + (100 * Math.abs(entry.share)).toFixed(1) + "% of the concepts' total)"));
      fig.appendChild(el("p", "same", "peak presence " + fmt(m.peak) +
        (m.channels.length ? " \u00b7 mostly channels " + m.channels.join(", ") : "")));
      if (m.sheet) {
        var im = el("img", "sheet");
        im.src = m.sheet;
        im.alt = "Top dataset examples of " + title;
        fig.appendChild(im);
      }
      if (m.href) {
        var p = el("p", "same"), a = el("a", null, "Top dataset examples of " + title);
        a.href = m.href;
        p.appendChild(a);
        fig.appendChild(p);
      }
      box.appendChild(fig);
    });
  }
  select.addEventListener("change", render);
  render();
  document.documentElement.setAttribute("data-concepts-ready", "true");
})();
