// The explorer's page code (llem site): filters and draws what data.js holds. Every figure,
// interval and sentence was computed by llem in Python; nothing here computes statistics,
// and nothing is fetched from the network.
(function () {
  "use strict";
  var D = window.LLEM_SITE;
  var METRICS = ["energy", "throughput", "latency"];
  var renders = 0;

  function $(id) { return document.getElementById(id); }
  function uniq(xs) { return xs.filter(function (x, i) { return xs.indexOf(x) === i; }); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) { return "n/a"; }
    var a = Math.abs(v);
    return a !== 0 && (a < 0.01 || a >= 1e5) ? v.toExponential(2) : v.toPrecision(3);
  }
  function withCi(m) {  // [mean, low, high, n]
    if (!m || m[0] === null) { return "n/a"; }
    return m[1] === null ? fmt(m[0]) + " (n=" + m[3] + ")" : fmt(m[0]) + " [" + fmt(m[1]) + ", " + fmt(m[2]) + "]";
  }
  function ratioText(r) {  // [estimate, low, high]
    if (!r || r[0] === null) { return "n/a"; }
    return r[0].toFixed(2) + "x" + (r[1] === null ? "" : " [" + r[1].toFixed(2) + ", " + r[2].toFixed(2) + "]");
  }
  function studyName(id) {
    var s = D.studies.filter(function (x) { return x.study_id === id; })[0];
    return s ? s.study_name : id;
  }

  // GPUs before the CPU (where energy is usually measured), batch size before other settings
  function cpuLast(a, b) { return (a.indexOf("CPU:") === 0) - (b.indexOf("CPU:") === 0) || (a < b ? -1 : a > b ? 1 : 0); }
  function batchFirst(a, b) { return (b === "batch_size") - (a === "batch_size") || (a < b ? -1 : a > b ? 1 : 0); }

  function fill(select, values, labels) {
    var keep = select.value;
    select.textContent = "";
    values.forEach(function (v) {
      var o = el("option", labels ? labels[v] || v : v);
      o.value = v;
      select.appendChild(o);
    });
    if (values.indexOf(keep) >= 0) { select.value = keep; }
  }

  function selection() {
    var models = uniq(D.effects.map(function (e) { return e.model; })).sort();
    fill($("pick-model"), models);
    var m = $("pick-model").value;
    var hw = uniq(D.effects.filter(function (e) { return e.model === m; })
      .map(function (e) { return e.hardware; })).sort(cpuLast);
    fill($("pick-hardware"), hw);
    var h = $("pick-hardware").value;
    var axes = uniq(D.effects.filter(function (e) { return e.model === m && e.hardware === h; })
      .map(function (e) { return e.axis; })).sort(batchFirst);
    fill($("pick-setting"), axes, D.axes);
    var a = $("pick-setting").value;
    return D.effects.filter(function (e) { return e.model === m && e.hardware === h && e.axis === a; });
  }

  function traceOf(e, metric) {
    var ms = e.configs.map(function (k) { return D.configs[k].metrics[metric]; });
    var y = ms.map(function (m) { return m[0]; });
    return {
      type: "scatter", mode: "lines+markers", name: studyName(e.study) + (e.others ? " · " + e.others : ""),
      x: e.x.map(String), y: y,
      error_y: { type: "data", symmetric: false, visible: true,
                 array: ms.map(function (m) { return m[2] === null || m[0] === null ? 0 : m[2] - m[0]; }),
                 arrayminus: ms.map(function (m) { return m[1] === null || m[0] === null ? 0 : m[0] - m[1]; }) },
      hovertemplate: "%{x}: %{y:.4g}<extra>%{fullData.name}</extra>"
    };
  }

  function draw(sel) {
    var axis = sel.length ? D.axes[sel[0].axis] : "";
    var jobs = METRICS.map(function (metric) {
      var info = D.metrics[metric];
      var traces = sel.map(function (e) { return traceOf(e, metric); })
        .filter(function (t) { return t.y.some(function (v) { return v !== null; }); });
      var div = $("chart-" + metric);
      div.hidden = traces.length === 0;
      var layout = {
        title: { text: info.title + " (" + info.unit + "), 95% CI", font: { size: 14 } },
        xaxis: { title: { text: axis }, type: "category" }, yaxis: { title: { text: info.unit }, rangemode: "tozero" },
        margin: { l: 60, r: 10, t: 40, b: 60 }, legend: { orientation: "h", y: -0.3 }, height: 360
      };
      return Plotly.react(div, traces, layout, { displayModeBar: false, responsive: true });
    });
    var energyMissing = sel.length > 0 && $("chart-energy").hidden;
    var note = $("energy-note");
    note.hidden = !energyMissing;
    if (energyMissing) {
      var c = D.configs[sel[0].configs[0]];
      note.textContent = "Energy was not measured on " + c.hardware + (c.energy_unavailable_reason ?
        " (" + c.energy_unavailable_reason + ")" : "") + ": throughput and latency stand in.";
    }
    return Promise.all(jobs);
  }

  function headlines(sel) {
    var ul = $("headlines");
    ul.textContent = "";
    sel.forEach(function (e) { e.headlines.forEach(function (h) { ul.appendChild(el("li", h)); }); });
  }

  function provenance(key, e) {
    var c = D.configs[key];
    var s = D.studies.filter(function (x) { return x.study_id === c.study; })[0] || {};
    var env = (s.environments || []).filter(function (x) { return x.environment_id === c.environment; })[0] || {};
    var d = el("details");
    d.appendChild(el("summary", c.flags.length ? c.flags.length + " flag(s), provenance" : "no flags; provenance"));
    var dl = el("dl");
    function row(k, v) { if (v !== null && v !== undefined && v !== "") { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); } }
    c.flags.forEach(function (f) { row("flag", f); });
    row("study", s.study_name + " (" + c.study + ")");
    row("status", s.partial ? "partial" : s.status);
    row("runs", c.runs[0] + " finished of " + c.runs[1] + (c.runs[2] ? ", " + c.runs[2] + " failed" : ""));
    row("baseline", D.configs[e.base].label);
    row("energy source", c.energy_source || c.energy_unavailable_reason);
    row("hardware", c.hardware);
    row("GPU driver", env.gpu_driver);
    row("CPU", env.cpu_model);
    row("torch", env.torch_version);
    row("image", env.image_ref);
    row("llem", s.tool_version + (s.tool_commit ? " at " + s.tool_commit : ""));
    row("publication lock sha256", s.lock_sha256);
    row("its settings", JSON.stringify(c.settings));
    row("the study's other settings", JSON.stringify(s.settings));
    d.appendChild(dl);
    return d;
  }

  function details(sel) {
    var body = $("configs").tBodies[0];
    body.textContent = "";
    sel.forEach(function (e) {
      e.configs.forEach(function (key) {
        var c = D.configs[key];
        var tr = el("tr");
        tr.appendChild(el("td", c.label + (key === e.base ? " (baseline)" : "")));
        tr.appendChild(el("td", studyName(c.study)));
        METRICS.forEach(function (m) { tr.appendChild(el("td", withCi(c.metrics[m]), "num")); });
        tr.appendChild(el("td", ratioText(e.ratios[key].energy), "num"));
        tr.appendChild(el("td", ratioText(e.ratios[key].throughput), "num"));
        var td = el("td", null, c.flags.length ? "flag" : "");
        td.appendChild(provenance(key, e));
        tr.appendChild(td);
        body.appendChild(tr);
      });
    });
  }

  function refresh() {
    var sel = selection();
    $("empty-note").hidden = D.effects.length > 0;
    headlines(sel);
    details(sel);
    return draw(sel).then(function () { document.body.dataset.renders = String(++renders); });
  }

  ["pick-model", "pick-hardware", "pick-setting"].forEach(function (id) {
    $(id).addEventListener("change", refresh);
  });
  refresh();
})();
