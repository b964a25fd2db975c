// tocsin console: plain JS, no build step. Talks to the service's API with the credentials given at sign-in
// (kept in this tab's sessionStorage only) and refreshes on the server-sent events of /ui/api/stream.
"use strict";

const state = { auth: sessionStorage.getItem("tocsin.auth"), page: "alerts", prefill: null, report: null, streamAbort: null };
const SEVERITIES = ["critical", "major", "minor", "warning", "info"];
const OUTCOME_COLORS = { delivered: "#73bf69", failed: "#f2495c", suppressed: "#b877d9", invalid: "#ff9830", retry: "#fade2a" };

// -- small helpers ------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const $ = (id) => document.getElementById(id);
function toTime(t) { return typeof t === "number" ? t : Date.parse(t) / 1000; }
function when(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(toTime(t) * 1000);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function ago(t) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, Date.now() / 1000 - toTime(t));
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
const badge = (cls, text) => h("span", { class: `badge ${cls}` }, text);
const chips = (labels) => Object.entries(labels || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
function table(headers, rows, empty) {
  if (!rows.length) return h("div", { class: "empty" }, empty || "nothing here");
  return h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows)));
}
function flash(text) {
  const el = $("flash"); el.textContent = text; el.hidden = false;
  clearTimeout(flash.t); flash.t = setTimeout(() => { el.hidden = true; }, 4000);
}

class ApiError extends Error { constructor(status, message) { super(message); this.status = status; } }
async function api(method, path, body) {
  const headers = state.auth ? { Authorization: state.auth } : {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
  if (r.status === 401) { signOut("Your key was not accepted; sign in again."); throw new ApiError(401, "unauthorized"); }
  if (!r.ok) throw new ApiError(r.status, (data && (data.detail || data.message || data.error)) || `HTTP ${r.status}`);
  return data;
}

// -- sign-in ------------------------------------------------------------------------------------------------
function signOut(message) {
  state.auth = null; sessionStorage.removeItem("tocsin.auth");
  if (state.streamAbort) state.streamAbort.abort();
  $("main").hidden = true; $("login").hidden = false; $("logout").hidden = true; $("me").textContent = "";
  $("login-error").textContent = message || "";
}
async function signIn(auth) {
  state.auth = auth;
  try {
    const me = await api("GET", "/ui/api/me");
    sessionStorage.setItem("tocsin.auth", auth);
    $("me").textContent = me.user || me.name;
    $("instance").textContent = `${me.instance} · ${me.version}`;
    state.providers = me.providers;
    $("login").hidden = true; $("main").hidden = false; $("logout").hidden = false;
    startStream(); route();
  } catch (e) {
    if (e.status !== 401) signOut(e.message);
    else $("login-error").textContent = auth ? "That key was not accepted." : "An API key is needed here.";
  }
}
$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("login-key").value.trim(), user = $("login-user").value.trim();
  if (user) signIn("Basic " + btoa(unescape(encodeURIComponent(`${user}:${$("login-password").value}`))));
  else if (key) signIn(`Bearer ${key}`);
  else signIn("");  // no keys configured: callers on this machine are admin
});
$("logout").addEventListener("click", () => signOut());

// -- live updates (server-sent events over fetch, so the key goes in a header) ---------------------------------
async function startStream() {
  if (state.streamAbort) state.streamAbort.abort();
  const ctrl = new AbortController(); state.streamAbort = ctrl;
  while (!ctrl.signal.aborted && state.auth !== null) {
    try {
      const r = await fetch("/ui/api/stream", { headers: state.auth ? { Authorization: state.auth } : {}, signal: ctrl.signal });
      if (!r.ok) throw new Error(`stream ${r.status}`);
      $("live").className = "live on";
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "", first = true;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const msg = buf.slice(0, i); buf = buf.slice(i + 2);
          if (msg.startsWith("event: changed")) { if (!first) refresh(); first = false; }
        }
      }
    } catch (e) { if (ctrl.signal.aborted) return; }
    $("live").className = "live off";
    await new Promise((res) => setTimeout(res, 2000));
  }
}
function refresh() { if (["alerts", "notifications", "silences"].includes(state.page)) render(true); }

// -- routing ------------------------------------------------------------------------------------------------
const pages = { alerts: alertsPage, silences: silencesPage, notifications: notificationsPage, registrations: registrationsPage, cluster: clusterPage, rules: rulesPage };
function route() {
  const name = (location.hash || "#alerts").slice(1).split("?")[0];
  state.page = pages[name] ? name : "alerts";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === state.page);
  render(false);
}
window.addEventListener("hashchange", route);
let renderSeq = 0;
async function render(live) {
  const seq = ++renderSeq, root = $("page");
  try {
    const content = await pages[state.page](live);
    if (seq !== renderSeq || !content) return;
    root.replaceChildren(content);
  } catch (e) {
    if (seq === renderSeq && e.status !== 401) root.replaceChildren(h("div", { class: "card error" }, `Could not load: ${e.message}`));
  }
}

// -- Alerts -------------------------------------------------------------------------------------------------
const alertFilter = { text: "", severity: "", tenant: "", states: { firing: true, pending: true, resolved: true } };
function chartView(chart) {
  const series = chart.series, outcomes = chart.outcomes, n = 60;
  const totals = Array.from({ length: n }, (_, i) => outcomes.reduce((s, o) => s + (series[o][i] || 0), 0));
  const max = Math.max(1, ...totals), w = 600, hgt = 110, bw = w / n;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt + 10}`); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "notifications per minute by outcome, last hour");
  for (let i = 0; i < n; i++) {
    let y = hgt;
    for (const o of outcomes) {
      const v = series[o][i] || 0; if (!v) continue;
      const bh = (v / max) * hgt; y -= bh;
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", i * bw + 1); r.setAttribute("y", y); r.setAttribute("width", bw - 2); r.setAttribute("height", bh);
      r.setAttribute("fill", OUTCOME_COLORS[o] || "#8e9297");
      const t = document.createElementNS("http://www.w3.org/2000/svg", "title"); t.textContent = `${o}: ${v}`; r.append(t);
      svg.append(r);
    }
  }
  const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
  line.setAttribute("x1", 0); line.setAttribute("x2", w); line.setAttribute("y1", hgt + 0.5); line.setAttribute("y2", hgt + 0.5); line.setAttribute("stroke", "#2c3036");
  svg.append(line);
  const sum = (o) => series[o].reduce((a, b) => a + b, 0);
  return h("div", { class: "card chart", id: "chart" },
    h("div", { class: "row" }, h("strong", {}, "Notifications per minute"), h("span", { class: "muted" }, "last hour, by outcome · peak ", String(Math.max(0, ...totals)), "/min")),
    svg,
    h("div", { class: "legend" }, outcomes.length ? outcomes.map((o) => h("span", {}, h("i", { style: `background:${OUTCOME_COLORS[o] || "#8e9297"}` }), `${o} ${sum(o)}`)) : h("span", {}, "no notifications in the last hour")));
}
function alertMatches(a) {
  const f = alertFilter;
  if (!f.states[a.state]) return false;
  if (f.severity && a.severity !== f.severity) return false;
  if (f.tenant && (a.tenant || "") !== f.tenant) return false;
  if (f.text) {
    const hay = [a.rule, a.title, ...Object.entries(a.labels).map(([k, v]) => `${k}=${v}`)].join(" ").toLowerCase();
    if (!f.text.toLowerCase().split(/\s+/).every((w) => hay.includes(w))) return false;
  }
  return true;
}
async function alertsPage() {
  const [data, chart] = await Promise.all([api("GET", "/ui/api/alerts"), api("GET", "/ui/api/chart")]);
  const list = h("div", { id: "alert-groups" });
  const draw = () => {
    const shown = data.alerts.filter(alertMatches);
    const groups = new Map();
    for (const a of shown) { if (!groups.has(a.rule)) groups.set(a.rule, []); groups.get(a.rule).push(a); }
    const order = { firing: 0, pending: 1, resolved: 2 };
    const sorted = [...groups.entries()].sort((x, y) => Math.min(...x[1].map((a) => order[a.state])) - Math.min(...y[1].map((a) => order[a.state])) || x[0].localeCompare(y[0]));
    list.replaceChildren(...(sorted.length ? sorted.map(([rule, alerts]) => h("section", { class: "group", "data-rule": rule },
      h("header", {}, rule, h("span", { class: "count" }, `${alerts.length}`),
        ...["firing", "pending", "resolved"].map((s) => { const c = alerts.filter((a) => a.state === s).length; return c ? badge(`s-${s}`, `${c} ${s}`) : null; })),
      alerts.sort((x, y) => order[x.state] - order[y.state] || SEVERITIES.indexOf(x.severity) - SEVERITIES.indexOf(y.severity)).map(alertRow)))
      : [h("div", { class: "card empty" }, data.alerts.length ? "No alert matches the filters." : "Nothing is firing. All quiet.")]));
  };
  const counts = (s) => data.alerts.filter((a) => a.state === s).length;
  const tenants = [...new Set(data.alerts.map((a) => a.tenant).filter(Boolean))];
  const filters = h("div", { class: "card" },
    h("div", { class: "filters" },
      h("label", {}, "Search rule, title or label", h("input", { id: "filter-text", value: alertFilter.text, placeholder: "doorbell room=front", oninput: (e) => { alertFilter.text = e.target.value; draw(); } })),
      h("label", {}, "Severity", h("select", { id: "filter-severity", onchange: (e) => { alertFilter.severity = e.target.value; draw(); } },
        h("option", { value: "" }, "any"), SEVERITIES.map((s) => h("option", { value: s, selected: alertFilter.severity === s }, s)))),
      h("label", {}, "Tenant", h("select", { id: "filter-tenant", onchange: (e) => { alertFilter.tenant = e.target.value; draw(); } },
        h("option", { value: "" }, "any"), tenants.map((t) => h("option", { value: t, selected: alertFilter.tenant === t }, t)))),
      h("div", { class: "states" }, ["firing", "pending", "resolved"].map((s) => h("label", {},
        h("input", { type: "checkbox", checked: alertFilter.states[s], onchange: (e) => { alertFilter.states[s] = e.target.checked; draw(); } }),
        badge(`s-${s}`, s), h("span", { class: "muted" }, String(counts(s))))))));
  draw();
  return h("div", {}, chartView(chart), filters, list);
}
function alertRow(a) {
  const actions = [];
  if (a.state === "firing" && !a.acknowledged) actions.push(h("button", { class: "ack", onclick: () => ackAlert(a) }, "Acknowledge"));
  if (a.state !== "resolved") actions.push(h("button", { class: "silence", onclick: () => silenceFrom(a) }, "Silence"));
  return h("div", { class: "alert", "data-alert": a.id, "data-state": a.state },
    h("div", { class: `stripe bg-${a.severity}` }),
    h("div", {},
      h("div", { class: "title" }, a.title),
      h("div", { class: "meta" }, badge(`s-${a.state}`, a.state), badge(`v-${a.severity}`, a.severity), ...chips(a.labels),
        h("span", {}, a.state === "resolved" ? `resolved ${ago(a.resolved_at)}` : a.state === "pending" ? `pending since ${ago(a.since)}` : `since ${ago(a.since)}`),
        a.tenant ? h("span", { class: "chip" }, `tenant ${a.tenant}`) : null,
        a.acknowledged ? h("span", { class: "chip acked" }, `acknowledged by ${a.ack ? a.ack.by : "?"}${a.ack && a.ack.comment ? `: ${a.ack.comment}` : ""}`) : null,
        a.silenced_by ? h("span", { class: "chip" }, "silenced") : null)),
    h("div", { class: "actions" }, actions));
}
async function ackAlert(a) {
  const comment = prompt(`Acknowledge "${a.title}"? Comment (optional):`, "");
  if (comment === null) return;
  await api("POST", `/v1/alerts/${encodeURIComponent(a.id)}/ack`, { comment });
  flash(`Acknowledged ${a.rule}: its repeats and escalation stop for this episode.`);
  render(true);
}
function silenceFrom(a) {
  state.prefill = { rule: a.rule, ...a.labels };
  location.hash = "#silences";
}

// -- Silences -----------------------------------------------------------------------------------------------
function parseMatchers(text) {
  const m = {};
  for (const line of text.split(/\n|,/)) {
    const t = line.trim(); if (!t) continue;
    const i = t.indexOf("="); if (i <= 0) throw new Error(`"${t}": write name=value`);
    m[t.slice(0, i).trim()] = t.slice(i + 1).trim();
  }
  return m;
}
async function silencesPage(live) {
  if (live && document.activeElement && document.activeElement.closest && document.activeElement.closest("#silence-form")) return null;
  const data = await api("GET", "/ui/api/silences");
  const pre = state.prefill; state.prefill = null;
  const matchersText = pre ? Object.entries(pre).map(([k, v]) => `${k}=${v}`).join("\n") : "";
  const preview = h("div", { id: "silence-preview" });
  const error = h("p", { class: "error", id: "silence-error" });
  const matchers = h("textarea", { id: "silence-matchers", placeholder: "rule=doorbell\nroom=~^front", rows: 4 }, matchersText);
  const showPreview = async () => {
    error.textContent = "";
    let m;
    try { m = parseMatchers(matchers.value); } catch (e) { error.textContent = e.message; return; }
    if (!Object.keys(m).length) { preview.replaceChildren(h("p", { class: "muted" }, "Give matchers to see what they would mute.")); return; }
    try {
      const r = await api("POST", "/ui/api/silences/preview", { matchers: m });
      preview.replaceChildren(h("p", { class: "muted" }, `Would mute ${r.alerts.length} firing alert${r.alerts.length === 1 ? "" : "s"} now (and future notifications that match):`),
        ...r.alerts.map((a) => h("div", { class: "row" }, badge(`v-${a.severity}`, a.severity), h("span", {}, a.title), ...chips(a.labels))));
    } catch (e) { error.textContent = e.message; }
  };
  matchers.addEventListener("input", showPreview);
  const form = h("form", { class: "card", id: "silence-form", onsubmit: async (ev) => {
    ev.preventDefault(); error.textContent = "";
    try {
      const body = { matchers: parseMatchers(matchers.value), duration: $("silence-duration").value, comment: $("silence-comment").value, created_by: $("silence-author").value || $("me").textContent };
      const s = await api("POST", "/v1/silences", body);
      flash(`Silence ${s.id.slice(0, 8)} created until ${when(s.end)}.`); render(false);
    } catch (e) { error.textContent = e.message; }
  } },
    h("h1", {}, pre ? "New silence for this alert" : "New silence"),
    h("div", { class: "two" },
      h("div", {},
        h("label", {}, "Matchers, one name=value a line (rule, severity, state, alert_id or a label; =~ for a regular expression)", matchers),
        h("div", { class: "filters" },
          h("label", {}, "Duration", h("input", { id: "silence-duration", value: "2h" })),
          h("label", {}, "Author", h("input", { id: "silence-author", value: $("me").textContent }))),
        h("label", {}, "Comment", h("input", { id: "silence-comment", placeholder: "why, for the others" })),
        h("button", { class: "primary", type: "submit", id: "silence-create" }, "Create silence"), error),
      h("div", {}, h("h2", {}, "Preview"), preview)));
  showPreview();
  const row = (s, expired) => h("tr", { "data-silence": s.id },
    h("td", {}, badge(expired ? "s-expired" : "s-active", expired ? "expired" : "active")),
    h("td", {}, ...chips(s.matchers)), h("td", {}, when(s.start)), h("td", {}, when(expired ? s.expired_at : s.end)),
    h("td", {}, s.created_by || "–"), h("td", {}, s.comment || "–"),
    h("td", {}, expired ? "" : h("button", { class: "danger expire", onclick: async () => { await api("DELETE", `/v1/silences/${s.id}`); flash("Silence expired."); render(false); } }, "Expire")));
  const heads = ["", "Matchers", "Starts", "Ends", "By", "Comment", ""];
  return h("div", {}, form,
    h("h2", {}, `Active (${data.active.length})`), table(heads, data.active.map((s) => row(s, false)), "No active silence."),
    h("h2", {}, `Expired (${data.expired.length})`), table(heads, data.expired.map((s) => row(s, true)), "None expired recently."));
}

// -- Notifications ------------------------------------------------------------------------------------------
function reportView(r) {
  const failed = Object.values(r.failed).reduce((a, b) => a + b, 0);
  const rows = [];
  for (const [p, v] of Object.entries(r.platforms)) {
    rows.push(h("tr", {}, h("td", {}, p), h("td", {}, badge("s-resolved", "delivered")), h("td", {}, v.delivered)));
    if (v.pending) rows.push(h("tr", {}, h("td", {}, p), h("td", {}, badge("s-pending", "pending")), h("td", {}, v.pending)));
    for (const [reason, n] of Object.entries(v.failed)) rows.push(h("tr", {}, h("td", {}, p), h("td", {}, badge("s-firing", "failed"), " ", reason), h("td", {}, n)));
  }
  return h("div", { class: "card", id: "report" },
    h("h2", {}, "Delivery report ", h("code", {}, r.id)),
    h("div", { class: "stats" }, [["targeted", r.targeted], ["delivered", r.delivered], ["pending", r.pending], ["failed", failed], ["held back", (r.suppressed || []).length]]
      .map(([k, v]) => h("div", { class: "stat" }, h("div", { class: "k" }, k), h("div", { class: "v" }, String(v))))),
    r.created ? h("p", { class: "muted" }, `created ${when(r.created)} · expires ${when(r.expires)}`) : null,
    table(["Platform", "Outcome", "Count"], rows, "No delivery was made."),
    (r.suppressed || []).length ? h("div", {}, h("h2", {}, "Held back"), table(["Time", "Stage", "Registration", "Reason"],
      r.suppressed.map((s) => h("tr", {}, h("td", {}, when(s.time)), h("td", {}, badge("s-held", s.stage)), h("td", { class: "mono" }, s.registration || "all"), h("td", {}, s.reason))))) : null);
}
async function showReport(id) {
  state.report = id;
  const r = await api("GET", `/v1/notifications/${encodeURIComponent(id)}`);
  const slot = $("report-slot"); if (slot) slot.replaceChildren(reportView(r));
}
async function notificationsPage() {
  const data = await api("GET", "/ui/api/notifications?limit=50");
  const slot = h("div", { id: "report-slot" });
  const lookup = h("form", { class: "row card", onsubmit: (ev) => { ev.preventDefault(); showReport($("report-id").value.trim()).catch((e) => slot.replaceChildren(h("div", { class: "card error" }, e.message))); } },
    h("input", { id: "report-id", placeholder: "notification id", style: "flex:1;min-width:200px;margin:0" }), h("button", { type: "submit" }, "Show report"));
  const rows = data.notifications.map((n) => {
    const failed = Object.values(n.failed).reduce((a, b) => a + b, 0);
    return h("tr", { class: "clickable", "data-notification": n.id, onclick: () => showReport(n.id) },
      h("td", {}, when(n.created)), h("td", {}, n.rule), h("td", {}, badge(`s-${n.state === "resolved" ? "resolved" : "firing"}`, n.state)),
      h("td", {}, n.title), h("td", {}, String(n.targeted)), h("td", {}, String(n.delivered)), h("td", {}, String(n.pending)), h("td", {}, failed ? h("span", { class: "error" }, String(failed)) : "0"));
  });
  const held = data.suppressed.map((s) => h("tr", { class: "clickable", "data-held": s.nid, onclick: () => showReport(s.nid) },
    h("td", {}, when(s.time)), h("td", {}, s.rule), h("td", {}, s.state), h("td", {}, badge("s-held", s.stage)), h("td", {}, s.reason)));
  if (state.report) showReport(state.report).catch(() => {});
  return h("div", {}, lookup, slot,
    h("h2", {}, "Sent"), table(["Created", "Rule", "State", "Title", "Targeted", "Delivered", "Pending", "Failed"], rows, "No notification was sent yet."),
    h("h2", {}, "Held back"), table(["Time", "Rule", "State", "Stage", "Why"], held, "Nothing was held back."));
}

// -- Registrations ------------------------------------------------------------------------------------------
const regQuery = { user_id: "", tags: "", app: "", provider: "", state: "" };
async function registrationsPage() {
  const params = new URLSearchParams({ limit: "200" });
  for (const [k, v] of Object.entries(regQuery)) if (v) params.set(k, v);
  let data, error = null;
  try { data = await api("GET", `/v1/registrations?${params}`); } catch (e) { data = { items: [] }; error = e.message; }
  const field = (k, label, ph) => h("label", {}, label, h("input", { id: `reg-${k}`, value: regQuery[k], placeholder: ph, onchange: (e) => { regQuery[k] = e.target.value.trim(); } }));
  const sel = (k, label, options) => h("label", {}, label, h("select", { id: `reg-${k}`, onchange: (e) => { regQuery[k] = e.target.value; } }, h("option", { value: "" }, "any"), options.map((o) => h("option", { value: o, selected: regQuery[k] === o }, o))));
  const form = h("form", { class: "card", onsubmit: (ev) => { ev.preventDefault(); render(false); } },
    h("div", { class: "filters" }, field("user_id", "User", "ann"), field("tags", "Tag expression", "home && !test"), field("app", "App", "com.example.alarms"),
      sel("provider", "Platform", state.providers || []), sel("state", "State", ["active", "suspect", "invalid"]),
      h("button", { class: "primary", type: "submit" }, "Search")), error ? h("p", { class: "error" }, error) : null);
  const rows = data.items.map((r) => h("tr", { "data-token": r.token },
    h("td", {}, r.provider), h("td", {}, badge(`s-${r.state}`, r.state), h("div", { class: "muted" }, r.state_since ? `since ${ago(r.state_since)}` : "")),
    h("td", {}, r.user_id || "–"), h("td", {}, r.app || "–"), h("td", {}, ...(r.tags || []).map((t) => h("span", { class: "chip" }, t))),
    h("td", {}, ago(r.last_success)), h("td", { class: "mono" }, r.token.length > 24 ? `${r.token.slice(0, 10)}…${r.token.slice(-8)}` : r.token),
    h("td", {}, h("div", { class: "row" },
      r.state !== "invalid" ? h("button", { onclick: async () => { await api("POST", `/ui/api/registrations/${r.provider}/${encodeURIComponent(r.token)}/disable`); flash("Registration disabled."); render(false); } }, "Disable") : null,
      h("button", { class: "danger", onclick: async () => { if (!confirm(`Delete the ${r.provider} registration of ${r.user_id || r.token}?`)) return; await api("DELETE", `/v1/registrations/${r.provider}/${encodeURIComponent(r.token)}`); flash("Registration deleted."); render(false); } }, "Delete")))));
  const health = { active: 0, suspect: 0, invalid: 0 };
  for (const r of data.items) health[r.state] = (health[r.state] || 0) + 1;
  return h("div", {}, form,
    h("div", { class: "stats" }, Object.entries(health).map(([k, v]) => h("div", { class: "stat" }, h("div", { class: "k" }, `${k} tokens (shown)`), h("div", { class: "v" }, String(v))))),
    table(["Platform", "State", "User", "App", "Tags", "Last success", "Token", ""], rows, "No registration matches."),
    data.next ? h("p", { class: "muted" }, "More match: narrow the search.") : null);
}

// -- Cluster ------------------------------------------------------------------------------------------------
async function clusterPage() {
  const c = await api("GET", "/v1/cluster");
  if (!c.enabled) return h("div", { class: "card" }, h("h1", {}, "Cluster"), h("p", {}, "This instance runs alone and sends everything itself."), h("p", { class: "muted" }, c.reason));
  const stat = (k, v) => h("div", { class: "stat" }, h("div", { class: "k" }, k), h("div", { class: "v" }, v === null || v === undefined ? "–" : String(v)));
  return h("div", {}, h("h1", {}, `Cluster ${c.cluster}`),
    h("div", { class: "stats" }, stat("this instance", c.instance), stat("role", c.role), stat("leader", c.leader), stat("term", c.term),
      stat("lease age", `${c.lease_age_s} s`), stat("echo lag", c.echo_age_s === null ? null : `${c.echo_age_s} s`), stat("backlog", c.cluster_backlog),
      stat("buffered", c.buffered_transitions), stat("takeovers", c.takeovers), stat("leader since", c.leader_since ? when(c.leader_since) : null), stat("ledger", c.ledger_entries)),
    table(["Member", "Rank", "Priority", "Version", "Role"], c.members.map((m) => h("tr", {}, h("td", {}, m.id), h("td", {}, m.rank), h("td", {}, m.priority), h("td", {}, m.version),
      h("td", {}, m.id === c.leader ? badge("s-active", "leader") : "follower")))));
}

// -- Rules --------------------------------------------------------------------------------------------------
async function rulesPage() {
  const data = await api("GET", "/ui/api/rules");
  const rl = data.last_reload;
  const results = h("div", { id: "test-results" });
  const ruleSel = h("select", { id: "test-rule" }, h("option", { value: "" }, "all loaded rules"), data.rules.map((r) => h("option", { value: r.id }, r.id)));
  const events = h("textarea", { id: "test-events", rows: 5, placeholder: '{"time": "2024-05-01T10:00:00Z", "topic": "home/front/doorbell", "payload": {"event": "ring"}}' });
  const until = h("input", { id: "test-until", placeholder: "10m" });
  const test = h("form", { class: "card", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/ui/api/rules/test", { events: events.value, rule: ruleSel.value || undefined, until: until.value || undefined });
      results.replaceChildren(h("p", { class: "muted" }, `${r.events} events, ${r.results.filter((x) => x.sent).length} notifications, ${r.results.filter((x) => !x.sent).length} held back`),
        table(["Time", "", "Rule", "Severity", "Text or why held"], r.results.map((x) => h("tr", {}, h("td", {}, x.time), h("td", {}, x.sent ? badge(`s-${x.state === "resolved" ? "resolved" : "firing"}`, x.state) : badge("s-held", `held: ${x.stage}`)),
          h("td", {}, x.rule), h("td", {}, badge(`v-${x.severity}`, x.severity)), h("td", {}, x.sent ? `${x.title}${x.body ? " — " + x.body : ""}` : x.reason))), "These events send nothing."));
    } catch (e) { results.replaceChildren(h("p", { class: "error" }, e.message)); }
  } }, h("h2", {}, "Test this rule"), h("p", { class: "muted" }, "Paste recorded events (JSON Lines, as for tocsin rules test); they replay on simulated time through the loaded rules and noise stages."),
    events, h("div", { class: "filters" }, h("label", {}, "Rule", ruleSel), h("label", {}, "Keep the clock running after the last event", until), h("button", { class: "primary", type: "submit", id: "test-run" }, "Run")), results);
  return h("div", {},
    h("div", { class: "stats" }, h("div", { class: "stat" }, h("div", { class: "k" }, "rules loaded"), h("div", { class: "v" }, String(data.rules.length))),
      h("div", { class: "stat" }, h("div", { class: "k" }, "last reload"), h("div", { class: "v" }, rl ? `${rl.outcome} ${ago(rl.time)}` : "none since start")),
      h("div", { class: "stat" }, h("div", { class: "k" }, "from"), h("div", { class: "v mono" }, data.paths.join(", ")))),
    rl && rl.errors.length ? h("div", { class: "card" }, h("h2", {}, "Errors of the last reload (the running rules stayed)"), h("pre", { class: "error mono" }, rl.errors.join("\n"))) : null,
    table(["Rule", "Kind", "Severity", "Topic", "Last fired", "Transitions"], data.rules.map((r) => h("tr", { "data-rule": r.id },
      h("td", {}, h("strong", {}, r.id), r.description ? h("div", { class: "muted" }, r.description) : null), h("td", {}, r.kind), h("td", {}, badge(`v-${r.severity}`, r.severity)),
      h("td", { class: "mono" }, r.topic || "–"), h("td", {}, r.last_fired ? ago(r.last_fired) : "never"),
      h("td", {}, Object.entries(r.transitions).map(([k, v]) => `${k} ${v}`).join(", ") || "–")))),
    test);
}

// -- start --------------------------------------------------------------------------------------------------
if (state.auth !== null) signIn(state.auth); else signOut();
