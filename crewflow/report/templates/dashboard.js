// crewflow dashboard: keeps the page's table up to date from the server's event stream.
// Every text goes in through textContent, never as markup.
"use strict";

function badge(status, why) {
  const span = document.createElement("span");
  span.className = "badge s-" + String(status).replace(/ /g, "-");
  span.textContent = status;
  if (why) span.title = why;
  return span;
}

// A run's last recorded health, its issues in the tooltip; nothing for a run never watched.
function health(run) {
  if (!run.health) return "";
  const span = badge(run.health, run.issues.join("; "));
  span.className = "badge h-" + run.health;
  return span;
}

function cell(row, content, numeric) {
  const td = document.createElement("td");
  if (numeric) td.className = "num";
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
}

function showRuns(tbody, runs) {
  const rows = [];
  for (const run of runs) {
    const tr = document.createElement("tr");
    tr.dataset.run = run.run_id;
    const link = document.createElement("a");
    link.href = "/runs/" + encodeURIComponent(run.run_id);
    link.textContent = run.run_id.slice(0, 8);
    cell(tr, link);
    cell(tr, run.crew);
    cell(tr, badge(run.status));
    cell(tr, run.process);
    cell(tr, run.started);
    cell(tr, run.seconds === null ? "" : String(run.seconds), true);
    cell(tr, String(run.tasks), true);
    cell(tr, run.running.join(", "));
    cell(tr, health(run));
    rows.push(tr);
  }
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = document.createElement("td");
    td.colSpan = 9;
    td.className = "muted";
    td.textContent = "No runs.";
    tr.appendChild(td);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

function showRun(table, state) {
  const status = document.getElementById("run-status");
  const before = status.textContent;
  status.replaceWith(Object.assign(badge(state.run.status), { id: "run-status" }));
  const shown = document.getElementById("run-health");
  const now = health(state.run);
  if (now) shown.replaceChildren(now);
  else {
    const none = document.createElement("span");
    none.className = "muted";
    none.textContent = "not watched";
    shown.replaceChildren(none);
  }
  document.getElementById("run-issues").replaceChildren(...state.run.issues.map((issue) => {
    const li = document.createElement("li");
    li.textContent = issue;
    return li;
  }));
  const tbody = table.tBodies[0];
  const rows = [];
  for (const task of state.tasks) {
    const tr = document.createElement("tr");
    tr.dataset.task = task.name;
    cell(tr, task.name);
    cell(tr, badge(task.status, task.reason));
    cell(tr, String(task.attempts), true);
    cell(tr, task.reason || task.decision);
    tr.lastChild.className = "muted";
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  // The report is drawn from the records: draw it again once the run has ended.
  if (before === "running" && state.run.status !== "running") {
    const frame = document.getElementById("report");
    if (frame) frame.src = frame.src;
  }
}

function follow() {
  const live = document.getElementById("live");
  const runs = document.querySelector("table[data-view=runs]");
  const run = document.querySelector("table[data-view=run]");
  let url;
  if (runs) url = "/events" + window.location.search;
  else if (run) url = "/runs/" + encodeURIComponent(run.dataset.run) + "/events";
  else return;
  const source = new EventSource(url);
  source.onopen = () => { live.textContent = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    if (runs) showRuns(runs.tBodies[0], data);
    else if (data) showRun(run, data);
    live.textContent = "live · updated " + new Date().toLocaleTimeString();
  };
}

document.addEventListener("DOMContentLoaded", follow);
