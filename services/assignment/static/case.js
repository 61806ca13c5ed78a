// One case's journey: /v1/ops/cases/{id}: state, timeline, links and its trace as a waterfall.
"use strict";

const caseId = new URLSearchParams(location.search).get("id") || "";

function waterfall(spans) {
  const box = document.getElementById("waterfall");
  box.replaceChildren();
  if (!spans.length) { box.textContent = "No spans found for this trace."; return; }
  const t0 = Math.min(...spans.map((s) => s.start_ns));
  const t1 = Math.max(...spans.map((s) => s.end_ns));
  const width = Math.max(t1 - t0, 1);
  for (const s of spans) {
    const row = document.createElement("div");
    row.className = "span";
    row.dataset.service = s.service;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${s.service} · ${s.name}`;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = `bar svc-${s.service}`;
    bar.style.left = `${(100 * (s.start_ns - t0)) / width}%`;
    bar.style.width = `${(100 * (s.end_ns - s.start_ns)) / width}%`;
    bar.title = `${((s.end_ns - s.start_ns) / 1e6).toFixed(1)} ms`;
    track.appendChild(bar);
    row.append(label, track);
    box.appendChild(row);
  }
}

// The case's open assignments, each with a Reassign form (reason required; a named
// reviewer must be eligible, or assignment answers 409 and says why).
function assignments(slots) {
  const body = document.querySelector("#assignments tbody");
  body.replaceChildren();
  for (const a of slots) {
    const tr = document.createElement("tr");
    tr.dataset.subspecialty = a.subspecialty;
    tr.dataset.reviewer = a.reviewer_id || "";
    [a.subspecialty, a.state, a.sla.replaceAll("_", " "), a.reviewer_id || "—", due(a.due_at, document.body.dataset.tz), a.reason].forEach((v) => td(tr, v));
    const cell = td(tr, "");
    const reason = document.createElement("input");
    reason.className = "reassign-reason";
    reason.placeholder = "reason (required)";
    const to = document.createElement("input");
    to.className = "reassign-to";
    to.placeholder = "reviewer id (optional)";
    const b = document.createElement("button");
    b.className = "reassign";
    b.textContent = "Reassign";
    b.onclick = async () => {
      if (!reason.value.trim()) { reason.focus(); return; }
      const body = { subspecialty: a.subspecialty, reason: reason.value.trim() };
      if (to.value.trim()) body.reviewer_id = to.value.trim();
      try {
        await api(`/v1/ops/cases/${encodeURIComponent(caseId)}/reassign`, { method: "POST", body: JSON.stringify(body) });
      } catch (e) { return; } // the refusal stays on the page (#error)
      load();
    };
    cell.append(reason, to, b);
    body.appendChild(tr);
  }
}

async function load() {
  const j = await api(`/v1/ops/cases/${encodeURIComponent(caseId)}`);
  const r = j.row;
  document.body.dataset.tz = r.due_timezone;
  const sum = document.getElementById("summary");
  sum.innerHTML = "<h2></h2><p><span></span> <span class='reason'></span></p><p class='meta'></p>";
  sum.querySelector("h2").textContent = `${r.case_id} (${r.external_id || "no external id"}) · ${r.tenant_id}`;
  const badge = sum.querySelector("p span");
  badge.className = `badge ${r.severity}`;
  badge.dataset.state = r.state;
  badge.textContent = r.state.replaceAll("_", " ").toUpperCase();
  sum.querySelector(".reason").textContent = r.reason;
  sum.querySelector(".meta").textContent = `stage ${r.stage} · ${r.subspecialties.join(", ")} · ${r.tier} · ${r.urgency} · due ${due(r.due_at, r.due_timezone)}`;
  const actions = document.getElementById("actions");
  actions.replaceChildren();
  for (const d of j.case.delivery_failed) {
    const b = document.createElement("button");
    b.className = "resend";
    b.dataset.delivery = d;
    b.textContent = `Resend delivery ${d}`;
    b.onclick = async () => { await api(`/v1/ops/cases/${encodeURIComponent(caseId)}/deliveries/${encodeURIComponent(d)}/resend`, { method: "POST", body: "{}" }); load(); };
    actions.appendChild(b);
  }
  assignments(j.assignments);
  const links = document.getElementById("links");
  links.replaceChildren();
  for (const [name, url] of Object.entries(j.links)) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = url;
    a.textContent = name.replaceAll("_", " ");
    li.appendChild(a);
    links.appendChild(li);
  }
  const body = document.querySelector("#timeline tbody");
  body.replaceChildren();
  for (const e of j.case.timeline) {
    const tr = document.createElement("tr");
    [due(e.at, r.due_timezone), e.service, e.event, e.detail].forEach((v) => td(tr, v));
    body.appendChild(tr);
  }
  document.getElementById("trace-id").textContent = j.trace_id || "(none)";
  waterfall(j.spans);
  document.getElementById("board").hidden = false;
  document.body.dataset.loaded = "true";
}
load().catch(() => {});
