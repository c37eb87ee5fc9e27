// emoclip's page: pick or drop images, send each to POST /v1/predict, draw its emotions as bars.
// No framework and nothing from elsewhere: the page must work offline, served by emoclip itself.
"use strict";

const state = { files: [], info: null };
const $ = (id) => document.getElementById(id);

// Below this lead of the first label over the second, the page does not name a winner: a near-flat
// distribution is "no clear emotion", not a bold verdict (the full distribution stays one click away).
const UNCERTAIN_MARGIN = 0.05;

function margin(sortedProbabilities) {
  return sortedProbabilities.length > 1 ? sortedProbabilities[0] - sortedProbabilities[1] : 1;
}

// Files of the same name (10.jpg from three folders) get their folder where the browser tells it,
// else a number: "10 (1).jpg", "10 (2).jpg"… Every card (and the row's path) names one file.
function displayNames(files) {
  const counts = new Map();
  for (const f of files) counts.set(f.name, (counts.get(f.name) || 0) + 1);
  const used = new Set();
  const next = new Map();
  return files.map((f) => {
    let name = f.name;
    if (counts.get(f.name) > 1) {
      const relative = f.webkitRelativePath || "";
      name = relative && relative !== f.name && !used.has(relative) ? relative : "";
      if (!name) {
        const dot = f.name.lastIndexOf(".");
        const [stem, ext] = dot > 0 ? [f.name.slice(0, dot), f.name.slice(dot)] : [f.name, ""];
        let n = next.get(f.name) || 1;
        do { name = `${stem} (${n})${ext}`; n += 1; } while (used.has(name) || counts.has(name));
        next.set(f.name, n);
      }
    }
    used.add(name);
    return name;
  });
}

function percent(p) {
  return `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("is-error", isError);
}

function bar(label, probability) {
  const row = document.createElement("div");
  row.className = "bar";
  row.dataset.label = label;
  row.dataset.probability = String(probability);
  const name = document.createElement("span");
  name.className = "bar-label";
  name.textContent = label;
  const track = document.createElement("span");
  track.className = "bar-track";
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.width = `${Math.max(0.5, 100 * probability)}%`;
  track.append(fill);
  const value = document.createElement("span");
  value.className = "bar-value";
  value.textContent = percent(probability);
  row.append(name, track, value);
  return row;
}

// The coarser levels of a row (e.g. polarity) are the keys that are neither the fixed fields nor "error".
const ROW_FIELDS = new Set(["path", "label", "probability", "top_k", "distribution", "error"]);

function levelView(level, value) {
  const box = document.createElement("div");
  box.className = `level ${level}`;
  const title = document.createElement("span");
  title.className = "level-name";
  title.textContent = level;
  const split = document.createElement("div");
  split.className = "split";
  for (const [label, p] of Object.entries(value.distribution)) {
    const part = document.createElement("span");
    part.className = `split-part ${label}`;
    part.style.flexGrow = String(p);
    part.title = `${label} ${percent(p)}`;
    part.textContent = p >= 0.15 ? `${label} ${percent(p)}` : "";
    split.append(part);
  }
  const verdict = document.createElement("span");
  verdict.className = "level-label";
  const lead = margin(Object.values(value.distribution).sort((a, b) => b - a));
  box.classList.toggle("is-uncertain", lead < UNCERTAIN_MARGIN);
  verdict.textContent = lead < UNCERTAIN_MARGIN ? `unclear (${value.label} ${percent(value.probability)})`
    : `${value.label} ${percent(value.probability)}`;
  box.append(title, verdict, split);
  return box;
}

// What a card shows where the browser cannot draw the file (not an image, or a format it lacks).
const NO_PREVIEW = "data:image/svg+xml," + encodeURIComponent(
  '<svg xmlns="http://www.w3.org/2000/svg" width="110" height="110"><rect width="110" height="110" fill="#eef1f5"/>' +
  '<text x="55" y="66" font-size="36" text-anchor="middle" fill="#9aa6b5" font-family="sans-serif">?</text></svg>');

function makeCard(file, name) {
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  const thumb = card.querySelector(".thumb");
  thumb.addEventListener("error", () => { thumb.alt = "not viewable"; thumb.src = NO_PREVIEW; }, { once: true });
  thumb.src = URL.createObjectURL(file);  // the browser shows the file itself: nothing is fetched
  thumb.alt = name;
  card.querySelector(".name").textContent = name;
  card.querySelector(".name").title = name;
  card.classList.add("is-pending");
  card.querySelector(".top-label").textContent = "tagging…";
  return card;
}

function fillCard(card, row, detail) {
  card.classList.remove("is-pending");
  if (!row || row.error) {
    card.classList.add("is-error");
    card.querySelector(".top").hidden = true;
    card.querySelector(".distribution").hidden = true;
    const error = card.querySelector(".error");
    error.hidden = false;
    error.textContent = row && row.error ? row.error : detail || "could not be tagged";
    return;
  }
  const sorted = Object.entries(row.distribution).sort((a, b) => b[1] - a[1]);
  const lead = margin(sorted.map(([, p]) => p));
  card.dataset.label = row.label;
  card.dataset.margin = String(lead);
  if (lead < UNCERTAIN_MARGIN) {
    card.classList.add("is-uncertain");
    card.querySelector(".top-label").textContent = "No clear emotion";
    card.querySelector(".top-probability").textContent = "";
    const note = card.querySelector(".uncertain-note");
    note.hidden = false;
    note.textContent = `Closest: ${row.label} ${percent(row.probability)}, only ${percent(lead)} ahead of ` +
      `${sorted[1][0]}.`;
  } else {
    card.querySelector(".top-label").textContent = row.label;
    card.querySelector(".top-probability").textContent = percent(row.probability);
  }
  const bars = card.querySelector(".bars");
  for (const item of row.top_k) bars.append(bar(item.label, item.probability));
  const levels = card.querySelector(".levels");
  for (const [key, value] of Object.entries(row)) {
    if (!ROW_FIELDS.has(key) && value && value.distribution) levels.append(levelView(key, value));
  }
  const all = card.querySelector(".bars.all");
  for (const [label, p] of sorted) all.append(bar(label, p));
}

function choice() {
  const form = new FormData();
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (labels.length) form.append("labels", labels.join(","));
  else if ($("taxonomy").value) form.append("taxonomy", $("taxonomy").value);
  return form;
}

async function tagOne(file, name, card) {
  const form = choice();
  form.append("image", file, name);  // the row's path is the name the card shows
  try {
    const response = await fetch("/v1/predict", { method: "POST", body: form, headers: authHeaders() });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      $("api-key-row").hidden = false;
      fillCard(card, null, "this server needs an API key: enter it above, then Tag again");
      return false;
    }
    const row = body.predictions ? body.predictions[0] : null;
    fillCard(card, row, body.detail || `HTTP ${response.status}`);
    return response.ok;
  } catch (err) {
    fillCard(card, null, `no answer from the server (${err.message})`);
    return false;
  }
}

async function tagAll() {
  const results = $("results");
  results.replaceChildren();
  if (!state.files.length) return;
  setStatus(`Tagging ${state.files.length} image${state.files.length > 1 ? "s" : ""}…`);
  const names = displayNames(state.files);
  const cards = state.files.map((file, i) => {
    const card = makeCard(file, names[i]);
    results.append(card);
    return card;
  });
  // One request per image, all at once: the server batches concurrent requests together.
  const answers = await Promise.all(state.files.map((file, i) => tagOne(file, names[i], cards[i])));
  const failed = answers.filter((ok) => !ok).length;
  setStatus(failed ? `Done: ${failed} of ${answers.length} could not be tagged.` : `Done: ${answers.length} tagged.`,
    failed > 0);
  $("retag").disabled = false;
}

function useFiles(fileList) {
  const images = Array.from(fileList).filter((f) => f.type.startsWith("image/") || !f.type);
  if (!images.length) {
    setStatus("Those were not images.", true);
    return;
  }
  state.files = images;
  tagAll();
}

async function loadTaxonomies() {
  const select = $("taxonomy");
  try {
    const response = await fetch("/v1/taxonomies", { headers: authHeaders() });
    if (response.status === 401) {
      $("api-key-row").hidden = false;
      setStatus("This server needs an API key: enter it above.", true);
      return;
    }
    const info = await response.json();
    state.info = info;
    setStatus("");
    select.replaceChildren();
    const standard = document.createElement("option");
    standard.value = "";
    standard.textContent = `${info.taxonomy} (${info.classes.length} classes, the server's)`;
    select.append(standard);
    for (const tax of info.taxonomies) {
      if (tax.name === info.taxonomy) continue;
      const option = document.createElement("option");
      option.value = tax.name;
      option.textContent = `${tax.name} (${tax.classes.length} classes)`;
      option.title = tax.description || "";
      select.append(option);
    }
    $("model-info").textContent = `${info.method} · ${info.backbone.model} (${info.backbone.weights})`;
    $("weights-notice").hidden = !info.random_weights;
    if (!info.per_request_taxonomy) {
      select.disabled = true;
      $("labels").disabled = true;
      const note = $("taxonomy-note");
      note.hidden = false;
      note.textContent = `This model predicts ${info.taxonomy} only.`;
    }
  } catch (err) {
    setStatus(`Cannot reach the server (${err.message}).`, true);
  }
}

function wireDropzone() {
  const zone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("is-over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.remove("is-over"); });
  }
  zone.addEventListener("drop", (e) => useFiles(e.dataTransfer.files));
  $("file-input").addEventListener("change", (e) => useFiles(e.target.files));
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropzone();
  $("retag").addEventListener("click", tagAll);
  $("api-key").addEventListener("change", loadTaxonomies);
  $("taxonomy").addEventListener("change", () => { if (state.files.length) tagAll(); });
  $("labels").addEventListener("keydown", (e) => { if (e.key === "Enter" && state.files.length) tagAll(); });
  loadTaxonomies();
});
