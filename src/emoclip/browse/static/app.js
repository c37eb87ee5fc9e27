// emoclip browse: the grid, filters, search, charts and export over /api (nothing loaded from elsewhere).
"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 48;
const state = { offset: 0, like: null, likeName: "", key: sessionStorage.getItem("emoclip-key") || "", info: null };
let generation = 0;   // answers to superseded requests are dropped

function headers() { return state.key ? { "X-API-Key": state.key } : {}; }

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 401) {
    $("key-box").hidden = false;
    throw new Error("this page needs the API key the service was started with; type it above");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("is-error", !!error);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(p) { return p === null || p === undefined ? "–" : (100 * p).toFixed(1) + "%"; }

function params(extra) {
  const q = new URLSearchParams();
  const text = $("text").value.trim();
  if (state.like !== null) q.set("like_id", state.like); else if (text) q.set("text", text);
  if ($("label").value) q.set("label", $("label").value);
  if ($("polarity").value) q.set("level.polarity", $("polarity").value);
  if ($("min-prob").value !== "") q.set("min_probability", $("min-prob").value);
  if ($("max-prob").value !== "") q.set("max_probability", $("max-prob").value);
  if ($("uncertain").checked) q.set("uncertain", "0.1");
  if ($("errors-only").checked) q.set("errors_only", "1");
  if ($("sort").value) q.set("sort", $("sort").value);
  if ($("ascending").checked) q.set("ascending", "1");
  q.set("top", "200");
  for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
  return q;
}

async function loadInfo() {
  const info = await (await api("/api/info")).json();
  state.info = info;
  $("info").textContent = `${info.folder}: ${info.rows.toLocaleString()} rows, ${info.shards}/${info.total_shards} shards` +
    (info.complete ? "" : " (still being tagged)") + (info.searchable ? "" : " · no saved features: search disabled");
  if ($("label").options.length === 1) {
    for (const c of info.classes) { $("label").append(new Option(c, c)); $("sort").append(new Option("most " + c, c)); }
    for (const v of (info.levels.polarity || [])) $("polarity").append(new Option(v, v));
  }
  $("text").disabled = $("search-btn").disabled = !info.searchable;
  $("compute-features").hidden = info.searchable;
  if (info.problems.length) status(info.problems.join("; "), true);
}

function chart(node, counts, onPick, active) {
  node.replaceChildren();
  const max = Math.max(1, ...Object.values(counts));
  for (const [name, count] of Object.entries(counts)) {
    const row = el("div", "bar-row" + (name === active ? " is-active" : ""));
    row.dataset.label = name; row.dataset.count = count;
    const track = el("div"); const fill = el("div", "fill"); fill.style.width = (100 * count / max) + "%";
    track.append(fill);
    row.append(el("span", "name", name), track, el("span", "n", String(count)));
    row.addEventListener("click", () => onPick(name));
    node.append(row);
  }
}

async function loadStats(gen) {
  const stats = await (await api("/api/stats?" + params())).json();
  if (gen !== generation) return;
  chart($("chart-labels"), stats.labels, (name) => { $("label").value = $("label").value === name ? "" : name; refresh(); }, $("label").value);
  chart($("chart-polarity"), stats.levels.polarity || {}, (name) => { $("polarity").value = $("polarity").value === name ? "" : name; refresh(); }, $("polarity").value);
  const hist = $("chart-hist"); hist.replaceChildren();
  const counts = stats.histograms.probability; const max = Math.max(1, ...counts);
  counts.forEach((n, i) => {
    const col = el("div", "col"); col.style.height = (100 * n / max) + "%";
    col.title = `${stats.edges[i]}–${stats.edges[i + 1]}: ${n}`; col.dataset.count = n;
    col.addEventListener("click", () => { $("min-prob").value = stats.edges[i]; $("max-prob").value = stats.edges[i + 1]; refresh(); });
    hist.append(col);
  });
}

async function thumb(card, row) {
  try {
    const blob = await (await api(`/api/thumb/${row.id}`)).blob();
    const img = el("img", "thumb"); img.alt = row.path; img.src = URL.createObjectURL(blob);
    card.prepend(img);
  } catch (e) {
    const ph = el("div", "placeholder", e.message); card.prepend(ph);
  }
}

function card(row) {
  const node = el("div", "card" + (row.error ? " is-error" : ""));
  node.dataset.id = row.id; node.dataset.label = row.label || ""; node.dataset.probability = row.probability ?? "";
  if (row.score !== undefined) node.dataset.score = row.score;
  node.append(el("div", "name", row.path.split("/").pop()));
  if (row.error) node.append(el("div", "error", row.error));
  else {
    node.append(el("span", "label", row.label), el("span", "meta", " " + pct(row.probability)));
    if (row.polarity) node.append(el("div", "meta polarity", `${row.polarity.label} ${pct(row.polarity.probability)}`));
    if (row.score !== undefined) node.append(el("div", "meta score", "similarity " + row.score.toFixed(3)));
    const like = el("button", "like", "more like this"); like.type = "button";
    like.addEventListener("click", (ev) => { ev.stopPropagation(); state.like = row.id; state.likeName = row.path.split("/").pop(); refresh(); });
    if (state.info && state.info.searchable) node.append(like);
  }
  node.addEventListener("click", () => detail(row.id));
  thumb(node, row);
  return node;
}

async function loadRows(gen) {
  const answer = await (await api("/api/rows?" + params({ offset: state.offset, limit: PAGE }))).json();
  if (gen !== generation) return;
  const grid = $("grid"); grid.replaceChildren(...answer.rows.map(card));
  const end = Math.min(answer.total, state.offset + answer.rows.length);
  $("count").textContent = `${answer.total ? state.offset + 1 : 0}–${end} of ${answer.total.toLocaleString()}` +
    (answer.search ? ` (${answer.search} search)` : "");
  $("prev").disabled = state.offset === 0; $("next").disabled = end >= answer.total;
  grid.dataset.total = answer.total; grid.dataset.ready = String(gen);
}

async function detail(id) {
  try {
    const row = await (await api(`/api/row/${id}`)).json();
    const box = $("detail"); box.replaceChildren(); box.hidden = false; box.dataset.id = id;
    box.append(el("h2", "", row.label || "not tagged"), el("div", "path", row.path));
    if (row.file !== "present") box.append(el("div", "missing", row.file));
    if (row.error) box.append(el("div", "error", row.error));
    const bars = (title, dist, cls) => {
      box.append(el("h3", "", title));
      const list = el("div", cls);
      for (const [name, p] of Object.entries(dist).sort((a, b) => (b[1] ?? -1) - (a[1] ?? -1))) {
        const bar = el("div", "bar"); bar.dataset.label = name; bar.dataset.probability = p ?? "";
        const track = el("div"); const fill = el("div", "fill"); fill.style.width = (100 * (p || 0)) + "%"; track.append(fill);
        bar.append(el("span", "", name), track, el("span", "", pct(p))); list.append(bar);
      }
      box.append(list);
    };
    bars("Distribution", row.distribution, "dist");
    for (const [level, dist] of Object.entries(row.levels)) bars(level, dist, "level " + level);
    if (row.multi.length) box.append(el("div", "multi", "multi: " + row.multi.map((m) => `${m.label} ${pct(m.probability)}`).join(", ")));
  } catch (e) { status(e.message, true); }
}

function exportLinks() {
  // a download needs the key too: it goes as a header through fetch, then a blob link is clicked
  for (const fmt of ["csv", "json"]) {
    $("export-" + fmt).onclick = async (ev) => {
      ev.preventDefault();
      try {
        const blob = await (await api("/api/export?" + params({ format: fmt }))).blob();
        const a = el("a"); a.href = URL.createObjectURL(blob); a.download = "selection." + fmt; a.click();
      } catch (e) { status(e.message, true); }
    };
  }
}

async function refresh(keepOffset) {
  const gen = ++generation;
  if (!keepOffset) state.offset = 0;
  $("like-box").hidden = state.like === null; $("like-name").textContent = state.likeName;
  status("loading…");
  try {
    await loadInfo();
    await Promise.all([loadRows(gen), loadStats(gen)]);
    if (gen === generation) status("");
  } catch (e) { if (gen === generation) status(e.message, true); }
}

async function computeFeatures() {
  // a folder tagged without --save-features: the server encodes its files, the page follows
  try {
    await fetch("/api/features", { method: "POST", headers: headers() });
    for (;;) {
      const info = await (await api("/api/info")).json();
      const job = info.features_job;
      if (job.error) { status(job.error, true); return; }
      if (info.searchable) { status(""); refresh(); return; }
      status(`computing features: ${job.done} of ${job.total || "?"} images`);
      await new Promise((done) => setTimeout(done, 500));
    }
  } catch (e) { status(e.message, true); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("compute-features").addEventListener("click", computeFeatures);
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); state.like = null; refresh(); });
  for (const id of ["label", "polarity", "min-prob", "max-prob", "uncertain", "errors-only", "sort", "ascending"])
    $(id).addEventListener("change", () => refresh());
  $("clear-like").addEventListener("click", () => { state.like = null; refresh(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); refresh(true); });
  $("next").addEventListener("click", () => { state.offset += PAGE; refresh(true); });
  $("api-key").addEventListener("change", () => { state.key = $("api-key").value; sessionStorage.setItem("emoclip-key", state.key); $("key-box").hidden = true; refresh(); });
  exportLinks();
  refresh();
});
