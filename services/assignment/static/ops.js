// The operations board: /v1/ops/cases (filters in the query) and /v1/ops/trends.
"use strict";

const STATES = ["breached", "delivery_failed", "held_for_review", "unassignable", "records_incomplete",
  "awaiting_authorization", "at_risk", "stalled", "awaiting_acceptance", "in_review", "in_progress"];
const charts = {};

function query() {
  const p = new URLSearchParams();
  for (const [id, name] of [["f-q", "q"], ["f-tenant", "tenant"], ["f-state", "state"], ["f-specialty", "specialty"], ["f-urgency", "urgency"]]) {
    const v = document.getElementById(id).value.trim();
    if (v) p.set(name, v);
  }
  return p.toString();
}

async function release(caseId) {
  await api(`/v1/ops/cases/${encodeURIComponent(caseId)}/release`, { method: "POST", body: JSON.stringify({ note: "released from the operations view" }) });
  refresh();
}

function renderBoard(d) {
  const body = document.querySelector("#cases tbody");
  body.replaceChildren();
  for (const c of d.cases) {
    const tr = document.createElement("tr");
    tr.className = c.severity;
    tr.dataset.caseId = c.case_id;
    tr.dataset.state = c.state;
    tr.dataset.severity = c.severity;
    td(tr, c.state.replaceAll("_", " ").toUpperCase(), `badge ${c.severity}`);
    const link = document.createElement("a");
    link.href = `/dashboard/case?id=${encodeURIComponent(c.case_id)}`;
    link.textContent = c.case_id;
    td(tr, "").appendChild(link);
    td(tr, c.tenant_id);
    td(tr, c.stage);
    td(tr, c.reason).className = "reason";
    td(tr, c.subspecialties.join(", "));
    td(tr, c.urgency);
    td(tr, c.reviewer_ids.join(", ") || "—");
    td(tr, due(c.due_at, d.timezone));
    const act = td(tr, "");
    if (c.state === "held_for_review") {
      const b = document.createElement("button");
      b.textContent = "Release";
      b.className = "release";
      b.onclick = () => release(c.case_id);
      act.appendChild(b);
    }
    body.appendChild(tr);
  }
  const tiles = document.getElementById("counts");
  tiles.replaceChildren();
  for (const s of STATES.filter((s) => d.counts[s])) {
    const t = document.createElement("div");
    t.className = "tile";
    t.innerHTML = `<span></span>${s.replaceAll("_", " ")}`;
    t.firstChild.textContent = d.counts[s];
    t.dataset.state = s;
    tiles.appendChild(t);
  }
  const cap = document.querySelector("#capacity tbody");
  cap.replaceChildren();
  const alerts = document.getElementById("alerts");
  alerts.replaceChildren();
  for (const c of d.capacity) {
    const tr = document.createElement("tr");
    if (c.alert) tr.className = "alert-row";
    [c.subspecialty, c.jurisdiction, c.demand, c.eligible_reviewers, c.free_capacity].forEach((v) => td(tr, v));
    cap.appendChild(tr);
    if (c.alert) {
      const a = document.createElement("div");
      a.className = "alert";
      a.textContent = `${c.demand} open case(s) need ${c.subspecialty} in ${c.jurisdiction}: no eligible reviewer`;
      alerts.appendChild(a);
    }
  }
  document.getElementById("updated").textContent = `as of ${due(d.generated_at, d.timezone)}`;
}

function chart(id, config) {
  if (typeof Chart === "undefined") return;
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart(document.getElementById(id), { ...config, options: { animation: false, ...(config.options || {}) } });
}

function renderTrends(t) {
  const labels = t.days.map((d) => d.day);
  chart("chart-volume", {
    type: "bar",
    data: { labels, datasets: [
      { label: "submitted", data: t.days.map((d) => d.submitted) },
      { label: "delivered", data: t.days.map((d) => d.delivered) },
      { label: "breaches", data: t.days.map((d) => d.breaches) },
    ] },
    options: { plugins: { title: { display: true, text: "Volumes and breaches per day" } } },
  });
  const series = {};
  for (const p of t.turnaround) {
    const k = `${p.measure} · ${p.subspecialty} · ${p.tier}`;
    (series[k] = series[k] || {})[p.day] = p.median_hours;
  }
  chart("chart-turnaround", {
    type: "line",
    data: { labels, datasets: Object.entries(series).map(([k, v]) => ({ label: k, data: labels.map((d) => v[d] ?? null), spanGaps: true })) },
    options: { plugins: { title: { display: true, text: "Median turnaround (hours)" } } },
  });
}

async function refresh() {
  if (!sessionStorage.getItem("opsKey")) return;
  try {
    renderBoard(await api(`/v1/ops/cases?${query()}`));
    renderTrends(await api("/v1/ops/trends"));
    document.getElementById("board").hidden = false;
    document.body.dataset.loaded = "true";
  } catch (e) { /* shown in #error */ }
}

for (const s of STATES) {
  const o = document.createElement("option");
  o.value = o.textContent = s;
  document.getElementById("f-state").appendChild(o);
}
document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("opsKey", document.getElementById("key").value.trim());
  refresh();
});
refresh();
setInterval(refresh, 10000);
