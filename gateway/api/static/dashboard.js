// Depot dashboard: polls the gateway's local API every second and updates the page in place.
// Everything from chargers is shown with textContent, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
let timer = null;
let statusSeen = new Map(); // "charger connector" -> status, to announce changes
let firstRender = true;
let tokenRequired = false;
let stale = 0;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

// Keep a container's children equal to items, in order, reusing the element of each key
// (so focus, selection and layout stay put across updates).
function keyed(container, items, keyOf, create, update) {
  if (container.tagName === "TBODY" && items.length === 0) {
    // One row saying so, the height of a data row: the first data row then shifts nothing.
    const text = container.parentElement.dataset.empty;
    const cols = container.parentElement.tHead.rows[0].cells.length;
    return keyed2(container, [text], () => "empty", () => {
      const tr = el("tr", "empty-row");
      const td = el("td", null, text);
      td.colSpan = cols;
      tr.append(td);
      return tr;
    }, () => {});
  }
  return keyed2(container, items, keyOf, create, update);
}

function keyed2(container, items, keyOf, create, update) {
  const existing = new Map();
  for (const child of Array.from(container.children)) existing.set(child.dataset.key, child);
  let previous = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let node = existing.get(key);
    if (node) existing.delete(key);
    else {
      node = create(item);
      node.dataset.key = key;
    }
    update(node, item);
    const want = previous ? previous.nextSibling : container.firstChild;
    if (want !== node) container.insertBefore(node, want);
    previous = node;
  }
  for (const node of existing.values()) node.remove();
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", cache: "no-store", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401 && path !== "/api/login") {
    showLogin();
    throw new Error("unauthorised");
  }
  return { ok: response.ok, status: response.status, data, retryAfter: response.headers.get("Retry-After") };
}

// --- formatting ------------------------------------------------------------------------------

function ago(iso, now) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago` : s < 86400 ? `${Math.floor(s / 3600)} h ago` : `${Math.floor(s / 86400)} d ago`;
}
function duration(seconds) {
  if (seconds === null || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : `${m} min ${String(r).padStart(2, "0")} s`;
}
function age(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 90 ? `${Math.round(seconds)} s` : seconds < 5400 ? `${Math.round(seconds / 60)} min` : `${(seconds / 3600).toFixed(1)} h`;
}
function clock(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}
function kwh(wh) { return wh === null || wh === undefined ? "–" : `${(wh / 1000).toFixed(2)} kWh`; }
function kw(w) { return w === null || w === undefined ? "–" : `${(w / 1000).toFixed(1)} kW`; }
function connectorName(id) { return id === "0" ? "Charger" : `Connector ${id}`; }
const LINK_TEXT = { online: "cloud link up", replaying: "sending queued messages", connecting: "connecting to the cloud", offline: "cloud link down" };

// --- rendering -------------------------------------------------------------------------------

function renderTiles(d, now) {
  const total = d.chargers.length;
  const online = d.chargers.filter((c) => c.connected).length;
  setText($("t-chargers"), `${online} / ${total}`);
  const wanting = d.chargers.filter((c) => c.connected || c.outboxPending);
  const linked = wanting.filter((c) => c.upstreamConnected).length;
  const links = $("t-links");
  if (!d.upstreamConfigured) setText(links, "standalone");
  else setText(links, `${linked} / ${wanting.length}`);
  $("t-links").parentElement.parentElement.classList.toggle("warn", d.upstreamConfigured && linked < wanting.length);
  const q = d.outbox;
  const queue = $("t-queue");
  queue.replaceChildren(document.createTextNode(`${q.pending} messages`));
  const small = el("small", null, q.pending ? `oldest ${age(q.oldestAgeS)}` : "nothing waiting");
  if (q.deadLetters) small.textContent += ` · ${q.deadLetters} dead`;
  queue.append(small);
  queue.parentElement.parentElement.classList.toggle("warn", q.pending > 0 || q.deadLetters > 0);
  const sync = $("t-sync");
  const s = d.sync;
  if (!s.enabled) sync.replaceChildren(document.createTextNode("off"), el("small", null, "no API key"));
  else {
    sync.replaceChildren(document.createTextNode(`${s.accessIds} tags`),
      el("small", null, s.lastError ? `failing: ${s.lastError}` : `synced ${ago(s.lastSuccessAt, now)}`));
  }
  sync.parentElement.parentElement.classList.toggle("bad", Boolean(s.enabled && s.lastError));
  const tile = $("tile-cert");
  if (Array.isArray(d.certificates) && d.certificates.length) {
    tile.hidden = false;
    const soonest = d.certificates.reduce((a, b) => (a.daysLeft <= b.daysLeft ? a : b));
    $("t-cert").replaceChildren(document.createTextNode(`${soonest.daysLeft} days left`),
      el("small", null, `${soonest.name}: until ${clock(soonest.notAfter)}`));
    tile.classList.toggle("warn", soonest.daysLeft < 30);
    tile.classList.toggle("bad", soonest.daysLeft < 7);
  } else tile.hidden = true;
}

function createCard() {
  const li = el("li", "card");
  const h = el("h3");
  h.append(el("span", "name"), el("span", "badge"));
  li.append(h, el("p", "meta"), el("ul", "connectors"), el("p", "linkline"));
  li.setAttribute("aria-label", "charger");
  return li;
}

function createConnector() {
  const li = el("li", "conn");
  li.append(el("b"), el("span", "st"), el("span", "since"));
  return li;
}

let upstreamConfigured = true;

function updateCard(li, c, now, announcements) {
  li.className = `card ${c.connected ? (upstreamConfigured ? c.linkState : "online") : "away"}`;
  li.setAttribute("aria-label", `charger ${c.id}`);
  setText(li.querySelector(".name"), c.id);
  setText(li.querySelector(".badge"), c.connected ? "connected" : "disconnected");
  const cloud = c.cloudVersion && c.cloudVersion !== c.ocppVersion ? `cloud OCPP ${c.cloudVersion}` : null;
  const meta = [c.vendor, c.model, c.firmware && `fw ${c.firmware}`, c.ocppVersion && `OCPP ${c.ocppVersion}`, cloud].filter(Boolean).join(" · ");
  setText(li.querySelector(".meta"), meta);
  keyed(li.querySelector(".connectors"), c.connectors, (x) => x.id, createConnector, (node, x) => {
    const status = x.status || "Unknown";
    node.className = `conn s-${status.toLowerCase()}`;
    setText(node.querySelector("b"), connectorName(x.id));
    const err = x.errorCode && x.errorCode !== "NoError" ? ` (${x.errorCode})` : "";
    setText(node.querySelector(".st"), status);
    node.title = `${connectorName(x.id)}: ${status}${err}`;
    const since = `since ${ago(x.updatedAt, now)}`;
    setText(node.querySelector(".since"), err ? `${x.errorCode} · ${since}` : since);
    const key = `${c.id} ${x.id}`;
    const before = statusSeen.get(key);
    if (before !== undefined && before !== status + err) {
      announcements.push(`${c.id} ${connectorName(x.id).toLowerCase()}: ${status}${err}`);
    }
    statusSeen.set(key, status + err);
  });
  const link = upstreamConfigured ? LINK_TEXT[c.linkState] || c.linkState : "standalone";
  const parts = [c.connected ? link : `last seen ${ago(c.lastSeenAt, now)}`];
  if (c.outboxPending) parts.push(`${c.outboxPending} queued`);
  setText(li.querySelector(".linkline"), parts.join(" · "));
}

function renderChargers(d, now) {
  const announcements = [];
  keyed($("chargers"), d.chargers, (c) => c.id, createCard, (li, c) => updateCard(li, c, now, announcements));
  $("no-chargers").hidden = d.chargers.length > 0;
  if (announcements.length && !firstRender) setText($("announce"), announcements.join(". "));
}

// A row of empty cells, each labelled with its column's header (shown when a phone stacks them).
function row(table, cells) {
  const tr = el("tr");
  const heads = table.tHead.rows[0].cells;
  cells.forEach((cls, i) => {
    const td = el("td", cls);
    td.dataset.label = heads[i].textContent;
    tr.append(td);
  });
  return tr;
}

function renderSessions(d, now) {
  const sessions = [];
  for (const c of d.chargers) for (const t of c.transactions) sessions.push({ charger: c.id, ...t });
  keyed($("sessions").tBodies[0], sessions, (s) => `${s.charger} ${s.id}`,
    () => row($("sessions"), ["", "", "", "num", "num", "num", "", ""]), (tr, s) => {
      const td = tr.children;
      setText(td[0], s.charger);
      setText(td[1], s.connectorId ?? "–");
      setText(td[2], s.idTag ?? "–");
      setText(td[3], kwh(s.energyWh));
      setText(td[4], s.startedAt ? duration((now - Date.parse(s.startedAt)) / 1000) : "–");
      setText(td[5], kw(s.powerW));
      setText(td[6], clock(s.startedAt));
      td[7].replaceChildren(document.createTextNode(String(s.id)));
      if (s.offline) td[7].append(" ", el("span", "pill", "offline"));
    });
}

const amps = (a) => (a === null || a === undefined ? "–" : `${Number(a).toFixed(a % 1 ? 1 : 0)} A`);

// The site power guard (GET /api/site), shown only when it is configured (maxCurrentA > 0).
function renderSite(s) {
  const on = Boolean(s && s.maxCurrentA > 0);
  $("site").hidden = !on;
  if (!on) return;
  setText($("s-state"), s.engaged ? "engaged" : "released");
  $("tile-site-state").classList.toggle("warn", s.engaged);
  setText($("s-limit"), amps(s.maxCurrentA));
  setText($("s-allocated"), amps(s.allocatedA));
  setText($("s-measured"), amps(s.measuredA));
  $("s-measured").parentElement.parentElement.classList.toggle("bad", s.measuredA > s.maxCurrentA);
  keyed($("site-chargers").tBodies[0], s.chargers, (c) => c.id, () => {
    const tr = row($("site-chargers"), ["", "num", "num", "", "num", "num", ""]);
    tr.children[3].append(el("meter"));
    return tr;
  }, (tr, c) => {
    const td = tr.children;
    setText(td[0], c.id);
    setText(td[1], c.capA === null ? "none" : amps(c.capA));
    setText(td[2], amps(c.drawA));
    const bar = td[3].querySelector("meter");
    bar.max = Math.max(1, c.capA ?? c.maxA);
    bar.value = c.drawA ?? 0;
    bar.setAttribute("aria-label", `${c.id}: draw ${amps(c.drawA)} of cap ${amps(c.capA)}`);
    setText(td[4], amps(c.maxA));
    setText(td[5], c.transactions);
    setText(td[6], c.managed ? "yes" : "no (counted at its maximum)");
    tr.classList.toggle("unmanaged", !c.managed);
  });
}

function actionButton(label, cls, onClick) {
  const b = el("button", cls, label);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function renderReservations(list) {
  keyed($("reservations").tBodies[0], list, (r) => `${r.chargerId} ${r.reservationId}`, (r) => {
    const tr = row($("reservations"), ["", "", "", "", "", "", "actions"]);
    tr.children[6].append(actionButton("Cancel", "", () => cancelReservation(tr)));
    return tr;
  }, (tr, r) => {
    tr.reservation = r;
    const td = tr.children;
    setText(td[0], r.reservationId);
    setText(td[1], r.portId ?? "–");
    setText(td[2], `${r.chargerId}${r.connectorId ? ` / ${r.connectorId}` : ""}`);
    setText(td[3], r.idTag);
    setText(td[4], clock(r.expiryDate));
    setText(td[5], r.status);
    const b = td[6].querySelector("button");
    b.disabled = r.portId === null || r.portId === undefined;
    b.setAttribute("aria-label", `Cancel reservation ${r.reservationId}`);
  });
}

// The contract's dead-letter fields, with the older store names as a fallback.
function deadFields(x) {
  return {
    id: x.id ?? x.seq,
    chargerId: x.chargerId ?? x.charger_id,
    action: x.action,
    error: x.error ?? [x.error_code, x.error_description].filter(Boolean).join(": "),
    deadAt: x.deadAt ?? (x.failed_at ? new Date(x.failed_at * 1000).toISOString() : null),
  };
}

function renderDead(list) {
  const items = list.map(deadFields);
  keyed($("dead").tBodies[0], items, (x) => x.id, () => {
    const tr = row($("dead"), ["", "", "", "", "", "actions"]);
    tr.children[5].append(
      actionButton("Requeue", "", () => deadAction(tr, "requeue")),
      " ",
      actionButton("Drop", "danger", () => deadAction(tr, "drop")),
    );
    return tr;
  }, (tr, x) => {
    tr.dead = x;
    const td = tr.children;
    setText(td[0], x.id);
    setText(td[1], x.chargerId);
    setText(td[2], x.action);
    setText(td[3], x.error);
    td[3].title = x.error;
    setText(td[4], clock(x.deadAt));
    const [requeue, drop] = td[5].querySelectorAll("button");
    requeue.setAttribute("aria-label", `Requeue dead letter ${x.id}`);
    if (!drop.dataset.armed) drop.setAttribute("aria-label", `Drop dead letter ${x.id}`);
  });
}

function renderPorts(ports) {
  const select = $("r-port");
  keyed(select, ports, (p) => p.id, () => el("option"), (opt, p) => {
    opt.value = String(p.id);
    setText(opt, `${p.id} (${p.charger} / ${p.connector})`);
  });
  $("reserve-form").hidden = ports.length === 0;
}

// --- actions ---------------------------------------------------------------------------------

async function deadAction(tr, what) {
  const x = tr.dead;
  const result = $("dead-result");
  const button = tr.querySelector(what === "drop" ? "button.danger" : "button");
  if (what === "drop" && !button.dataset.armed) {
    button.dataset.armed = "1"; // a second press confirms
    setText(button, "Confirm drop");
    button.setAttribute("aria-label", `Confirm dropping dead letter ${x.id}`);
    setTimeout(() => { delete button.dataset.armed; setText(button, "Drop"); }, 5000);
    return;
  }
  try {
    const r = what === "drop"
      ? await api("DELETE", `/api/outbox/dead/${encodeURIComponent(x.id)}`)
      : await api("POST", `/api/outbox/dead/${encodeURIComponent(x.id)}/requeue`);
    setText(result, r.ok ? `${x.action} ${x.id}: ${r.data.status}` : `${x.action} ${x.id}: ${(r.data && r.data.error) || r.status}`);
  } catch (e) {
    setText(result, `failed: ${e.message}`);
  }
  refresh();
}

async function cancelReservation(tr) {
  const r = tr.reservation;
  const out = $("reserve-result");
  try {
    const res = await api("POST", "/api/ocpp/reservations/cancel", { portId: r.portId, reservationId: r.reservationId });
    setText(out, res.ok ? `Cancel reservation ${r.reservationId}: ${res.data.status}` : `Cancel reservation ${r.reservationId}: ${(res.data && res.data.error) || res.status}`);
  } catch (e) {
    setText(out, `failed: ${e.message}`);
  }
  refresh();
}

async function reserve(event) {
  event.preventDefault();
  const out = $("reserve-result");
  const id = Number($("r-id").value);
  const body = {
    portId: Number($("r-port").value),
    idTag: $("r-tag").value.trim(),
    reservationId: id,
    expiryDate: new Date(Date.now() + Number($("r-minutes").value) * 60000).toISOString(),
  };
  setText(out, "Sending…");
  try {
    const res = await api("POST", "/api/ocpp/reservations", body);
    setText(out, res.ok ? `Reservation ${id}: ${res.data.status}` : `Reservation ${id}: ${(res.data && res.data.error) || res.status}`);
    if (res.ok) $("r-id").value = String(id + 1);
  } catch (e) {
    setText(out, `failed: ${e.message}`);
  }
  refresh();
}

// --- login and the poll loop -----------------------------------------------------------------

function showLogin() {
  clearTimeout(timer);
  timer = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  setText($("updated"), "Sign in to see the depot");
  $("conn").className = "dot";
  $("token").focus();
}

async function login(event) {
  event.preventDefault();
  const res = await api("POST", "/api/login", { token: $("token").value });
  if (!res.ok) {
    const wait = res.status === 429 ? res.retryAfter : null;
    setText(
      $("login-error"),
      res.status === 401
        ? "That token is not right."
        : wait
          ? `Too many failed sign-ins from this address; try again in ${wait} s.`
          : "Sign-in failed.",
    );
    return;
  }
  $("token").value = "";
  setText($("login-error"), "");
  $("login").hidden = true;
  refresh();
}

async function logout() {
  await api("POST", "/api/logout");
  statusSeen = new Map();
  firstRender = true;
  for (const id of ["chargers"]) $(id).replaceChildren();
  for (const id of ["sessions", "reservations", "dead", "site-chargers"]) $(id).tBodies[0].replaceChildren();
  showLogin();
}

async function refresh() {
  clearTimeout(timer);
  try {
    const [depot, dead, reservations, site] = await Promise.all([
      api("GET", "/api/depot"),
      api("GET", "/api/outbox/dead"),
      api("GET", "/api/ocpp/reservations"),
      api("GET", "/api/site"),
    ]);
    if (!depot.ok) throw new Error(`HTTP ${depot.status}`);
    const d = depot.data;
    const now = Date.now();
    tokenRequired = d.tokenRequired;
    upstreamConfigured = d.upstreamConfigured;
    renderTiles(d, now);
    renderChargers(d, now);
    renderSessions(d, now);
    renderPorts(d.ports);
    if (reservations.ok) renderReservations(reservations.data.data);
    if (dead.ok) renderDead(dead.data.data);
    if (site.ok) renderSite(site.data);
    if (!$("r-id").value) $("r-id").value = String(Math.floor(now / 1000) % 1000000);
    $("app").hidden = false;
    $("login").hidden = true;
    $("logout").hidden = !tokenRequired;
    setText($("updated"), `Updated ${new Date(now).toLocaleTimeString()}`);
    setText($("version"), `Flipturn Edge Gateway ${d.version}`);
    $("conn").className = "dot live";
    document.body.dataset.generatedAt = d.generatedAt;
    firstRender = false;
    stale = 0;
  } catch (e) {
    if (e.message === "unauthorised") return; // the sign-in form is showing
    stale += 1;
    $("conn").className = "dot stale";
    setText($("updated"), `Gateway not answering (${e.message})`);
  }
  timer = setTimeout(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("reserve-form").addEventListener("submit", reserve);
  refresh();
});
