// medfuse web page: a form built from GET /v1/model, sent to POST /v1/explain.
// No framework and no external resource: everything here is served by medfuse itself.
"use strict";

const state = { info: null, kinds: {} };
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem("medfuse-token") || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const r = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    body = null;
  }
  return { status: r.status, body };
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  }[c]));
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

function describeErrors(body, status) {
  if (!body) return `request failed (HTTP ${status})`;
  const d = body.detail;
  if (Array.isArray(d)) {
    return d.map((e) => {
      const loc = (e.loc || []).filter((p) => p !== "body").join(" › ");
      return (loc ? loc + ": " : "") + e.msg;
    }).join("\n");
  }
  return typeof d === "string" ? d : JSON.stringify(d);
}

// ---- the form ---------------------------------------------------------------------------------

// Each file is sent as what it is, in the payload field GET /v1/model lists for its suffix
// (m.files: {field: [".suffix", ...]}); the server reads it with the same readers as training.
const FORMAT_NAMES = {
  png: "PNG, JPEG, BMP, TIFF", dicom: "DICOM", npy: ".npy", csv: ".csv (a time column and one column per lead)",
  wfdb: "WFDB (select the .hea and its .dat together)",
};

function fieldId(modality, column) {
  return ("f-" + modality + (column === undefined ? "" : "-" + column)).replace(/[^A-Za-z0-9_-]/g, "_");
}

function suffixOf(name) {
  const i = name.lastIndexOf(".");
  return i < 0 ? "" : name.slice(i).toLowerCase();
}

// the payload field of a single file, from the model's advertised formats (wfdb is a pair)
function fieldFor(m, file) {
  const suf = suffixOf(file.name);
  for (const [field, sufs] of Object.entries(m.files || {})) {
    if (field !== "wfdb" && sufs.includes(suf)) return field;
  }
  return null;
}

function signalHint(m) {
  const c = m.shape[m.shape.length - 2];
  const t = m.shape[m.shape.length - 1];
  const leads = m.leads ? ` (${m.leads.join(", ")})` : "";
  const rate = m.rate ? ` at ${m.rate} Hz` : "";
  let s = `${c} leads${leads}${rate}; longer signals are centre-cropped, shorter ones zero-padded to ${t} samples.`;
  if (m.files && m.files.npy) {
    s += ` An .npy has no lead names or rate: its rows are taken as these leads, in this order${rate}.`;
  }
  return s;
}

function buildForm(info) {
  const root = $("fields");
  root.innerHTML = "";
  for (const [name, m] of Object.entries(info.modalities)) {
    state.kinds[name] = m.kind;
    const fs = document.createElement("fieldset");
    fs.dataset.modality = name;
    const shape = m.shape.join(" × ");
    fs.innerHTML = `<legend>${esc(name)} <span class="hint">(${esc(m.kind)}, ${esc(shape)})</span></legend>`;
    if (m.kind === "image" || m.kind === "signal") {
      const files = m.files || {};
      const accept = Object.values(files).flat().join(",");
      const formats = Object.keys(files).map((f) => FORMAT_NAMES[f] || f).join("; ");
      const multiple = files.wfdb ? " multiple" : "";
      fs.innerHTML += `<label>file (${esc(formats)})
        <input type="file" id="${fieldId(name)}" data-testid="file-${esc(name)}"
          accept="${esc(accept)}"${multiple}></label>`;
      if (m.kind === "image") {
        fs.innerHTML += `<img class="preview" id="${fieldId(name)}-preview" alt="" hidden>`;
      } else {
        fs.innerHTML += `<div class="hint">${esc(signalHint(m))}</div>`;
      }
    } else if (m.kind === "text") {
      // the text itself, sent as a JSON string (never a path: the service reads no file)
      fs.innerHTML += `<label>text <textarea id="${fieldId(name)}" data-testid="text-${esc(name)}"
        rows="4" placeholder="missing"></textarea></label>
        <div class="hint">tokenized as in training; the first ${esc(m.shape[m.shape.length - 1])} tokens are read</div>`;
    } else {
      const cats = m.categories || {};
      for (const col of m.columns || []) {
        const id = fieldId(name, col);
        if (cats[col]) {
          const opts = cats[col].map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("");
          fs.innerHTML += `<label>${esc(col)} <select id="${id}" data-testid="field-${esc(col)}">
            <option value="">(missing)</option>${opts}</select></label>`;
        } else {
          fs.innerHTML += `<label>${esc(col)} <input type="number" step="any" id="${id}"
            data-testid="field-${esc(col)}" placeholder="missing"></label>`;
        }
      }
    }
    root.appendChild(fs);
    const file = $(fieldId(name));
    if (m.kind === "image" && file) {
      file.addEventListener("change", () => {
        const img = $(fieldId(name) + "-preview");
        const f = file.files[0];
        if (f && /\.(png|jpe?g|bmp)$/i.test(f.name)) {
          img.src = URL.createObjectURL(f);
          img.hidden = false;
        } else {
          img.hidden = true;
        }
      });
    }
  }
  $("case-form").hidden = false;
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

// The data files a WFDB header names (its signal lines' first field).
function wfdbDataFiles(text) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  if (!lines.length) return [];
  const n = parseInt(lines[0].split(/\s+/)[1], 10) || 0;
  return [...new Set(lines.slice(1, 1 + n).map((l) => l.split(/\s+/)[0]))];
}

async function readWfdb(m, files) {
  if (!(m.files || {}).wfdb) throw new Error("this service cannot read WFDB records here");
  const hea = files.filter((f) => suffixOf(f.name) === ".hea");
  const dat = files.filter((f) => suffixOf(f.name) === ".dat");
  if (hea.length !== 1 || dat.length !== 1 || files.length !== 2) {
    throw new Error("a WFDB record is two files: select its .hea and its .dat together");
  }
  const header = await hea[0].text();
  const named = wfdbDataFiles(header);
  if (named.length === 1 && named[0] !== dat[0].name) {
    throw new Error(`${hea[0].name} names the data file ${named[0]}, not ${dat[0].name}`);
  }
  return {
    wfdb: {
      hea: toBase64(await hea[0].arrayBuffer()),
      dat: toBase64(await dat[0].arrayBuffer()),
    },
  };
}

async function readInstance() {
  const inst = {};
  for (const [name, m] of Object.entries(state.info.modalities)) {
    if (m.kind === "text") {
      const v = $(fieldId(name)).value;
      if (v.trim() !== "") inst[name] = v;
      continue;
    }
    if (m.kind === "tabular") {
      const row = {};
      let any = false;
      for (const col of m.columns || []) {
        const el = $(fieldId(name, col));
        const v = el.value.trim();
        if (v === "") continue;
        row[col] = el.tagName === "SELECT" ? v : Number(v);
        any = true;
      }
      if (any) inst[name] = row;
      continue;
    }
    const files = Array.from($(fieldId(name)).files);
    if (!files.length) continue;
    try {
      if (files.some((f) => [".hea", ".dat"].includes(suffixOf(f.name)))) {
        inst[name] = await readWfdb(m, files);
        continue;
      }
      if (files.length !== 1) throw new Error("select one file");
      const field = fieldFor(m, files[0]);
      if (!field) {
        const sufs = Object.values(m.files || {}).flat().join(", ");
        throw new Error(`cannot send a ${suffixOf(files[0].name) || "(no extension)"} file; use ${sufs}`);
      }
      inst[name] = { [field]: toBase64(await files[0].arrayBuffer()) };
    } catch (e) {
      throw new Error(`${name}: ${e.message}`);
    }
  }
  return inst;
}

// ---- the results ------------------------------------------------------------------------------

function fmt(x, d = 3) {
  return x === null || x === undefined ? "n/a" : Number(x).toFixed(d);
}

function signed(x, d = 3) {
  return (x > 0 ? "+" : "") + Number(x).toFixed(d);
}

function render(result) {
  const e = result.explanations[0];
  const info = state.info;
  const p = e.prediction;
  const label = Array.isArray(p.label) ? p.label.join(", ") || "(none)" : p.label;
  const positive = info.task === "binary" && label === info.labels[1];
  const probs = Object.entries(p.probabilities)
    .map(([k, v]) => `P(${esc(k)}) = ${fmt(v)}`).join(" · ");
  const thr = p.threshold === null || p.threshold === undefined
    ? "decision: the most probable class"
    : `threshold ${fmt(p.threshold)}`;
  const absentMods = p.missing.length ? `<div class="hint">absent: ${esc(p.missing.join(", "))}</div>` : "";
  const holes = (p.missing_values || []).length
    ? `<div class="hint" data-testid="missing-values">no value (missing, as in training): ${esc(p.missing_values.join(", "))}</div>`
    : "";
  const missing = absentMods + holes;
  const flags = (p.flags || []).length
    ? `<div class="flags" data-testid="flags"><b>check these inputs</b> (outside what the model saw in training):<ul>` +
      p.flags.map((f) => `<li>${esc(f)}</li>`).join("") + `</ul></div>`
    : "";
  // an INT8 package: these come from its fp32 weights (explanations need gradients), while
  // /v1/predict runs its INT8 model.onnx; near the threshold the two can decide otherwise
  const made = result.explained_model && result.explained_model.note
    ? `<div class="flags" data-testid="model-note"><b>model:</b> ${esc(result.explained_model.note)}</div>`
    : "";
  $("prediction").innerHTML =
    `<div>predicted: <span class="label ${positive ? "positive" : ""}" data-testid="label">${esc(label)}</span></div>
     <div data-testid="probability">${probs}</div>
     <div data-testid="threshold">${thr}</div>${made}${missing}${flags}`;
  $("explained-class").textContent = e.explained.label;

  const c = e.contributions;
  const cl = e.contributions_logit;
  let rows = `<thead><tr><th>modality</th><th>Shapley (probability)</th><th>(logit)</th></tr></thead><tbody>`;
  rows += `<tr><td>no modality present</td><td>${fmt(c.base)}</td><td>${fmt(cl.base)}</td></tr>`;
  for (const [m, v] of Object.entries(c.values)) {
    const cls = v > 0 ? "pos" : v < 0 ? "neg" : "";
    const absent = p.missing.includes(m) ? " (absent)" : "";
    rows += `<tr data-modality="${esc(m)}"><td>${esc(m)}${absent}</td><td class="${cls}">${signed(v)}</td>
      <td class="${cls}">${signed(cl.values[m])}</td></tr>`;
  }
  rows += `<tr><td><b>prediction</b></td><td><b>${fmt(c.full)}</b></td><td><b>${fmt(cl.full)}</b></td></tr></tbody>`;
  $("contributions").innerHTML = rows;
  const wf = $("picture-modalities");
  if (e.pictures.modalities) { wf.src = e.pictures.modalities; wf.hidden = false; } else { wf.hidden = true; }

  const maps = $("maps");
  maps.innerHTML = "";
  for (const [m, mp] of Object.entries(e.maps)) {
    const kind = state.kinds[m];
    const testid = { image: "overlay", signal: "attribution", text: "tokens" }[kind] || "features";
    const fig = document.createElement("figure");
    const how = mp.method === "grad-cam" ? `Grad-CAM at ${mp.layer}`
      : mp.method === "integrated-gradients" ? `integrated gradients (${mp.steps} steps)`
      : mp.method === "token-occlusion" ? "each token replaced by padding" : mp.method;
    const src = e.pictures[m];
    fig.innerHTML = (src ? `<img id="picture-${esc(m)}" data-testid="${testid}-${esc(m)}" alt="${esc(how)} for ${esc(m)}" src="${src}">` : "") +
      `<figcaption>${esc(m)}: ${esc(how)}, towards ${esc(e.explained.label)}</figcaption>`;
    maps.appendChild(fig);
  }
  $("results").hidden = false;
}

// ---- wiring -----------------------------------------------------------------------------------

async function loadModel() {
  const r = await api("/v1/model");
  if (r.status === 401) {
    $("token-box").hidden = false;
    $("model-summary").textContent = "a token is needed";
    return;
  }
  if (r.status !== 200) {
    showError(describeErrors(r.body, r.status));
    return;
  }
  $("token-box").hidden = true;
  state.info = r.body;
  const i = r.body;
  $("model-summary").textContent =
    `${i.name}: ${i.task} (${i.labels.join(" / ")}) from ${Object.keys(i.modalities).join(", ")}`;
  buildForm(i);
}

async function submit(ev) {
  ev.preventDefault();
  showError("");
  let inst;
  try {
    inst = await readInstance();
  } catch (e) {
    showError(e.message);
    return;
  }
  if (!Object.keys(inst).length) {
    showError("give at least one input (an image, a signal or a clinical value)");
    return;
  }
  $("submit").disabled = true;
  $("busy").hidden = false;
  try {
    const r = await api("/v1/explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instances: [inst] }),
    });
    if (r.status !== 200) {
      showError(describeErrors(r.body, r.status));
      return;
    }
    render(r.body);
  } catch (e) {
    showError("the service did not answer: " + e.message);
  } finally {
    $("submit").disabled = false;
    $("busy").hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("case-form").addEventListener("submit", submit);
  $("case-form").addEventListener("reset", () => {
    $("results").hidden = true;
    showError("");
    document.querySelectorAll(".preview").forEach((img) => { img.hidden = true; });
  });
  $("token-save").addEventListener("click", () => {
    sessionStorage.setItem("medfuse-token", $("token").value);
    loadModel();
  });
  loadModel();
});
