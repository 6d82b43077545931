// The stormbreaker console: storms, their timeline and held mail, and the actions on them.
// Plain DOM, no framework; every text from mail goes in with textContent, never as HTML.
"use strict";

const state = {
  csrf: null,
  storms: [],
  selectedStorm: null,
  messages: [],
  checked: new Set(),
};

const $ = (id) => document.getElementById(id);

function say(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401) {
    showLogin(data && data.error);
    throw new Error((data && data.error) || "log in first");
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

function showLogin(why) {
  state.csrf = null;
  $("app").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  if (why) say(why, false);
  $("token").focus();
}

function showApp(session) {
  state.csrf = session.csrf;
  $("who-name").textContent = session.name;
  $("who").hidden = false;
  $("logout").hidden = session.auth !== "token";
  $("login").hidden = true;
  $("app").hidden = false;
}

async function start() {
  try {
    const session = await api("GET", "/api/session");
    showApp(session);
    await refresh();
  } catch (e) {
    if (!$("login").hidden) return;
    say(e.message, true);
  }
}

async function login(event) {
  event.preventDefault();
  try {
    const session = await api("POST", "/api/login", { token: $("token").value });
    $("token").value = "";
    showApp(session);
    say(`Logged in as ${session.name}.`);
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
}

async function logout() {
  try {
    await api("POST", "/api/logout", {});
  } catch (_) {
    // Logged out either way.
  }
  showLogin("Logged out.");
}

async function refresh() {
  // Every node's held mail ([admin] peers); a node that does not answer is named.
  const data = await api("GET", "/api/storms?nodes=all");
  state.storms = data.storms;
  const err = $("breakers-error");
  const problems = [];
  if (data.breakers_error) problems.push(`Breakers unavailable: ${data.breakers_error}`);
  for (const n of data.nodes || []) {
    if (!n.ok) problems.push(`Node ${n.name} (${n.url}) not shown: ${n.error}`);
  }
  err.hidden = problems.length === 0;
  err.textContent = problems.join(" ");
  renderStorms();
  if (state.selectedStorm) {
    const still = state.storms.find((s) => s.id === state.selectedStorm);
    if (still) {
      renderStorm(still);
      await loadMessages();
    } else {
      state.selectedStorm = null;
      $("storm").hidden = true;
    }
  }
}

function renderStorms() {
  const body = $("storms").tBodies[0];
  body.replaceChildren();
  $("no-storms").hidden = state.storms.length > 0;
  for (const s of state.storms) {
    const tr = document.createElement("tr");
    if (s.id === state.selectedStorm) tr.className = "selected";
    const name = el("td");
    const open = el("button", s.id, "link");
    open.type = "button";
    open.setAttribute("aria-label", `Open storm ${s.id}`);
    open.addEventListener("click", () => selectStorm(s.id));
    name.append(open);
    const status = el("td");
    status.append(el("span", s.status, `badge ${s.status}`));
    tr.append(
      name,
      status,
      el("td", s.subject || ""),
      el("td", s.list || "", "wrap"),
      el("td", s.held, "num"),
      el("td", s.senders, "num"),
      el("td", s.audience.toLocaleString(), "num"),
      el("td", s.deliveries_avoided.toLocaleString(), "num"),
      el("td", s.last_at ? when(Date.parse(s.last_at)) : ""),
    );
    // A click anywhere on the row opens it too; keyboards use the storm's button.
    tr.addEventListener("click", (e) => {
      if (e.target === tr || e.target.tagName === "TD") selectStorm(s.id);
    });
    body.append(tr);
  }
}

async function selectStorm(id) {
  state.selectedStorm = id;
  state.checked.clear();
  const storm = state.storms.find((s) => s.id === id);
  if (!storm) return;
  renderStorms();
  renderStorm(storm);
  $("storm").hidden = false;
  await loadMessages();
  $("storm-title").focus();
}

function fact(dl, term, value) {
  dl.append(el("dt", term), el("dd", value));
}

function renderStorm(s) {
  const title = $("storm-title");
  title.textContent = `Storm ${s.id}`;
  title.tabIndex = -1;
  const dl = $("storm-facts");
  dl.replaceChildren();
  fact(dl, "Status", s.status);
  fact(dl, "Subject", s.subject || "");
  fact(dl, "List", s.list || "");
  fact(dl, "Thread keys", s.keys.join(", "));
  for (const b of s.breakers) {
    fact(
      dl,
      `Breaker ${b.key}`,
      `${b.phase} (${b.breaker}) since ${when(b.opened_at_ms)} until ${when(b.until_ms)}; ` +
        `${b.replies} replies from ${b.senders} senders in its window`,
    );
  }
  fact(dl, "Held now", `${s.held} (released: ${s.released})`);
  fact(dl, "Distinct senders", s.senders);
  fact(
    dl,
    "Top senders",
    s.top_senders.map((t) => `${t.address || "<>"} (${t.messages})`).join(", "),
  );
  fact(dl, "Largest audience", s.audience.toLocaleString());
  fact(dl, "Deliveries avoided", s.deliveries_avoided.toLocaleString());
  fact(dl, "First and last held", `${s.first_at ? when(Date.parse(s.first_at)) : ""} – ${s.last_at ? when(Date.parse(s.last_at)) : ""}`);
  $("reset").disabled = s.breakers.length === 0;
  $("export").href = `/api/report.csv?storm=${encodeURIComponent(s.id)}`;
  renderTimeline(s.timeline);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function renderTimeline(t) {
  const minutes = t.bucket_ms / 60000;
  $("bucket").textContent = minutes === 1 ? "minute" : `${minutes} minutes`;
  const chart = $("chart");
  const desc = $("chart-desc");
  chart.replaceChildren(desc);
  const points = t.points;
  const rows = $("timeline").tBodies[0];
  rows.replaceChildren();
  if (points.length === 0) {
    desc.textContent = "No held replies yet.";
    return;
  }
  const max = Math.max(1, ...points.map((p) => p.replies));
  const W = 600, H = 160, top = 12, bottom = 18;
  const slot = W / points.length;
  points.forEach((p, i) => {
    const h = ((H - top - bottom) * p.replies) / max;
    const width = Math.min(40, Math.max(1, slot * 0.8));
    const bar = svg("rect", {
      class: "bar",
      x: i * slot + (slot - width) / 2,
      y: H - bottom - h,
      width,
      height: h,
    });
    bar.append(svg("title"));
    bar.firstChild.textContent = `${when(p.at_ms)}: ${p.replies} replies from ${p.senders} senders`;
    chart.append(bar);
    const tr = document.createElement("tr");
    tr.append(
      el("td", when(p.at_ms)),
      el("td", p.replies, "num"),
      el("td", p.senders, "num"),
      el("td", p.new_senders, "num"),
      el("td", p.avoided.toLocaleString(), "num"),
    );
    rows.append(tr);
  });
  // Distinct senders so far, as a line over the bars.
  let seen = 0;
  const totalSenders = points.reduce((n, p) => n + p.new_senders, 0) || 1;
  const line = points
    .map((p, i) => {
      seen += p.new_senders;
      const y = H - bottom - ((H - top - bottom) * seen) / totalSenders;
      return `${i * slot + slot / 2},${y}`;
    })
    .join(" ");
  chart.append(svg("polyline", { class: "senders", points: line }));
  const label = (x, y, text, anchor) => {
    const e = svg("text", { class: "axis", x, y, "text-anchor": anchor });
    e.textContent = text;
    chart.append(e);
  };
  label(2, 10, `${max} per ${minutes === 1 ? "minute" : minutes + " min"}`, "start");
  label(2, H - 4, when(points[0].at_ms), "start");
  label(W - 2, H - 4, when(points[points.length - 1].at_ms), "end");
  const total = points.reduce((n, p) => n + p.replies, 0);
  desc.textContent =
    `${total} held replies over ${points.length} ${minutes === 1 ? "minutes" : "buckets"}, ` +
    `at most ${max} in one; ${seen} distinct senders. The table below has every value.`;
}

// How a release or delete names a message on any node: NODE:ID.
const ref = (m) => (m.node ? `${m.node}:${m.id}` : m.id);

async function loadMessages() {
  if (!state.selectedStorm) return;
  const params = new URLSearchParams({ storm: state.selectedStorm });
  const q = $("search").value.trim();
  if (q) params.set("q", q);
  const st = $("state-filter").value;
  if (st) params.set("state", st);
  params.set("nodes", "all");
  const data = await api("GET", `/api/held?${params}`);
  state.messages = data.messages;
  const shown = new Set(state.messages.map(ref));
  for (const id of [...state.checked]) if (!shown.has(id)) state.checked.delete(id);
  $("held-count").textContent =
    data.total > data.messages.length
      ? `${data.messages.length} of ${data.total} shown`
      : `${data.total} message${data.total === 1 ? "" : "s"}`;
  renderMessages();
}

function renderMessages() {
  const body = $("held").tBodies[0];
  body.replaceChildren();
  for (const m of state.messages) {
    const tr = document.createElement("tr");
    const pick = el("td");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.checked.has(ref(m));
    box.setAttribute("aria-label", `Select ${m.id}`);
    box.addEventListener("change", () => {
      if (box.checked) state.checked.add(ref(m));
      else state.checked.delete(ref(m));
    });
    pick.append(box);
    const act = el("td");
    if (m.state === "held") {
      const release = el("button", "Release", "quiet");
      release.type = "button";
      release.setAttribute("aria-label", `Release ${m.id}`);
      release.addEventListener("click", () => act_on("release", [ref(m)]));
      act.append(release);
    }
    tr.append(
      pick,
      el("td", when(m.received_at_ms)),
      el("td", m.mail_from || "<>"),
      el("td", m.rcpt_to.length, "num"),
      el("td", m.subject || ""),
      el("td", m.state),
      el("td", m.node || ""),
      el("td", m.id),
      act,
    );
    tr.title = `Message-ID ${m.message_id || "none"}; to ${m.rcpt_to.join(", ")}`;
    body.append(tr);
  }
  $("select-all").checked =
    state.messages.length > 0 && state.messages.every((m) => state.checked.has(ref(m)));
}

async function act_on(action, ids) {
  if (ids.length === 0) {
    say("Select messages first.", true);
    return;
  }
  if (action === "delete" && !window.confirm(`Delete ${ids.length} message(s) without delivering them?`)) {
    return;
  }
  say(`${action === "release" ? "Releasing" : "Deleting"} ${ids.length} message(s)…`);
  try {
    const data = await api("POST", `/api/${action}`, { ids });
    const failed = data.results.filter((r) => !r.ok);
    for (const r of data.results) if (r.ok) state.checked.delete(r.id);
    const done = data.results.length - failed.length;
    const verb = action === "release" ? "released" : "deleted";
    if (failed.length === 0) {
      say(`${done} message(s) ${verb}.`);
    } else {
      say(`${done} ${verb}; ${failed.length} not: ${failed.map((r) => `${r.id}: ${r.detail}`).join("; ")}`, true);
    }
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
}

async function resetStorm() {
  const storm = state.storms.find((s) => s.id === state.selectedStorm);
  if (!storm) return;
  try {
    for (const key of storm.keys) await api("POST", "/api/reset", { key });
    say(`Breaker of ${storm.id} reset: its replies pass again; held mail stays held.`);
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
}

async function trip(event) {
  event.preventDefault();
  const key = $("trip-key").value.trim();
  try {
    await api("POST", "/api/trip", { key });
    say(`Breaker tripped for ${key}.`);
    $("trip-key").value = "";
    await refresh();
  } catch (e) {
    say(e.message, true);
  }
}

let searchTimer = null;

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("reset").addEventListener("click", resetStorm);
  $("trip-form").addEventListener("submit", trip);
  $("release-selected").addEventListener("click", () => act_on("release", [...state.checked]));
  $("delete-selected").addEventListener("click", () => act_on("delete", [...state.checked]));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    loadMessages().catch((err) => say(err.message, true));
  });
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadMessages().catch((err) => say(err.message, true)), 250);
  });
  $("state-filter").addEventListener("change", () => loadMessages().catch((err) => say(err.message, true)));
  $("select-all").addEventListener("change", (e) => {
    for (const m of state.messages) {
      if (e.target.checked) state.checked.add(ref(m));
      else state.checked.delete(ref(m));
    }
    renderMessages();
  });
  start();
  setInterval(() => {
    if (!$("app").hidden) refresh().catch((err) => say(err.message, true));
  }, 15000);
});
