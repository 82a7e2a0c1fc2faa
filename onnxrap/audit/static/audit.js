// The gallery of an onnxrap audit: filters, sorting and pages over window.AUDIT_RECORDS (data.js).
"use strict";
(function () {
  const S = window.AUDIT_SUMMARY, R = window.AUDIT_RECORDS;
  const PAGE = 48;
  const $ = (id) => document.getElementById(id);
  const name = (c) => (c === null || c === undefined) ? "?" : (S.classNames[String(c)] || String(c));
  const pct = (v) => (100 * v).toFixed(1) + "%";
  let page = 0;

  function off(r, m) { const v = r.methods[m].off_object; return v === null ? -1 : v; }

  function worstKey(r, m) {  // as report.worst_key: confident mistakes, then evidence most off the object
    return r.correct === false ? [1, r.confidence] : [0, off(r, m)];
  }

  function card(r) {
    const el = document.createElement("figure");
    el.className = "item " + (r.correct === false ? "wrong" : r.correct === true ? "right" : "unknown");
    el.dataset.index = r.index; el.dataset.label = r.label === null ? "" : r.label;
    el.dataset.pred = r.predicted; el.dataset.correct = r.correct; el.dataset.confidence = r.confidence;
    const pics = document.createElement("div"); pics.className = "pics";
    if (r.thumbs.input) pics.appendChild(img(r.thumbs.input, "input " + r.name, false));
    for (const m of S.methods) if (r.thumbs[m]) pics.appendChild(img(r.thumbs[m], m + " heatmap of " + r.name, true));
    el.appendChild(pics);
    const cap = document.createElement("figcaption");
    const verdict = r.correct === false ? "<b class='bad'>WRONG</b> " : r.correct === true ? "<b class='good'>right</b> " : "";
    const m = $("f-method").value || S.methods[0];
    const o = r.methods[m].off_object;
    el.dataset.off = o === null ? "" : o;
    cap.innerHTML = verdict + (r.label !== null ? "true <b></b> &rarr; " : "") + "predicted <b></b><br>confidence " +
      pct(r.confidence) + "<br>off the object " + (o === null ? "n/a" : o.toFixed(2)) + "<br><small></small>";
    const bold = cap.querySelectorAll("b:not(.bad):not(.good)");
    if (r.label !== null) { bold[0].textContent = name(r.label); bold[1].textContent = name(r.predicted); }
    else bold[0].textContent = name(r.predicted);
    cap.querySelector("small").textContent = "#" + r.index + " " + r.name;
    cap.title = "top classes: " + r.top.map((t) => name(t[0]) + " " + pct(t[1])).join(", ");
    el.appendChild(cap);
    return el;
  }

  function img(src, alt, band) {
    const wrap = document.createElement("span");
    wrap.className = band ? "thumb band" : "thumb";
    wrap.style.setProperty("--band", (100 * S.offBand) + "%");
    const i = document.createElement("img");
    i.src = src; i.alt = alt; i.title = alt;
    wrap.appendChild(i);
    return wrap;
  }

  function selected() {
    const label = $("f-label").value, pred = $("f-pred").value, right = $("f-right").value;
    const m = $("f-method").value || S.methods[0], sort = $("f-sort").value;
    let rows = R.filter((r) => (label === "" || String(r.label) === label) && (pred === "" || String(r.predicted) === pred) &&
      (right === "" || (right === "wrong" ? r.correct === false : r.correct === true)));
    const cmp = {
      "worst": (a, b) => { const x = worstKey(a, m), y = worstKey(b, m); return (y[0] - x[0]) || (y[1] - x[1]) || (a.index - b.index); },
      "conf-desc": (a, b) => (b.confidence - a.confidence) || (a.index - b.index),
      "conf-asc": (a, b) => (a.confidence - b.confidence) || (a.index - b.index),
      "off-desc": (a, b) => (off(b, m) - off(a, m)) || (a.index - b.index),
      "off-asc": (a, b) => (off(a, m) - off(b, m)) || (a.index - b.index),
      "index": (a, b) => a.index - b.index,
    }[sort];
    return rows.slice().sort(cmp);
  }

  function render() {
    const rows = selected();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    page = Math.min(page, pages - 1);
    const box = $("gallery-cards");
    box.textContent = "";
    for (const r of rows.slice(page * PAGE, (page + 1) * PAGE)) box.appendChild(card(r));
    $("count").textContent = rows.length + " of " + R.length + " inputs";
    $("page").textContent = "page " + (page + 1) + " of " + pages;
    $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
  }

  function options(select, values) {
    for (const v of values) {
      const o = document.createElement("option"); o.value = String(v); o.textContent = name(v); select.appendChild(o);
    }
  }

  const byIndex = new Map(R.map((r) => [r.index, r]));
  const worst = $("worst-cards");
  for (const i of S.worst) if (byIndex.has(i)) worst.appendChild(card(byIndex.get(i)));
  const labels = [...new Set(R.filter((r) => r.label !== null).map((r) => r.label))].sort((a, b) => a - b);
  options($("f-label"), labels);
  if (!S.labelled) { $("f-label").disabled = true; $("f-right").disabled = true; }
  options($("f-pred"), [...new Set(R.map((r) => r.predicted))].sort((a, b) => a - b));
  for (const m of S.methods) { const o = document.createElement("option"); o.value = m; o.textContent = m; $("f-method").appendChild(o); }
  for (const id of ["f-label", "f-pred", "f-right", "f-sort", "f-method"]) $(id).addEventListener("change", () => { page = 0; render(); });
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  render();
})();
