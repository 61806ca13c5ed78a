// The SLA dashboard: fetches /v1/dashboard with the operator's key and renders it.
// The key comes from the login field or the URL fragment (#key=...), which the
// browser never sends to the server; it is kept in sessionStorage for this tab.
"use strict";

const LABEL = { on_track: "on track", at_risk: "AT RISK", breached: "BREACHED", paused: "paused", unassignable: "UNASSIGNABLE" };

function cell(tr, text, cls) {
  const td = document.createElement("td");
  if (cls) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  tr.appendChild(td);
  return td;
}

function fill(id, rows, render) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    body.appendChild(tr);
  }
}

function renderCase(tr, c) {
  tr.className = c.status;
  tr.dataset.caseId = c.case_id;
  tr.dataset.status = c.status;
  cell(tr, LABEL[c.status] || c.status, `badge ${c.status}`);
  cell(tr, c.case_id);
  cell(tr, c.subspecialty);
  cell(tr, c.tier);
  cell(tr, c.urgency);
  cell(tr, c.stage + (c.status === "unassignable" && c.reason ? `: ${c.reason}` : "") + (c.paused_for.length ? ` (waiting on ${c.paused_for.join(", ")})` : ""));
  cell(tr, c.reviewer_id || "—");
  cell(tr, c.due_at ? new Date(c.due_at).toLocaleString() : "paused");
  cell(tr, c.remaining_business_hours.toFixed(1));
  cell(tr, `${Math.round(c.fraction_elapsed * 100)}%`);
}

function renderReviewer(tr, r) {
  cell(tr, `${r.name} (${r.reviewer_id})`);
  cell(tr, `${r.load}/${r.capacity}`);
  const bar = document.createElement("div");
  bar.className = "bar";
  const fillDiv = document.createElement("div");
  fillDiv.style.width = `${r.capacity ? Math.min(100, (100 * r.load) / r.capacity) : 100}%`;
  bar.appendChild(fillDiv);
  cell(tr, "").appendChild(bar);
}

function render(d) {
  document.getElementById("n-open").textContent = d.cases.length;
  document.getElementById("n-at-risk").textContent = d.at_risk;
  document.getElementById("n-breached").textContent = d.breached;
  document.getElementById("n-paused").textContent = d.paused;
  fill("cases", d.cases, renderCase);
  fill("stages", d.by_stage_and_tier, (tr, s) => [s.stage, s.tier, s.count].forEach((v) => cell(tr, v)));
  fill("reviewers", d.reviewers, renderReviewer);
  fill("turnaround", d.turnaround, (tr, t) =>
    [t.subspecialty, t.count, t.median_hours, t.p90_hours].forEach((v) => cell(tr, v)));
  document.getElementById("updated").textContent = `as of ${new Date(d.generated_at).toLocaleString()}`;
  document.getElementById("board").hidden = false;
  document.body.dataset.loaded = "true";
}

function showError(message) {
  const el = document.getElementById("error");
  el.textContent = message;
  el.hidden = !message;
}

async function refresh() {
  const key = sessionStorage.getItem("opsKey");
  if (!key) return;
  try {
    const resp = await fetch("/v1/dashboard", { headers: { Authorization: `Bearer ${key}` } });
    if (!resp.ok) {
      showError(resp.status === 401 || resp.status === 403 ? "That key may not view the dashboard." : `Error ${resp.status}`);
      return;
    }
    showError("");
    render(await resp.json());
  } catch (err) {
    showError("The assignment service is not reachable.");
  }
}

function keyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem("opsKey", key);
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
  }
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("opsKey", document.getElementById("key").value.trim());
  refresh();
});
keyFromFragment();
refresh();
setInterval(refresh, 10000);
