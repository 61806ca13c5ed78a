// Shared by the operations pages: the operator's key (login field or #key=...,
// which the browser never sends to the server; kept in sessionStorage) and fetch.
"use strict";

function keyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem("opsKey", key);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem("opsKey");
  const headers = { Authorization: `Bearer ${key}`, "Content-Type": "application/json" };
  const resp = await fetch(path, { ...options, headers });
  const err = document.getElementById("error");
  if (!resp.ok) {
    let detail = "";
    try { detail = (await resp.json()).detail || ""; } catch (e) { detail = ""; }
    err.textContent = resp.status === 401 || resp.status === 403 ? "That key may not view this page." : `Error ${resp.status}${detail ? `: ${detail}` : ""}`;
    err.hidden = false;
    throw new Error(`HTTP ${resp.status}`);
  }
  err.hidden = true;
  return resp.json();
}

function td(tr, text, cls) {
  const cell = document.createElement("td");
  if (cls) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    cell.appendChild(span);
  } else {
    cell.textContent = text;
  }
  tr.appendChild(cell);
  return cell;
}

// A due time in the organisation's time zone, with the zone named.
function due(iso, tz) {
  if (!iso) return "—";
  const s = new Date(iso).toLocaleString("en-US", { timeZone: tz, dateStyle: "medium", timeStyle: "short" });
  return `${s} (${tz})`;
}
keyFromFragment();
