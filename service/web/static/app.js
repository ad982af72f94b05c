// The operator's page: a client of the service's own JSON API (no framework, no build step).
// Inspect: pick a category, drop photos; each result is re-decided in the browser when the
// threshold slider moves (the anomaly map PNG and the category's floors give the raw map).
// History and detail read the inspection records. With an API key configured on the service,
// the page asks for it once per browser session (sessionStorage) and sends it as X-API-Key.
"use strict";

const KEY_STORE = "rpepad.apiKey";
const TIMEOUT_MS = 120000;
const PAGE_SIZE = 50;
const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  categories: new Map(),  // name -> GET /categories entry
  cards: [],              // inspected images on this page: {el, category, result, map, query}
  queue: Promise.resolve(),
  versions: new Set(),    // the bundle versions (manifest sha256) GET /categories has shown
  ready: null,            // the last /readyz answer (its records note stays on the status line)
  pages: [null],          // the history's page cursors (before=), newest page first: the last is shown
  record: null,
};

// ------------------------------------------------------------------ the API
let keyPrompt = null;

function askKey(message) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("#key-dialog");
  $("#key-error").textContent = message || "";
  $("#key-input").value = "";
  keyPrompt = new Promise((resolve, reject) => {
    const done = (ok) => {
      dialog.removeEventListener("close", onClose);
      $("#key-cancel").removeEventListener("click", onCancel);
      keyPrompt = null;
      ok ? resolve() : reject(new Error("an API key is needed (none given)"));
    };
    const onClose = () => {
      const key = $("#key-input").value.trim();
      if (dialog.returnValue === "ok" && key) { sessionStorage.setItem(KEY_STORE, key); done(true); } else done(false);
    };
    const onCancel = () => { dialog.returnValue = "cancel"; dialog.close(); };
    dialog.addEventListener("close", onClose);
    $("#key-cancel").addEventListener("click", onCancel);
    dialog.returnValue = "";
    dialog.showModal();
    $("#key-input").focus();
  });
  return keyPrompt;
}

async function problemText(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      const body = await response.json();
      if (body && typeof body.detail === "string") return body.detail;
    } catch (err) { /* fall through */ }
  }
  return `the service answered ${response.status} ${response.statusText}`;
}

async function api(path, options = {}, attempt = 0) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.set("X-API-Key", key);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), options.timeoutMs || TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { ...options, headers, signal: controller.signal });
  } catch (err) {
    throw new Error(err.name === "AbortError" ? `no answer from the service in ${(options.timeoutMs || TIMEOUT_MS) / 1000} s`
                                              : `the service cannot be reached (${err.message})`);
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 401 && attempt < 2) {
    if (key) sessionStorage.removeItem(KEY_STORE);
    await askKey(key ? "That key was refused; try again." : "");
    return api(path, options, attempt + 1);
  }
  if (!response.ok) throw new Error(await problemText(response));
  return response;
}

const getJson = async (path) => (await api(path)).json();

async function loadImage(img, path) {
  const blob = await (await api(path)).blob();
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(blob);
  img.src = img.dataset.url;
}

// --------------------------------------------------------------- readiness
function setStatus(text, isError = false) {
  const el = $("#service-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function waitReady() {
  for (;;) {
    try {
      const key = sessionStorage.getItem(KEY_STORE);  // with it, /readyz gives its reasons
      const response = await fetch("/readyz", { headers: key ? { "X-API-Key": key } : {} });
      const body = await response.json();
      if (response.ok) return body;
      setStatus(`The service is not ready yet: ${body.detail || "loading"}. Retrying…`);
    } catch (err) {
      setStatus(`The service cannot be reached (${err.message}). Retrying…`, true);
    }
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

async function loadCategories(ready = null) {
  const body = await getJson("/categories");
  const select = $("#category");
  const filter = $("#f-category");
  const chosen = select.value, filtered = filter.value;  // kept across a reload (a new bundle version)
  const before = state.categories.get(chosen);
  state.categories = new Map(body.categories.map((c) => [c.category, c]));
  for (const c of body.categories) state.versions.add(c.bundle_sha256);
  if (ready) state.ready = ready;
  select.replaceChildren();
  filter.replaceChildren(new Option("all", ""));
  for (const name of state.categories.keys()) {
    select.append(new Option(name, name));
    filter.append(new Option(name, name));
  }
  if (state.categories.has(chosen)) select.value = chosen;
  if (state.categories.has(filtered)) filter.value = filtered;
  // A name also served is a newer version refused: the loaded one still answers.
  const refused = Object.keys(body.refused || {}).map((name) => state.categories.has(name) ?
      `a new version of ${name} (the loaded one still answers)` : name);
  const records = state.ready && state.ready.records;  // unavailable, or behind: inspections answered, records may wait
  setStatus(`${state.categories.size} categor${state.categories.size === 1 ? "y" : "ies"} loaded` +
            (refused.length ? `; refused: ${refused.join(", ")} (see GET /categories)` : "") +
            (records ? `. Inspection records: ${records}` : ""), Boolean(records));
  const after = currentCategory();  // the slider moves back to the default only for a new version
  if (!before || !after || before.bundle_sha256 !== after.bundle_sha256) setupSlider();
  else for (const card of state.cards) if (card.result) redraw(card);
}

// ------------------------------------------------------------- the slider
function currentCategory() { return state.categories.get($("#category").value); }

function setupSlider() {
  const info = currentCategory();
  const slider = $("#threshold");
  if (!info) { slider.disabled = true; return; }
  const t = info.threshold, floor = info.map_floor;
  slider.disabled = false;
  const max = 2 * t - floor;  // the highest raw value the map PNG can show
  const step = (max - floor) / 500;
  // The default lies on the grid; the lowest value stays above the lowest normal score
  // (score_floor), which the service refuses as a threshold.
  const lowest = Math.max(floor + 0.05 * (t - floor), (info.score_floor || 0) + step / 2);
  slider.min = String(t - Math.floor((t - lowest) / step) * step);
  slider.max = String(max);
  slider.step = String(step);
  slider.value = String(t);
  $("#threshold-default").textContent = `default ${t.toFixed(2)} (calibrated)`;
  showThreshold();
}

function sliderThreshold(category) {
  const info = state.categories.get(category);
  if (!info) return null;
  return category === $("#category").value ? Number($("#threshold").value) : info.threshold;
}

// The threshold a new inspection is decided (and recorded) at: the slider's when it was moved
// off the calibrated default, else none (the service uses the calibrated one).
function requestThreshold(category) {
  const info = state.categories.get(category), t = sliderThreshold(category);
  return info && t !== null && Math.abs(t - info.threshold) > 1e-9 * Math.max(1, info.threshold) ? t : null;
}

function showThreshold() {
  const value = Number($("#threshold").value);
  $("#threshold-value").textContent = Number.isFinite(value) ? value.toFixed(2) : "";
  for (const card of state.cards) if (card.result) redraw(card);
}

// -------------------------------------------------------------- inspecting
function addFiles(files) {
  const category = $("#category").value;
  if (!category) { setStatus("No category is loaded yet.", true); return; }
  for (const file of files) {
    const el = $("#card-template").content.firstElementChild.cloneNode(true);
    $(".card-title", el).textContent = `${file.name} · ${category}`;
    $("#results").prepend(el);
    const card = { el, category, file, result: null };
    state.cards.push(card);
    state.queue = state.queue.then(() => inspect(card));  // one at a time: the service batches for us
  }
}

async function inspect(card) {
  const started = performance.now();
  try {
    const form = new FormData();
    form.append("file", card.file, card.file.name);
    form.append("category", card.category);
    form.append("include_map", "true");
    form.append("include_reference", "true");
    const threshold = requestThreshold(card.category);  // what the operator sees is what is recorded
    if (threshold !== null) form.append("threshold", String(threshold));
    // The category in the query string too: a load balancer routes by it (it does not read the body).
    const path = `/inspect?category=${encodeURIComponent(card.category)}`;
    const result = await (await api(path, { method: "POST", body: form })).json();
    card.roundTripMs = performance.now() - started;
    // A bundle version the page has not seen answered (swapped in while it was open): the
    // categories are read again, so the slider is that version's. Once per version: during a
    // fleet's rollout answers alternate between two versions for a poll or two. The card
    // draws with the floors of the version that answered it, which come with the answer.
    if (!state.versions.has(result.bundle_sha256)) {
      await loadCategories(state.ready);
      state.versions.add(result.bundle_sha256);  // read once, even if the replica asked still serves the old one
    }
    card.map = await mapValues(result);
    const query = await queryPixels(card.file, card.map.width, card.map.height);
    card.query = query.pixels;
    card.queryShown = query.shown;
    card.answered = new Date();
    card.result = result;
    fill(card);
  } catch (err) {
    const error = $(".error", card.el);
    // The service's message often names the file already.
    error.textContent = err.message.startsWith(card.file.name) ? err.message : `${card.file.name}: ${err.message}`;
    error.hidden = false;
    $(".verdict", card.el).textContent = "error";
    card.el.classList.add("failed");
  } finally {
    card.el.setAttribute("aria-busy", "false");
    $(".progress", card.el).hidden = true;
  }
}

function decodeImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

async function mapValues(result) {
  const img = await decodeImage(`data:image/png;base64,${result.anomaly_map_png}`);
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const t = result.threshold, floor = result.map_floor;
  const raw = new Float32Array(canvas.width * canvas.height);
  for (let i = 0; i < raw.length; i++) raw[i] = t + (pixels[4 * i] / 255 - 0.5) * 2 * (t - floor);
  return { width: canvas.width, height: canvas.height, raw };
}

async function queryPixels(file, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  try {
    const url = URL.createObjectURL(file);
    try { ctx.drawImage(await decodeImage(url), 0, 0, width, height); } finally { URL.revokeObjectURL(url); }
  } catch (err) {
    ctx.fillStyle = "#777";  // e.g. TIFF: the service reads it, this browser cannot show it
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#fff";
    ctx.font = `${Math.max(9, Math.round(width / 14))}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.fillText("this browser cannot", width / 2, height / 2 - width / 28);
    ctx.fillText("show this file type", width / 2, height / 2 + width / 14);
    return { pixels: ctx.getImageData(0, 0, width, height), shown: false };
  }
  return { pixels: ctx.getImageData(0, 0, width, height), shown: true };
}

function verdictAt(result, threshold) {
  if (result.verification && result.verification.verified === false) return "review";
  return result.score > threshold ? "anomalous" : "normal";
}

function normalised(value, threshold, floor) {
  return Math.min(1, Math.max(0, 0.5 + (value - threshold) / (2 * (threshold - floor))));
}

function heat(v) {  // blue -> cyan -> yellow -> red
  const r = Math.min(1, Math.max(0, 2 * v - 0.5)), g = Math.min(1, Math.max(0, v < 0.75 ? 2 * v : 4 - 4 * v));
  const b = Math.min(1, Math.max(0, 1 - 2 * v));
  return [255 * r, 255 * g, 255 * b];
}

function fill(card) {
  const { el, result } = card;
  $(".body", el).hidden = false;
  el.dataset.score = String(result.score);
  const reference = $(".reference", el);
  reference.src = `data:image/png;base64,${result.reference_png}`;
  const match = (result.gallery_matches || [])[0];
  const gallery = $(".gallery", el);
  if (match) {
    $(".gallery-caption", el).textContent = `matched gallery view ${match.name} (similarity ${match.similarity.toFixed(2)})`;
    loadImage(gallery, `/categories/${encodeURIComponent(result.category)}/gallery/${match.id}.png` +
                       `?v=${result.bundle_sha256.slice(0, 12)}`)  // that version's view, or none
      .catch(() => { gallery.alt = "matched gallery view (not available)"; });
  } else {
    gallery.closest("figure").hidden = true;
  }
  const canvas = $(".query", el);
  canvas.width = card.map.width;
  canvas.height = card.map.height;
  canvas.getContext("2d").putImageData(card.query, 0, 0);
  if (!card.queryShown) {
    $(".query", el).nextElementSibling.textContent = "query (inspected by the service; this browser cannot show it: " +
        "the overlay below is drawn on grey)";
  }
  const total = result.timings_ms && result.timings_ms.total;
  const meta = $(".meta", el);
  meta.replaceChildren();
  meta.append(`answered ${card.answered.toLocaleTimeString()} · pipeline ${total ? total.toFixed(0) : "?"} ms, ` +
              `round trip ${card.roundTripMs.toFixed(0)} ms`);
  if (result.record_id) {
    const link = document.createElement("a");
    link.href = `#/inspections/${result.record_id}`;
    link.textContent = `record ${result.record_id.slice(0, 8)} and feedback`;
    meta.append(" · ", link);
  } else {
    meta.append(" · not recorded (inspection records are off on this service, or unavailable)");
  }
  if (result.verification && result.verification.verified === false) {
    meta.append(` · pose check failed: ${result.verification.reason || "the reference does not fit the photo"}`);
  }
  redraw(card);
}

function redraw(card) {
  const { el, result, map, query } = card;
  // The slider is the bundle version served now: a card answered by an earlier one keeps its own threshold.
  const live = state.categories.get(result.category);
  const t = (live && live.bundle_sha256 === result.bundle_sha256 ? sliderThreshold(result.category) : null) ??
      result.threshold;
  const verdict = verdictAt(result, t);
  const badge = $(".verdict", el);
  badge.textContent = verdict;
  badge.className = `verdict ${verdict}`;
  el.dataset.verdict = verdict;
  const norm = normalised(result.score, t, result.score_floor);
  let text = `score ${result.score.toFixed(2)} against threshold ${t.toFixed(2)} ` +
      `(normalised ${norm.toFixed(2)}; 0.5 is the threshold)`;
  if (result.record_id && Math.abs(t - result.threshold) > 1e-9 * Math.max(1, result.threshold)) {
    // The slider moved since: say what the record holds, so the page and the audit trail agree.
    text += `. Recorded: ${result.verdict} at threshold ${result.threshold.toFixed(2)}`;
  }
  $(".score", el).textContent = text;
  const canvas = $(".overlay", el);
  canvas.width = map.width;
  canvas.height = map.height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(map.width, map.height);
  const w = map.width, h = map.height, raw = map.raw, q = query.data, o = out.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, v = normalised(raw[i], t, result.map_floor), a = 0.6 * v;
      const [r, g, b] = heat(v);
      const inside = raw[i] > t;
      const edge = inside && (x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
                              raw[i - 1] <= t || raw[i + 1] <= t || raw[i - w] <= t || raw[i + w] <= t);
      // The contour is white, or black where the photo is bright (a white line vanishes on a white background).
      const line = q[4 * i] + q[4 * i + 1] + q[4 * i + 2] > 3 * 200 ? 0 : 255;
      o[4 * i] = edge ? line : q[4 * i] * (1 - a) + r * a;
      o[4 * i + 1] = edge ? line : q[4 * i + 1] * (1 - a) + g * a;
      o[4 * i + 2] = edge ? line : q[4 * i + 2] * (1 - a) + b * a;
      o[4 * i + 3] = 255;
    }
  }
  ctx.putImageData(out, 0, 0);
}

// ----------------------------------------------------------------- history
function filterParams() {
  const params = new URLSearchParams();
  for (const name of ["category", "verdict", "feedback"]) {
    const value = $(`#f-${name}`).value;
    if (value) params.set(name, value);
  }
  const since = $("#f-since").value, until = $("#f-until").value;
  if (since) params.set("since", `${since}T00:00:00Z`);
  if (until) {
    const next = new Date(`${until}T00:00:00Z`);
    next.setUTCDate(next.getUTCDate() + 1);
    if (Number.isNaN(next.getTime()) || next.getUTCFullYear() > 9999) throw new Error(`"until" ${until} is not a date the records can hold`);
    params.set("until", next.toISOString());
  }
  return params;
}

async function loadHistory() {
  const summary = $("#history-summary");
  summary.textContent = "Loading…";
  const body = $("#history-table tbody");
  try {
    const params = filterParams();
    params.set("limit", String(PAGE_SIZE));
    const before = state.pages[state.pages.length - 1];  // by cursor: new records neither repeat nor skip a row
    if (before) params.set("before", before);
    const page = await getJson(`/inspections?${params}`);
    body.replaceChildren(...page.items.map(historyRow));
    const first = (state.pages.length - 1) * PAGE_SIZE + 1, last = first + page.items.length - 1;
    summary.textContent = page.total ? `${page.total} inspections match.` : "No inspection matches.";
    $("#page-info").textContent = page.items.length ? `${first}–${last} of ${page.total}` : "";
    $("#page-prev").disabled = state.pages.length === 1;
    $("#page-next").disabled = !page.next_before;
    state.next = page.next_before;
  } catch (err) {
    body.replaceChildren();
    summary.textContent = `History is not available: ${err.message}`;
    state.pages = [null];  // e.g. the page's first record deleted by retention: the next load starts anew
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function historyRow(r) {
  const tr = document.createElement("tr");
  const verdict = cell(r.verdict);
  verdict.className = `verdict ${r.verdict}`;
  const link = document.createElement("a");
  link.href = `#/inspections/${r.id}`;
  link.textContent = "Open";
  link.setAttribute("aria-label", `Open inspection of ${r.filename || r.id} at ${r.created}`);
  const open = document.createElement("td");
  open.append(link);
  const file = cell(r.filename || "");
  file.className = "file";  // the one column that wraps: a long name must not squeeze the others
  tr.append(cell(r.created.replace("T", " ").slice(0, 19)), cell(r.category), file, verdict,
            cell(`${r.score.toFixed(2)} / ${r.threshold.toFixed(2)}`), cell((r.feedback || "").replace("_", " ")), open);
  return tr;
}

async function exportCsv() {
  const button = $("#export-csv"), summary = $("#history-summary");
  const before = summary.textContent;
  button.disabled = true;
  summary.textContent = "Exporting the matching records…";  // many thousands take seconds
  try {
    const blob = await (await api(`/inspections.csv?${filterParams()}`)).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "inspections.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    summary.textContent = before;
  } catch (err) {
    summary.textContent = `Export failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ detail
// What a record's seal says (docs/SERVICE.md, "Records that show tampering").
const SEAL_WORDS = {
  valid: (s) => "sealed, as written" + (s.chain_id == null ? "" :  // a line of an older journal has no chain
    ` (record ${s.chain_seq} of chain ${s.chain_id.slice(0, 8)}…)`),
  invalid: (s) => `CHANGED since the service wrote it: ${s.reason}`,
  unsealed: () => "not sealed: written without a records key (RPEPAD_RECORDS_KEY_FILE)",
  unknown_key: (s) => `sealed under another key (${s.key}): check it with rpe-pad records verify`,
  unchecked: () => "sealed; the service has no records key to check it with",
};

function definition(list, term, value) {
  const dt = document.createElement("dt"), dd = document.createElement("dd");
  dt.textContent = term;
  dd.textContent = value;
  list.append(dt, dd);
}

async function loadDetail(id) {
  const body = $("#detail-body");
  body.replaceChildren();
  $("#feedback-status").textContent = "";
  $("#feedback-form").hidden = true;
  try {
    const r = await getJson(`/inspections/${encodeURIComponent(id)}`);
    state.record = r;
    $("#detail-title").textContent = `Inspection of ${r.filename || r.id}: ${r.verdict}`;
    const list = document.createElement("dl");
    definition(list, "Time (UTC)", r.created.replace("T", " ").slice(0, 19));
    definition(list, "Category", r.category);
    definition(list, "Verdict", r.verdict);
    const check = r.result.verification;
    const unverified = check && check.verified === false;
    definition(list, "Score / threshold", `${r.score.toFixed(2)} / ${r.threshold.toFixed(2)} (normalised ${r.normalised_score.toFixed(2)})` +
               (unverified ? "; not to be trusted: the rendered reference does not fit the photo" : ""));
    if (r.result.threshold_source) {  // records from before session 50 do not say
      definition(list, "Threshold", r.result.threshold_source === "override"
        ? `set by the request (the bundle's is ${r.result.calibrated_threshold.toFixed(2)})` : "the bundle's calibrated one");
    }
    if (check) {
      const figures = [check.misalignment_px == null ? null : `misalignment ${check.misalignment_px.toFixed(1)} px at 224`,
                       `silhouette overlap ${check.silhouette_iou.toFixed(2)}`].filter(Boolean).join(", ");
      definition(list, "Pose check", `${unverified ? `failed: ${check.reason || "the reference does not fit the photo"}`
                                                   : "passed"} (${figures})`);
    }
    const match = (r.result.gallery_matches || [])[0];
    if (match) definition(list, "Matched gallery view", `${match.name} (similarity ${match.similarity.toFixed(2)})`);
    if (r.result.timings_ms) definition(list, "Pipeline time", `${r.result.timings_ms.total.toFixed(0)} ms`);
    definition(list, "Bundle", `${r.bundle_id} (manifest sha256 ${r.bundle_sha256.slice(0, 12)}…)`);
    definition(list, "Request id", r.request_id);
    if (r.seal) definition(list, "Record", SEAL_WORDS[r.seal.status](r.seal));
    body.append(list);
    if (r.seal && r.seal.status === "invalid") list.lastElementChild.className = "error";
    const images = document.createElement("div");
    images.className = "images";
    for (const [url, alt, why] of [
      [r.overlay_url, "query | rendered reference | overlay with the decision contour",
       "No overlay: this record's images were not stored (it was recovered from the journal after a restart, " +
       "written when the records queue was full, or its images failed to encode). Its result above is complete."],
      [r.query_url, "the query as uploaded",
       "No query image: the upload was not kept (RPEPAD_STORE_QUERIES off, over RPEPAD_MAX_STORED_QUERY_BYTES, " +
       "or the record was kept without its images)."]]) {
      if (!url) {
        const missing = document.createElement("p");
        missing.className = "meta missing-image";
        missing.textContent = why;
        images.append(missing);
        continue;
      }
      const figure = document.createElement("figure"), img = document.createElement("img"), caption = document.createElement("figcaption");
      img.alt = alt;
      caption.textContent = alt;
      figure.append(img, caption);
      images.append(figure);
      loadImage(img, url).catch((err) => { caption.textContent = `${alt}: ${err.message}`; });
    }
    body.append(images);
    const form = $("#feedback-form");
    form.hidden = false;
    for (const input of form.querySelectorAll("input[name=label]")) input.checked = input.value === r.feedback;
    $("#feedback-note").value = r.feedback_note || "";
    $("#feedback-by").value = sessionStorage.getItem("rpepad.operator") || "";
    if (r.feedback) {
      $("#feedback-status").textContent =
        `Feedback saved: ${r.feedback.replace("_", " ")}${r.feedback_by ? ` by ${r.feedback_by}` : ""}.`;
    }
    showFeedbackHistory(r);
  } catch (err) {
    $("#detail-title").textContent = "Inspection";
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = err.message;
    body.append(p);
  }
}

function showFeedbackHistory(r) {
  const earlier = (r.feedback_history || []).map((h) =>
    `${(h.label || "").replace("_", " ")}${h.note ? ` ("${h.note}")` : ""}${h.by ? ` by ${h.by}` : ""} at ` +
    `${(h.at || "").replace("T", " ").slice(0, 19)}`);
  $("#feedback-history").textContent = earlier.length ? `Earlier feedback, oldest first: ${earlier.join("; ")}.` : "";
}

// Who gives the feedback: the name typed on the page, kept for the tab's session.
function operatorName() {
  const name = $("#feedback-by").value.trim();
  sessionStorage.setItem("rpepad.operator", name);
  return name || null;
}

async function postFeedback(label, note) {
  const r = await (await api(`/inspections/${state.record.id}/feedback`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ label, note, by: operatorName() }),
  })).json();
  state.record = r;
  showFeedbackHistory(r);
  return r;
}

async function sendFeedback(event) {
  event.preventDefault();
  const form = event.target;
  const label = form.querySelector("input[name=label]:checked");
  const status = $("#feedback-status");
  if (!label) { status.textContent = "Choose confirmed defect or false alarm."; return; }
  const note = $("#feedback-note").value.trim();
  try {
    const r = await postFeedback(label.value, note || null);
    status.textContent = `Feedback saved: ${r.feedback.replace("_", " ")}${r.feedback_by ? ` by ${r.feedback_by}` : ""}.`;
  } catch (err) {
    status.textContent = `Feedback not saved: ${err.message}`;
  }
}

async function clearFeedback() {  // the earlier word stays in the record's history
  const status = $("#feedback-status");
  try {
    await postFeedback(null, null);
    for (const input of document.querySelectorAll("#feedback-form input[name=label]")) input.checked = false;
    $("#feedback-note").value = "";
    status.textContent = "Feedback cleared.";
  } catch (err) {
    status.textContent = `Feedback not cleared: ${err.message}`;
  }
}

// ------------------------------------------------------------------ routing
function route() {
  const hash = location.hash || "#/";
  const detail = hash.match(/^#\/inspections\/([0-9a-f]{32})$/);
  const view = detail ? "detail" : hash === "#/history" ? "history" : "inspect";
  for (const name of ["inspect", "history", "detail"]) $(`#view-${name}`).hidden = name !== view;
  $("#nav-inspect").toggleAttribute("aria-current", view === "inspect");
  $("#nav-history").toggleAttribute("aria-current", view === "history");
  if (view === "history") loadHistory();
  if (detail) loadDetail(detail[1]);
}

function init() {
  $("#category").addEventListener("change", setupSlider);
  $("#threshold").addEventListener("input", showThreshold);
  $("#threshold-reset").addEventListener("click", setupSlider);
  for (const id of ["#files", "#camera"]) {
    $(id).addEventListener("change", (event) => { addFiles([...event.target.files]); event.target.value = ""; });
  }
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });
  $("#history-filters").addEventListener("submit", (event) => { event.preventDefault(); state.pages = [null]; loadHistory(); });
  $("#page-prev").addEventListener("click", () => { if (state.pages.length > 1) state.pages.pop(); loadHistory(); });
  $("#page-next").addEventListener("click", () => { if (state.next) state.pages.push(state.next); loadHistory(); });
  $("#export-csv").addEventListener("click", exportCsv);
  $("#feedback-form").addEventListener("submit", sendFeedback);
  $("#feedback-clear").addEventListener("click", clearFeedback);
  $("#key-button").addEventListener("click", () => askKey("").then(() => loadCategories()).catch(() => {}));
  window.addEventListener("hashchange", route);
  route();
  setStatus("Connecting to the service…");
  waitReady().then(loadCategories).catch((err) => setStatus(`Categories are not available: ${err.message}`, true));
}

document.addEventListener("DOMContentLoaded", init);
