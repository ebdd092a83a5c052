// The clinic page: send two photos, show the stored result, list the day's cases.
// Every value from the server is written with textContent, never as HTML.
"use strict";

let info = null;

const $ = (id) => document.getElementById(id);
const percent = (p) => `${(100 * p).toFixed(0)} %`;

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function className(task, cls) {
  const t = info.tasks.find((x) => x.key === task);
  const c = t.classes.find((x) => x.key === cls);
  return c ? c.name : cls;
}

function showError(message) {
  const box = $("error");
  box.textContent = "";
  box.hidden = !message;
  // filled after it is shown, so screen readers announce the alert
  if (message) setTimeout(() => { box.textContent = message; }, 0);
}

function toLogin(response) {
  if (response.status === 401) {
    window.location.assign("/login");
    return true;
  }
  return false;
}

const localTime = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

async function json(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

function renderResult(kase) {
  const p = kase.prediction;
  const sp = p.seven_point;
  $("advice").textContent = sp.advice.charAt(0).toUpperCase() + sp.advice.slice(1) + ".";
  $("advice").className = "advice " + (sp.suspicious ? "refer" : "calm");
  $("score").textContent = `Seven-point checklist score ${sp.score} (expected score ${sp.expected_score.toFixed(2)}). `
    + `Decided by the ${sp.rule}.`;
  $("melanoma").textContent = p.melanoma
    ? `Melanoma probability ${percent(p.melanoma.probability)}, against ${percent(p.melanoma.threshold)} `
      + `(the threshold for ${percent(p.melanoma.target_sensitivity)} sensitivity on validation): `
      + (p.melanoma.refer ? "refer." : "below it.")
    : "";
  const points = new Map(info.seven_point.criteria.map((c) => [`${c.task} ${c.class}`, c.points]));
  const criteria = $("criteria").tBodies[0];
  criteria.replaceChildren();
  for (const task of info.tasks.slice(1)) {
    const t = p.tasks[task.key];
    const row = criteria.insertRow();
    cell(row, task.title);
    const finding = cell(row, className(task.key, t.top));
    const add = points.get(`${task.key} ${t.top}`);
    if (add) {
      const strong = document.createElement("strong");
      strong.textContent = ` +${add}`;
      finding.appendChild(strong);
    }
    cell(row, percent(t.probability), "num");
  }
  const diagnosis = $("diagnosis").tBodies[0];
  diagnosis.replaceChildren();
  const sorted = Object.entries(p.diagnosis).sort((a, b) => b[1] - a[1]);
  for (const [cls, prob] of sorted) {
    const row = diagnosis.insertRow();
    cell(row, className("DIAG", cls));
    const td = cell(row, percent(prob), "num");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(6 * prob).toFixed(2)}rem`;   // 6 rem = 100 %
    td.prepend(bar);
  }
  $("made-by").textContent = `Case ${kase.id}${kase.visit_id ? ` (visit ${kase.visit_id})` : ""}, `
    + `${kase.day} ${localTime(kase.created)}; `
    + `photos ${kase.clinical.name} and ${kase.derm.name}; model ${kase.bundle.name} (${kase.bundle.precision}, `
    + `sha256 ${kase.bundle.sha256.slice(0, 12)}…). ${p.disclaimer}`;
  $("result").hidden = false;
  $("result").focus();
}

async function loadCases() {
  // no day asked: the server's today, so a page left open overnight lists the new day
  const response = await fetch("/api/cases");
  if (toLogin(response)) return;
  if (!response.ok) {
    showError(`Could not list today's cases (the server answered ${response.status}).`);
    return;
  }
  const { day, cases } = await response.json();
  $("cases-title").textContent = `Today's cases (${day})`;
  const body = $("cases").tBodies[0];
  body.replaceChildren();
  for (const kase of cases) {
    const sp = kase.prediction.seven_point;
    const row = body.insertRow();
    cell(row, localTime(kase.created));
    cell(row, kase.visit_id || `case ${kase.id}`);
    cell(row, className("DIAG", kase.prediction.tasks.DIAG.top));
    cell(row, `${sp.score}: ${sp.suspicious ? "refer" : "not suspicious"}`, sp.suspicious ? "refer" : "");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = "Show";
    open.setAttribute("aria-label", `Show case ${kase.visit_id || kase.id}`);
    open.addEventListener("click", () => renderResult(kase));
    cell(row, "").appendChild(open);
  }
  $("no-cases").hidden = cases.length > 0;
}

function preview(input, img) {
  input.addEventListener("change", () => {
    if (img.src) URL.revokeObjectURL(img.src);
    const file = input.files[0];
    img.hidden = !file;
    if (file) img.src = URL.createObjectURL(file);
  });
}

async function submitCase(event) {
  event.preventDefault();
  showError("");
  const form = $("case-form");
  for (const [id, label] of [["clinical", "clinical"], ["derm", "dermoscopy"]]) {
    if (!$(id).files.length) {
      showError(`Choose the ${label} photo first.`);
      $(id).focus();
      return;
    }
  }
  $("submit").disabled = true;
  $("status").textContent = "Analysing…";
  try {
    const response = await fetch("/api/cases", { method: "POST", body: new FormData(form) });
    if (toLogin(response)) return;
    const body = await json(response);
    if (!response.ok) {
      showError(body.detail || `The server answered ${response.status}.`);
      $("status").textContent = "";
      return;
    }
    $("status").textContent = `Case ${body.id} saved.`;
    renderResult(body);
    form.reset();
    for (const id of ["clinical-preview", "derm-preview"]) $(id).hidden = true;
    await loadCases();
  } catch (err) {
    showError(`Could not reach EdgeDerm on this device (${err.message}).`);
    $("status").textContent = "";
  } finally {
    $("submit").disabled = false;
  }
}

async function start() {
  const response = await fetch("/api/info");
  if (toLogin(response)) return;
  if (!response.ok) {
    showError("EdgeDerm did not answer: is `edgederm serve` still running?");
    return;
  }
  info = await response.json();
  const b = info.bundle;
  $("bundle").textContent = `Model: ${b.name} (${b.precision}, ${b.backend}), sha256 ${b.sha256.slice(0, 12)}…`;
  $("disclaimer").textContent = info.disclaimer;
  $("csv").href = "/api/cases.csv";          // the server's today when clicked
  preview($("clinical"), $("clinical-preview"));
  preview($("derm"), $("derm-preview"));
  $("case-form").addEventListener("submit", submitCase);
  await loadCases();
}

start();
