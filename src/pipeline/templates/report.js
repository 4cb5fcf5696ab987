// The answer browser of report.html: filters, sorting and pages over the answers embedded as JSON.
// Every value from the data is inserted with textContent, never as markup. The state lives in the address's
// hash (#verdict=invalid&a=judge&b=exact_match&q=paris&sort=p&dir=desc&size=50&page=2); #id=<id> shows that one
// answer (the leaderboard links each disagreeing answer so) until a filter is changed.
(function () {
  "use strict";
  var started = performance.now();
  var data = JSON.parse(document.getElementById("rows").textContent);
  var F = {};
  data.fields.forEach(function (name, i) { F[name] = i; });
  var C = {};
  data.criteria.forEach(function (name, i) { C[name] = data.fields.length + i; });
  var rows = data.rows;
  var haystack = null;  // lower-cased text of each answer, made on the first text search
  var $ = function (id) { return document.getElementById(id); };
  var controls = ["verdict", "a", "b", "q", "sort", "dir", "size"];
  var onlyId = null;  // #id=<id>: that answer alone

  function option(select, value, text) {
    var o = document.createElement("option");
    o.value = value; o.textContent = text; select.appendChild(o);
  }
  ["a", "b"].forEach(function (id) {
    option($(id), "", "—");
    data.criteria.forEach(function (c) { option($(id), c, data.labels[c]); });
  });

  function readHash() {
    var state = {page: 1};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      if (!part) return;
      var kv = part.split("=");
      state[decodeURIComponent(kv[0])] = decodeURIComponent((kv[1] || "").replace(/\+/g, " "));
    });
    onlyId = state.id === undefined ? null : state.id;
    controls.forEach(function (id) {
      if (state[id] === undefined) return;
      var el = $(id);
      if (el.tagName === "SELECT" && !Array.prototype.some.call(el.options, function (o) { return o.value === state[id]; })) return;
      el.value = state[id];
    });
    return Math.max(1, parseInt(state.page, 10) || 1);
  }

  function writeHash(page) {
    var parts = [];
    controls.forEach(function (id) {
      var v = $(id).value;
      if (v && !(id === "dir" && v === "asc") && !(id === "size" && v === "50")) parts.push(id + "=" + encodeURIComponent(v));
    });
    if (onlyId !== null) parts.push("id=" + encodeURIComponent(onlyId));
    if (page > 1) parts.push("page=" + page);
    history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname + location.search);
  }

  function textOf(r) {
    return [r[F.id], r[F.question], r[F.prediction], (r[F.references] || []).join(" | "), r[F.reply],
            r[F.invalid_reason] || ""].join("\n").toLowerCase();
  }

  function selected() {
    var verdict = $("verdict").value, a = $("a").value, b = $("b").value, q = $("q").value.trim().toLowerCase();
    var ia = a ? C[a] : -1, ib = b ? C[b] : -1;
    if (q && haystack === null) haystack = rows.map(textOf);
    var out = [];
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (onlyId !== null && r[F.id] !== onlyId) continue;
      if (verdict && r[F.verdict] !== verdict) continue;
      if (ia >= 0 && ib >= 0 && (r[ia] === null || r[ib] === null || r[ia] === r[ib])) continue;
      if (q && haystack[i].indexOf(q) < 0) continue;
      out.push(i);
    }
    var key = {p: F.p_correct, nll: F.sequence_nll, words: F.words}[$("sort").value];
    if (key !== undefined) {
      var sign = $("dir").value === "desc" ? -1 : 1;
      out.sort(function (x, y) {
        var u = rows[x][key], v = rows[y][key];
        if (u === null || v === null) return (u === null) - (v === null) || x - y;  // missing values last
        return sign * (u - v) || x - y;
      });
    }
    return out;
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function mark(value) { return value === 1 ? "✓" : value === 0 ? "✗" : "·"; }
  function fixed(value, digits) { return value === null ? "–" : value.toFixed(digits); }

  function header() {
    var tr = document.createElement("tr");
    ["#", "question", "references", "answer"].concat(data.criteria.map(function (c) { return data.labels[c]; }),
      ["verdict", "P(correct)", "NLL", "judge's reply"]).forEach(function (name) {
        var th = document.createElement("th"); th.textContent = name; tr.appendChild(th);
      });
    document.querySelector("#answers thead").appendChild(tr);
  }

  function answerRow(i) {
    var r = rows[i], tr = document.createElement("tr");
    tr.dataset.id = r[F.id];
    tr.className = "v-" + r[F.verdict];
    var first = cell(tr, i + 1, "num");
    first.title = r[F.id];
    cell(tr, r[F.question], "text");
    cell(tr, (r[F.references] || []).join(" | "), "text");
    cell(tr, r[F.prediction], "text answer");
    data.criteria.forEach(function (c) { cell(tr, mark(r[C[c]]), "mark m" + r[C[c]]); });
    cell(tr, r[F.verdict], "verdict");
    cell(tr, fixed(r[F.p_correct], 3), "num");
    cell(tr, fixed(r[F.sequence_nll], 2), "num");
    var td = cell(tr, "", "text reply");
    var details = document.createElement("details"), summary = document.createElement("summary");
    summary.textContent = r[F.invalid_reason] ? "invalid: " + r[F.invalid_reason] : (r[F.reply] || "").slice(0, 60);
    var pre = document.createElement("pre");
    pre.textContent = r[F.reply];
    details.appendChild(summary); details.appendChild(pre); td.appendChild(details);
    return tr;
  }

  var page = 1;
  function render() {
    var t0 = performance.now();
    var chosen = selected();
    var size = $("size").value === "all" ? chosen.length || 1 : parseInt($("size").value, 10);
    var pages = Math.max(1, Math.ceil(chosen.length / size));
    page = Math.min(page, pages);
    var from = (page - 1) * size, to = Math.min(chosen.length, from + size);
    var body = document.createElement("tbody");
    for (var k = from; k < to; k++) body.appendChild(answerRow(chosen[k]));
    var table = $("answers");
    table.replaceChild(body, table.tBodies[0]);
    $("status").textContent = chosen.length ? "showing " + (from + 1) + "–" + to + " of " + chosen.length +
      " answers" + (chosen.length < rows.length ? " (filtered from " + rows.length + ")" : "") +
      (onlyId !== null ? ": answer " + onlyId + " only (change a filter to see the others)" : "") :
      (onlyId !== null ? "no answer " + onlyId + " in this run (of " + rows.length + ")" : "no answer matches (of " + rows.length + ")");
    $("status").dataset.shown = chosen.length;
    $("pageinfo").textContent = "page " + page + " of " + pages;
    $("prev").disabled = page <= 1; $("next").disabled = page >= pages;
    writeHash(page);
    $("status").dataset.renderMs = (performance.now() - t0).toFixed(1);  // filter, sort and draw one page
  }

  header();
  page = readHash();
  $("controls").hidden = false;
  document.querySelector(".pager").hidden = false;
  controls.forEach(function (id) {
    $(id).addEventListener(id === "q" ? "input" : "change", function () { page = 1; onlyId = null; render(); });
  });
  $("controls").addEventListener("submit", function (e) { e.preventDefault(); });
  $("prev").addEventListener("click", function () { page -= 1; render(); });
  $("next").addEventListener("click", function () { page += 1; render(); });
  window.addEventListener("hashchange", function () { page = readHash(); render(); });
  render();
  // a link that carries a view of the answers (#verdict=invalid&...) opens at the answers, not at the top
  if (/(^#|&)(verdict|a|b|q|sort|dir|size|page|id)=/.test(location.hash)) {
    $("samples").scrollIntoView();
    document.body.dataset.opened = "samples";
  }
  document.body.dataset.readyMs = (performance.now() - started).toFixed(1);  // the script's own work
  document.body.dataset.interactiveMs = performance.now().toFixed(1);  // since the page was opened
})();
