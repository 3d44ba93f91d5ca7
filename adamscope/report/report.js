// adamscope report: the per-layer table (sort, filter, paginate, pick a checkpoint) and figure zoom.
// Data comes from the JSON block #table-data; nothing is fetched.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("table-data").textContent);
  const cols = data.columns; // [key, header, kind]
  const table = document.getElementById("layer-table");
  const state = { ck: data.default, key: null, dir: 1, text: "", stage: "", page: 0, size: 50, all: false };
  const $ = (id) => document.getElementById(id);
  const SEV = { unstable: 3, primed: 2, vanishing: 1, correlated: 0.5, healthy: 0, too_early: -0.5 };

  function fmt(v, kind) {
    if (v === null || v === undefined) return "\u2013";
    switch (kind) {
      case "sci": return v === 0 ? "0" : v.toExponential(2);
      case "pct": return (100 * v).toFixed(1) + "%";
      case "ratio": return (v >= 1000 || v < 0.01 ? v.toExponential(1) : v.toPrecision(3)) + "\u00d7";
      case "num": return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : v.toFixed(3);
      case "int": return v.toLocaleString("en-US");
      default: return String(v);
    }
  }

  function stageCell(td, stage) {
    const name = stage || "not judged";
    td.className = "stage-cell";
    td.dataset.stage = name;
    const wrap = document.createElement("span");
    wrap.className = "stage";
    if (stage) {
      const ns = "http://www.w3.org/2000/svg";
      const svg = document.createElementNS(ns, "svg");
      svg.setAttribute("width", "16"); svg.setAttribute("height", "11"); svg.setAttribute("aria-hidden", "true");
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("width", "16"); r.setAttribute("height", "11"); r.setAttribute("class", "s-" + stage);
      svg.appendChild(r); wrap.appendChild(svg);
    }
    wrap.appendChild(document.createTextNode(name));
    td.appendChild(wrap);
  }

  function sortValue(v, kind) {
    if (kind === "stage") return v in SEV ? SEV[v] : -1;
    return v;
  }

  function rows() {
    const ck = data.checkpoints[state.ck];
    const text = state.text.toLowerCase();
    let out = ck.rows.filter((r) =>
      (!text || String(r[0]).toLowerCase().includes(text)) &&
      (!state.stage || (r[2] || "not judged") === state.stage));
    if (state.key !== null) {
      const i = state.key, kind = cols[i][2], dir = state.dir;
      out = out.slice().sort((a, b) => {
        const x = sortValue(a[i], kind), y = sortValue(b[i], kind);
        if (x === null || x === undefined) return (y === null || y === undefined) ? 0 : 1; // nulls last
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
    }
    return out;
  }

  function render() {
    const all = rows();
    const pages = Math.max(1, Math.ceil(all.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    const shown = state.all ? all : all.slice(state.page * state.size, (state.page + 1) * state.size);
    const body = document.createElement("tbody");
    for (const r of shown) {
      const tr = document.createElement("tr");
      cols.forEach((c, i) => {
        const td = document.createElement("td");
        if (c[2] === "stage") stageCell(td, r[i]);
        else { td.textContent = fmt(r[i], c[2]); if (c[2] !== "text") td.className = "n"; }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    table.replaceChild(body, table.tBodies[0]);
    const first = all.length ? state.page * state.size + 1 : 0;
    $("page-info").textContent = state.all ? `${all.length} rows` :
      `${first}\u2013${first + shown.length - 1 + (shown.length ? 0 : 1)} of ${all.length}`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function header() {
    const tr = table.tHead.rows[0];
    cols.forEach((c, i) => {
      const th = document.createElement("th");
      th.scope = "col";
      if (c[2] !== "text" && c[2] !== "stage") th.className = "n";
      th.setAttribute("aria-sort", "none");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = c[1];
      b.title = "sort by " + c[1];
      b.addEventListener("click", () => {
        state.dir = state.key === i ? -state.dir : (c[2] === "text" || c[2] === "int" ? 1 : -1);
        state.key = i;
        for (const other of tr.cells) other.setAttribute("aria-sort", "none");
        th.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
        render();
      });
      th.appendChild(b);
      tr.appendChild(th);
    });
  }

  function controls() {
    const sel = $("ck-select");
    data.checkpoints.forEach((ck, i) => {
      const o = document.createElement("option");
      o.value = String(i); o.textContent = ck.label;
      if (i === state.ck) o.selected = true;
      sel.appendChild(o);
    });
    sel.addEventListener("change", () => { state.ck = Number(sel.value); state.page = 0; render(); });
    $("filter").addEventListener("input", (e) => { state.text = e.target.value; state.page = 0; render(); });
    $("stage-filter").addEventListener("change", (e) => { state.stage = e.target.value; state.page = 0; render(); });
    $("prev").addEventListener("click", () => { state.page -= 1; render(); });
    $("next").addEventListener("click", () => { state.page += 1; render(); });
  }

  function zoom() {
    const dlg = $("zoom");
    document.querySelectorAll("figure img").forEach((img) => {
      img.tabIndex = 0;
      const open = () => {
        $("zoom-img").src = img.src; $("zoom-img").alt = img.alt;
        $("zoom-cap").textContent = img.alt; dlg.showModal();
      };
      img.addEventListener("click", open);
      img.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    });
    dlg.addEventListener("click", () => dlg.close());
  }

  // Print everything: all table rows of the current filter, every <details> open.
  window.addEventListener("beforeprint", () => {
    state.all = true; render();
    document.querySelectorAll("details").forEach((d) => { d.dataset.wasOpen = d.open; d.open = true; });
  });
  window.addEventListener("afterprint", () => {
    state.all = false; render();
    document.querySelectorAll("details").forEach((d) => { d.open = d.dataset.wasOpen === "true"; });
  });

  header();
  controls();
  render();
  zoom();
})();
