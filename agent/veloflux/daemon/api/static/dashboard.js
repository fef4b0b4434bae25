/* VeloFlux agent dashboard: polls /status, /api/v1/history and /api/v1/audit (and, once a
 * minute, /api/v1/forecast) and draws them as plain DOM and SVG.
 *
 * Why no chart library or framework: zero third-party code to audit or license, nothing
 * the strict Content-Security-Policy has to allow (no inline code or style, no eval),
 * no request beyond the agent itself (works offline and air-gapped), and three small
 * files the agent serves straight from its wheel with no build step.
 *
 * Everything the agent sends (server names, reasons, audit text) is untrusted: it reaches
 * the page only through textContent and setAttribute, never through innerHTML.
 */
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE_SIZE = 10;        // series colours .c0 .. .c9 in dashboard.css
  const DEFAULT_SELECTED = 8;
  const AUDIT_LIMIT = 30;
  const AUDIT_EVERY_POLLS = 3;
  const LARGE_POOL = 20;          // servers: a filter box, and rows drawn only when in view
  const MODES = new Set(["model", "capacity", "fallback", "hold", "unmanaged"]);
  const SOURCES = ["haproxy", "envoy", "prometheus"];
  // Forecasts change once per forecast.refresh (minutes): asking every tick would only
  // re-send the same figures.
  const FORECAST_POLL_SECONDS = 60;

  const state = {
    token: "",                // only ever in this variable, never stored
    status: null,
    ticks: [],                // history ticks, oldest first; each gets a parsed time `t`
    lastSeq: 0,
    startedAt: null,          // the agent's start, from the history: a change means a restart
    historyVersion: 0,        // bumped whenever `ticks` changes
    controlsEnabled: null,
    polls: 0,
    auditDue: true,
    lastGoodPoll: null,
    cards: new Map(),         // pool name -> card
    sections: new Map(),      // agent-panel section id -> key of what it shows
    timer: 0,
    polling: false,
    pollAgain: false,
    forecast: null,           // the last /api/v1/forecast answer
    forecastError: "",        // why the last read of it failed (the last answer stays)
    forecastVersion: 0,       // bumped at every read, answered or not
    forecastPolls: 0,
  };

  // --- DOM helpers ------------------------------------------------------------------

  const byId = (id) => document.getElementById(id);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function svgEl(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function table(head, rows, rowClass = "") {
    const thead = el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h }))));
    const body = el("tbody", {}, ...rows.map((cells) =>
      el("tr", rowClass ? { class: rowClass } : {}, ...cells.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: c }))))));
    return el("table", { class: "compact" }, thead, body);
  }

  // --- formatting -------------------------------------------------------------------

  const pad2 = (n) => String(n).padStart(2, "0");
  const hhmm = (ms) => { const d = new Date(ms); return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`; };
  const hhmmss = (ms) => `${hhmm(ms)}:${pad2(new Date(ms).getSeconds())}`;
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const num = (v, digits = 0) => (isNum(v) ? v.toFixed(digits) : "–");
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const byName = (a, b) => a.localeCompare(b, "en", { numeric: true });

  function clock(iso) {
    const ms = Date.parse(iso);
    if (!isNum(ms)) return "–";
    const d = new Date(ms);
    const today = d.toDateString() === new Date().toDateString();
    return today ? hhmmss(ms) : `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hhmm(ms)}`;
  }

  function ago(iso) {
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (!isNum(seconds)) return "";
    const span = Math.abs(seconds);
    const text = span < 90 ? `${Math.round(span)} s` : span < 5400 ? `${Math.round(span / 60)} min`
      : span < 172800 ? `${Math.round(span / 3600)} h` : `${Math.round(span / 86400)} d`;
    return seconds >= 0 ? `${text} ago` : `in ${text}`;
  }

  const when = (iso) => (iso ? `${clock(iso)} (${ago(iso)})` : "–");

  function duration(seconds) {
    if (!isNum(seconds)) return "–";
    if (seconds < 1) return `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms`;
    return seconds < 120 ? `${seconds.toFixed(1)} s` : `${Math.round(seconds / 60)} min`;
  }

  function switchbackText(sw) {
    if (!sw) return "tilt not started";
    const pairs = plural(sw.pairs ?? 0, "pair");
    const evidence = isNum(sw.mean_gain)
      ? `${sw.mean_gain >= 0 ? "+" : ""}${(sw.mean_gain * 100).toFixed(1)}% cost gain over ${pairs} (t ${num(sw.t_statistic, 1)})`
      : `${pairs} so far`;
    if (sw.state !== "testing") return `tilt ${sw.state}: ${evidence}`;
    const strength = sw.scale === 1 ? "full" : sw.scale === 0.5 ? "half" : `${Math.round(sw.scale * 100)}%`;
    return `tilt testing: ${evidence}${isNum(sw.scale) ? `, tried at ${strength} strength` : ""}`;
  }

  const modeClass = (mode) => `mode-${MODES.has(mode) ? mode : "unknown"}`;

  // --- fetching ---------------------------------------------------------------------

  class AgentError extends Error {}

  async function getJson(url) {
    let response;
    try {
      response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    } catch (err) {
      throw new AgentError(`no answer (${err.message})`);
    }
    if (!response.ok) throw new AgentError(`${url.split("?")[0]} answered ${response.status}`);
    return response.json().catch(() => { throw new AgentError(`${url.split("?")[0]} answered no JSON`); });
  }

  function pollSeconds() {
    const interval = state.status?.interval_seconds;
    return isNum(interval) ? Math.max(1, Math.min(interval / 2, 5)) : 2;
  }

  function schedulePoll(seconds) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, seconds * 1000);
  }

  async function poll() {
    if (state.polling) { state.pollAgain = true; return; }
    state.polling = true;
    try {
      await pollOnce();
    } catch (err) {
      showPollError(err);
    } finally {
      state.polling = false;
      schedulePoll(state.pollAgain ? 0 : pollSeconds());
      state.pollAgain = false;
    }
  }

  async function pollOnce() {
    const wantAudit = state.auditDue || state.polls % AUDIT_EVERY_POLLS === 0;
    const since = state.lastSeq ? `?since=${state.lastSeq}` : "";
    const [status, history, audit] = await Promise.all([
      getJson("/status"),
      getJson(`/api/v1/history${since}`),
      wantAudit ? getJson(`/api/v1/audit?limit=${AUDIT_LIMIT}`) : null,
    ]);
    await mergeHistory(history);
    state.status = status;
    if (audit) state.auditDue = false;
    render(audit);
    state.polls += 1;
    state.lastGoodPoll = Date.now();
    showLive();
    document.body.dataset.lastSeq = String(state.lastSeq);
    document.body.dataset.polls = String(state.polls);
  }

  /** Read the forecasts now and every FORECAST_POLL_SECONDS, apart from the main poll:
   * a forecast that cannot be read leaves the last one shown and the rest of the page live. */
  async function pollForecast() {
    try {
      state.forecast = await getJson("/api/v1/forecast");
      state.forecastError = "";
    } catch (err) {
      if (!(err instanceof AgentError)) console.error(err);
      state.forecastError = err.message;
    } finally {
      state.forecastVersion += 1;
      state.forecastPolls += 1;
      document.body.dataset.forecastPolls = String(state.forecastPolls);
      if (state.status) for (const card of state.cards.values()) renderForecast(card);
      setTimeout(pollForecast, FORECAST_POLL_SECONDS * 1000);
    }
  }

  // --- history ----------------------------------------------------------------------

  /** Start again when the agent restarted (a new started_at, or seq went back) or when
   * the page fell behind what the agent still holds. */
  function mustReload(history) {
    if (state.lastSeq === 0) return false;
    return history.started_at !== state.startedAt
      || history.newest_seq < state.lastSeq
      || state.lastSeq < history.oldest_seq - 1;
  }

  async function mergeHistory(history) {
    const before = state.ticks.length;
    const reload = mustReload(history);
    if (reload) {
      state.ticks = [];
      state.lastSeq = 0;
      history = await getJson("/api/v1/history");
    }
    state.startedAt = history.started_at;
    const fresh = history.ticks.filter((tick) => tick.seq > state.lastSeq);
    for (const tick of fresh) tick.t = Date.parse(tick.at);
    state.ticks.push(...fresh);
    trimHistory(history);
    if (reload || fresh.length || state.ticks.length !== before) state.historyVersion += 1;
    if (state.ticks.length) state.lastSeq = state.ticks[state.ticks.length - 1].seq;
  }

  /** Keep no more than the agent keeps: its window before the newest tick, its capacity. */
  function trimHistory(history) {
    const ticks = state.ticks;
    if (!ticks.length) return;
    const cutoff = ticks[ticks.length - 1].t - history.window_seconds * 1000;
    let drop = 0;
    while (drop < ticks.length && ticks[drop].t < cutoff) drop += 1;
    if (isNum(history.capacity)) drop = Math.max(drop, ticks.length - history.capacity);
    if (drop > 0) ticks.splice(0, drop);
  }

  function latestSample(pool) {
    for (let i = state.ticks.length - 1; i >= 0; i -= 1) {
      const sample = state.ticks[i].pools[pool];
      if (sample) return sample;
    }
    return null;
  }

  /** Index of `server` in a sample's `servers`, trying last tick's index first. */
  function indexOf(sample, server, hints) {
    const hint = hints.get(server);
    if (sample.servers[hint] === server) return hint;
    const found = sample.servers.indexOf(server);
    hints.set(server, found);
    return found;
  }

  /** Per server, [time, value] for every tick; null (a gap) where unknown or absent. */
  function seriesOf(pool, servers, column, scale = 1) {
    const hints = new Map();
    const out = servers.map(() => []);
    for (const tick of state.ticks) {
      const sample = tick.pools[pool];
      servers.forEach((server, k) => {
        const i = sample ? indexOf(sample, server, hints) : -1;
        const value = i >= 0 ? sample[column]?.[i] : null;
        out[k].push([tick.t, isNum(value) ? value * scale : null]);
      });
    }
    return out;
  }

  // --- rendering: header and live indicator ----------------------------------------

  function render(audit) {
    const started = performance.now();
    const status = state.status;
    renderHeader(status);
    renderControls(status.controls_enabled === true);
    renderAgentPanel(status);
    if (audit) renderAudit(audit.entries || []);
    renderPools();
    document.body.dataset.redrawMs = (performance.now() - started).toFixed(1);
  }

  function renderHeader(status) {
    setText(byId("version"), status.version || "?");
    document.title = `VeloFlux agent ${status.version || ""}${status.paused ? " (paused)" : ""}`;
    const badge = byId("state-badge");
    const text = status.paused ? `paused: ${status.pause_reason || "no reason given"}`
      : status.ready ? "running" : "running, not ready";
    setText(badge, text);
    badge.className = `badge ${status.paused ? "bad" : status.ready ? "good" : "warn"}`;
    renderTickInfo(status.last_attempt, status.last_success);
  }

  function renderTickInfo(attempt, success) {
    const info = byId("tick-info");
    if (!attempt) { setText(info, "no tick yet"); return; }
    let text = `last tick ${clock(attempt.at)} (${duration(attempt.duration_seconds)})`;
    if (!attempt.ok) {
      text += ` failed: ${attempt.error || "unknown error"}`;
      if (success) text += `; last success ${clock(success.at)}`;
    }
    setText(info, text);
    info.classList.toggle("bad-text", !attempt.ok);
  }

  function showLive() {
    const live = byId("last-poll");
    setText(live, `live · polled ${hhmmss(state.lastGoodPoll)}`);
    live.className = "live ok";
    document.body.classList.remove("stale");
  }

  function showPollError(err) {
    if (!(err instanceof AgentError)) console.error(err);
    const since = state.lastGoodPoll ? ` since ${hhmmss(state.lastGoodPoll)}` : "";
    const what = err instanceof AgentError ? `agent not answering${since}: ${err.message}` : `dashboard error: ${err.message}`;
    setText(byId("last-poll"), what);
    byId("last-poll").className = "live down";
    document.body.classList.add("stale"); // what is shown is no longer current
  }

  // --- controls -----------------------------------------------------------------------

  function renderControls(enabled) {
    if (state.controlsEnabled === enabled) return;
    state.controlsEnabled = enabled;
    byId("controls").hidden = !enabled;
    byId("readonly-note").hidden = enabled;
    document.body.classList.toggle("readonly", !enabled);
    for (const node of document.querySelectorAll(".control")) node.disabled = !enabled;
  }

  function showResult(kind, text) {
    const out = byId("control-result");
    out.className = `control-result ${kind}`;
    out.textContent = text;
  }

  async function write(method, path, body, done) {
    showResult("pending", "sending…");
    let response;
    try {
      response = await fetch(path, {
        method,
        cache: "no-store",
        headers: {
          Authorization: `Bearer ${state.token}`,
          "X-VeloFlux-Actor": "dashboard",
          "Content-Type": "application/json",
        },
        body: body === null ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      showResult("error", `not sent: the agent did not answer (${err.message})`);
      return;
    }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      showResult("error", `refused (${response.status}): ${answer.error || response.statusText}`);
      return;
    }
    showResult("ok", done(answer));
    state.auditDue = true;
    poll();
  }

  function pause() {
    const reason = byId("pause-reason").value.trim();
    write("POST", "/api/v1/pause", reason ? { reason } : {},
      (a) => `paused: ${a.reason || reason || "no reason given"}`);
  }

  const resume = () => write("POST", "/api/v1/resume", {}, () => "resumed: the agent writes weights again");

  function pin(key, weightText, ttlText) {
    const weight = Number(weightText);
    if (weightText.trim() === "" || !Number.isInteger(weight) || weight < 0 || weight > 256) {
      showResult("error", `not sent: the weight for ${key} must be a whole number 0..256`);
      return;
    }
    const ttl = ttlText.trim();
    write("POST", "/api/v1/overrides", { server: key, weight, ...(ttl ? { ttl } : {}) },
      (a) => `pinned ${a.server || key} at ${a.weight ?? weight}${a.expires_at ? ` until ${clock(a.expires_at)}` : ""}`);
  }

  function clearPin(key) {
    const [backend, ...rest] = key.split("/");
    const path = `/api/v1/overrides/${encodeURIComponent(backend)}/${encodeURIComponent(rest.join("/"))}`;
    write("DELETE", path, null,
      (a) => (a.cleared?.length ? `cleared ${a.cleared.join(", ")}` : `no pin on ${key} to clear`));
  }

  function wireControls() {
    byId("token").addEventListener("input", (ev) => { state.token = ev.target.value; });
    byId("pause").addEventListener("click", pause);
    byId("resume").addEventListener("click", resume);
  }

  // --- rendering: agent panel -------------------------------------------------------

  /** Rebuild a section only when what it shows changed (its key). */
  function renderSection(id, key, build) {
    const text = JSON.stringify(key);
    if (state.sections.get(id) === text) return;
    state.sections.set(id, text);
    byId(id).replaceChildren(...build());
  }

  const minute = () => Math.floor(Date.now() / 60000); // relative times refresh each minute

  function renderAgentPanel(status) {
    renderSection("ticks", status.ticks, () => ticksFigures(status.ticks || {}));
    renderSection("sources", status.sources, () => sourceChips(status.sources || {}));
    renderSection("model", [status.model, minute()], () => modelFigures(status.model));
    renderSection("trainings", [status.recent_trainings, minute()], () => trainingRows(status.recent_trainings || []));
    renderSection("pins", [status.overrides, state.controlsEnabled, minute()], () => pinList(status.overrides || []));
    renderSection("holds", [status.external_holds, status.external_changes_total, minute()],
      () => holdList(status.external_holds || [], status.external_changes_total));
  }

  function ticksFigures(ticks) {
    const reasons = Object.entries(ticks.failed_by_reason || {}).map(([r, n]) => `${r} ${n}`).join(", ");
    return [
      el("span", { class: "figure good-text", text: `${ticks.ok ?? 0} ok` }),
      el("span", { class: `figure ${ticks.failed ? "bad-text" : ""}`, text: `${ticks.failed ?? 0} failed` }),
      ...(reasons ? [el("span", { class: "muted", text: `(${reasons})` })] : []),
    ];
  }

  function sourceChips(sources) {
    const names = [...SOURCES.filter((n) => n in sources), ...Object.keys(sources).filter((n) => !SOURCES.includes(n))];
    return names.map((name) => {
      const source = sources[name] || {};
      const chip = el("span", { class: `chip ${source.up ? "up" : "down"}`, "data-source": name, "data-up": String(!!source.up) },
        el("b", { text: `${name} ${source.up ? "up" : "down"}` }), el("span", { class: "addr", text: source.address || "" }));
      const problems = [source.error, ...(source.problems || [])].filter(Boolean).join("; ");
      if (!source.up && problems) chip.append(el("span", { class: "chip-error", text: problems }));
      return chip;
    });
  }

  function versusNaive(label, model, naive) {
    if (!isNum(model)) return null;
    const row = el("div", { class: "kv" }, el("span", { class: "k", text: label }),
      el("span", { text: `${(model * 1000).toFixed(1)} ms` }));
    if (isNum(naive)) {
      const better = model < naive;
      const delta = naive ? ` (${better ? "−" : "+"}${Math.abs((1 - model / naive) * 100).toFixed(0)}%)` : "";
      row.append(el("span", { class: "muted", text: ` vs naive ${(naive * 1000).toFixed(1)} ms` }),
        el("span", { class: better ? "good-text" : "bad-text", text: delta }));
    }
    return row;
  }

  function modelFigures(model) {
    if (!model) return [el("p", { class: "warn-text", text: "no model: static/capacity weights" })];
    const m = model.metrics || {};
    const kv = (k, v) => el("div", { class: "kv" }, el("span", { class: "k", text: k }), el("span", { text: v }));
    return [
      kv("version", model.version || "–"),
      kv("trained", when(model.created_at)),
      versusNaive("p50 MAE", m.mae_p50_seconds, m.naive_mae_seconds),
      versusNaive("p90 pinball", m.pinball_p90, m.naive_pinball_p90),
    ].filter(Boolean);
  }

  function trainingRows(trainings) {
    const rows = trainings.map((t) => [
      el("span", { title: t.finished_at || "", text: ago(t.finished_at) || "–" }),
      el("span", { class: `outcome outcome-${["promoted", "not_promoted", "skipped", "failed"].includes(t.outcome) ? t.outcome : "unknown"}`, text: String(t.outcome) }),
      duration(t.duration_seconds),
      t.message || "",
    ]);
    return rows.length ? table(["when", "outcome", "took", "message"], rows).children : [el("caption", { text: "no training yet" })];
  }

  function pinList(overrides) {
    if (!overrides.length) return [el("p", { class: "muted", text: "no pins" })];
    const rows = overrides.map((o) => {
      const clear = el("button", { class: "control small", type: "button", text: "clear" });
      clear.disabled = !state.controlsEnabled;
      clear.addEventListener("click", () => clearPin(o.server));
      return [o.server, String(o.weight), o.expires_at ? when(o.expires_at) : "never", clear];
    });
    return [el("div", { class: "scroll" }, table(["server", "weight", "expires", ""], rows, "pin-entry"))];
  }

  function holdList(holds, total) {
    const note = el("p", { class: "muted", text: `external changes seen: ${total ?? 0}` });
    if (!holds.length) return [el("p", { class: "muted", text: "none held" }), note];
    const rows = holds.map((h) => [h.server, String(h.written), String(h.found), h.held_until ? when(h.held_until) : "until it changes"]);
    return [el("div", { class: "scroll" }, table(["server", "written", "found", "held until"], rows)), note];
  }

  function renderAudit(entries) {
    const body = byId("audit").tBodies[0];
    const rows = entries.map((e) => {
      const server = e.backend && e.server ? `${e.backend}/${e.server}` : e.server || "";
      const change = e.old !== undefined || e.new !== undefined ? `${e.old ?? "–"} → ${e.new ?? "–"}` : "";
      const reason = [e.reason, e.operator_reason].filter(Boolean).join(" · ");
      return el("tr", { class: "audit-entry" }, ...[clock(e.time), e.action, e.actor, server, change, reason]
        .map((text) => el("td", { text: String(text ?? "") })));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "no entries" })));
    body.replaceChildren(...rows);
  }

  // --- rendering: pools -----------------------------------------------------------------

  function poolNames() {
    const names = (state.status.plan?.pools || []).map((p) => p.backend);
    for (const tick of state.ticks) {
      for (const name of Object.keys(tick.pools || {})) if (!names.includes(name)) names.push(name);
    }
    return names;
  }

  function renderPools() {
    const names = poolNames();
    const container = byId("pools");
    for (const [name, card] of state.cards) {
      if (!names.includes(name)) { card.root.remove(); state.cards.delete(name); }
    }
    names.forEach((name, i) => {
      const card = state.cards.get(name) || createCard(name);
      if (container.children[i] !== card.root) container.insertBefore(card.root, container.children[i] || null);
      updateCard(card);
    });
  }

  /** The pool as the plan has it, or as its newest tick had it when the plan lacks it. */
  function poolView(name) {
    const plan = (state.status.plan?.pools || []).find((p) => p.backend === name);
    const sample = latestSample(name);
    if (plan) return { plan, sample, servers: plan.servers.map((s) => s.server) };
    return { plan: null, sample, servers: sample ? [...sample.servers] : [] };
  }

  function createCard(name) {
    const card = { name, selected: new Set(), colours: new Map(), chosen: false, rows: new Map(),
      rowsKey: "", valuesKey: "", drawnKey: "", charts: new Map() };
    const chart = (cls, title) => {
      const node = svgEl("svg", { class: `chart ${cls}`, role: "img", "aria-label": title });
      const figure = el("figure", { class: "chart-box" }, el("figcaption", { text: title }), node);
      card.charts.set(cls, node);
      attachHover(node, figure);
      return figure;
    };
    card.head = {
      mode: el("span", { class: "mode-badge" }),
      overload: el("span", { class: "overload-badge", text: "overload" }),
      meta: el("span", { class: "muted" }),
      switchback: el("span", { class: "switchback" }),
      reason: el("p", { class: "pool-reason muted" }),
    };
    card.legend = el("div", { class: "legend" });
    card.rungLegend = el("div", { class: "legend rung-legend" });
    card.filter = el("input", { type: "search", class: "filter", placeholder: "filter servers", "aria-label": "filter servers" });
    card.filter.addEventListener("input", () => applyFilter(card));
    card.body = el("tbody");
    card.forecast = el("div", { class: "forecast", "data-state": "loading" });
    card.root = el("section", { class: "pool", "data-pool": name },
      el("header", { class: "pool-head" }, el("h2", { text: name }), card.head.mode, card.head.overload, card.head.meta, card.head.switchback),
      card.head.reason,
      chart("weight-chart", "weight in effect (solid) and static weight (dashed)"), card.legend,
      chart("rung-chart", "rung per tick, with the pool's confidence (0..1)"), card.rungLegend,
      el("div", { class: "chart-pair" }, chart("latency-chart", "latency (ms)"), chart("error-chart", "error rate (%)")),
      card.forecast,
      card.filter,
      el("div", { class: "scroll table-box" }, el("table", { class: "servers" }, serverTableHead(), card.body)));
    state.cards.set(name, card);
    return card;
  }

  function serverTableHead() {
    const heads = ["", "server", "state", "weight now", "planned", "static", "latency ms", "error %", "confidence", "reason"];
    const row = el("tr", {}, ...heads.map((h) => el("th", { text: h })));
    row.append(el("th", { class: "control-col", text: "pin weight / ttl" }));
    return el("thead", {}, row);
  }

  function updateCard(card) {
    const view = poolView(card.name);
    renderPoolHead(card, view);
    if (!card.chosen && view.servers.length) chooseDefaultSelection(card, view);
    renderRows(card, view);
    drawCharts(card);
    renderForecast(card);
  }

  function renderPoolHead(card, view) {
    const info = view.plan || view.sample || {};
    const h = card.head;
    setText(h.mode, info.mode || "unknown");
    h.mode.className = `mode-badge ${modeClass(info.mode)}`;
    h.overload.hidden = !info.overload;
    const algorithm = view.plan ? view.plan.algorithm : "not in the current plan";
    setText(h.meta, `${algorithm} · confidence ${num(info.confidence, 2)} · ${plural(view.servers.length, "server")}`);
    setText(h.switchback, switchbackText(info.switchback));
    setText(h.reason, view.plan?.reason || "");
  }

  /** Up to 8: the servers furthest from their static weight (relative), then by name. */
  function chooseDefaultSelection(card, view) {
    const sample = view.sample;
    const weights = sample ? sample.servers.map((server, i) => [server, sample.weight[i], sample.static[i]])
      : view.plan.servers.map((s) => [s.server, s.current_weight, s.static_weight]);
    const drift = new Map(weights.map(([server, w, st]) =>
      [server, isNum(w) && isNum(st) ? Math.abs(w - st) / Math.max(Math.abs(st), 1) : 0]));
    const ranked = [...view.servers].sort((a, b) => (drift.get(b) || 0) - (drift.get(a) || 0) || byName(a, b));
    ranked.slice(0, DEFAULT_SELECTED).forEach((server) => select(card, server, true));
    card.chosen = true;
  }

  function select(card, server, on) {
    if (on && !card.selected.has(server)) {
      const used = new Set(card.colours.values());
      const free = [...Array(PALETTE_SIZE).keys()].find((slot) => !used.has(slot));
      card.colours.set(server, free ?? card.selected.size % PALETTE_SIZE);
      card.selected.add(server);
    } else if (!on) {
      card.selected.delete(server);
      card.colours.delete(server);
    }
    const row = card.rows.get(server);
    if (row) paintSwatch(card, row, server);
  }

  function paintSwatch(card, row, server) {
    const on = card.selected.has(server);
    row.check.checked = on;
    row.swatch.className = `swatch ${on ? `c${card.colours.get(server)}` : "off"}`;
  }

  // --- server table ---------------------------------------------------------------------

  function renderRows(card, view) {
    const rowsKey = view.servers.join("\n");
    if (rowsKey !== card.rowsKey) buildRows(card, view.servers);
    card.rowsKey = rowsKey;
    const valuesKey = `${state.status.plan?.generated_at}|${state.historyVersion}|${JSON.stringify(state.status.overrides)}`;
    if (valuesKey === card.valuesKey) return;
    card.valuesKey = valuesKey;
    fillRows(card, view);
  }

  function buildRows(card, servers) {
    card.rows = new Map();
    const fragment = document.createDocumentFragment();
    for (const server of servers) {
      const row = createRow(card, server);
      card.rows.set(server, row);
      paintSwatch(card, row, server);
      fragment.append(row.tr);
    }
    card.body.replaceChildren(fragment);
    card.filter.hidden = servers.length < LARGE_POOL;
    card.body.parentNode.classList.toggle("large", servers.length >= LARGE_POOL);
    applyFilter(card);
  }

  function createRow(card, server) {
    const cells = {};
    const cell = (name) => (cells[name] = el("td", { class: name }));
    const check = el("input", { type: "checkbox", "aria-label": `draw ${server}` });
    check.addEventListener("change", () => { select(card, server, check.checked); drawCharts(card); });
    const swatch = el("span", { class: "swatch off" });
    const tr = el("tr", { class: "server-row", "data-server": server },
      el("td", { class: "pick" }, el("label", {}, swatch, check)),
      el("td", { class: "server" }, el("span", { text: server })),
      cell("state"), cell("weight"), cell("planned"), cell("static"), cell("latency"), cell("errors"),
      cell("confidence"), cell("reason"), pinCell(card, server));
    return { tr, check, swatch, cells };
  }

  function pinCell(card, server) {
    const weight = el("input", { type: "number", min: "0", max: "256", step: "1", class: "control weight-input", "aria-label": `pin weight for ${server}` });
    const ttl = el("input", { type: "text", class: "control ttl-input", placeholder: "ttl", "aria-label": `pin ttl for ${server}` });
    const button = el("button", { type: "button", class: "control small", text: "pin" });
    for (const node of [weight, ttl, button]) node.disabled = !state.controlsEnabled;
    button.addEventListener("click", () => pin(`${card.name}/${server}`, weight.value, ttl.value));
    return el("td", { class: "pin control-col" }, el("span", { class: "pin-form" }, weight, ttl, button));
  }

  function fillRows(card, view) {
    const plan = new Map((view.plan?.servers || []).map((s) => [s.server, s]));
    const sample = view.sample;
    const at = new Map((sample?.servers || []).map((s, i) => [s, i]));
    const pins = new Set((state.status.overrides || []).map((o) => o.server));
    for (const [server, row] of card.rows) {
      const p = plan.get(server) || {};
      const i = at.get(server);
      const column = (name) => (i === undefined ? null : sample[name]?.[i]);
      const c = row.cells;
      const weightNow = isNum(column("weight")) ? column("weight") : p.current_weight;
      setText(c.state, p.state || "");
      c.state.className = `state state-${["UP", "DOWN", "MAINT", "DRAIN"].includes(p.state) ? p.state : "other"}`;
      setText(c.weight, num(weightNow));
      setText(c.planned, num(p.planned_weight ?? column("planned")));
      setText(c.static, num(p.static_weight ?? column("static")));
      setText(c.latency, num(column("latency_ms"), 1));
      setText(c.errors, isNum(column("error_rate")) ? (column("error_rate") * 100).toFixed(2) : "–");
      setText(c.confidence, num(p.confidence, 2));
      setText(c.reason, p.reason || "");
      row.tr.classList.toggle("pinned", pins.has(`${card.name}/${server}`));
    }
  }

  function applyFilter(card) {
    const text = card.filter.value.trim().toLowerCase();
    for (const [server, row] of card.rows) row.tr.hidden = text !== "" && !server.toLowerCase().includes(text);
  }

  // --- charts -----------------------------------------------------------------------------

  const MARGIN = { left: 46, right: 12, top: 8, bottom: 20 };
  const HEIGHTS = { "weight-chart": 220, "rung-chart": 56, "latency-chart": 160, "error-chart": 160 };
  const chartData = new WeakMap(); // svg -> what the hover read-out needs: frame, series, format

  /** Redraw the card's charts if new ticks arrived, or the selection or the width changed. */
  function drawCharts(card) {
    card.widths ??= measureWidths(card);
    const key = `${state.historyVersion}|${Object.values(card.widths)}|${[...card.selected].join("\n")}`;
    if (key === card.drawnKey) return;
    card.drawnKey = key;
    const servers = [...card.selected].sort(byName);
    const slots = servers.map((s) => card.colours.get(s));
    const series = (column, cls, scale) =>
      seriesOf(card.name, servers, column, scale).map((points, k) => ({ server: servers[k], slot: slots[k], points, cls }));
    const box = (cls) => ({ node: card.charts.get(cls), width: card.widths[cls], height: HEIGHTS[cls], domain: timeDomain() });
    drawLines(box("weight-chart"), [...series("static", "static-line"), ...series("weight", "weight-line")], "");
    drawRungs(box("rung-chart"), card);
    drawLines(box("latency-chart"), series("latency_ms", "latency-line"), " ms");
    drawLines(box("error-chart"), series("error_rate", "error-line", 100), "%");
    renderLegend(card, servers, slots);
  }

  /** Each chart's width in CSS pixels: its viewBox matches it, so text keeps its size. */
  function measureWidths(card) {
    const widths = {};
    for (const [cls, node] of card.charts) widths[cls] = Math.max(240, Math.round(node.parentNode.clientWidth || 640));
    return widths;
  }

  function timeDomain() {
    const ticks = state.ticks;
    if (!ticks.length) return [Date.now() - 60000, Date.now()];
    const first = ticks[0].t, last = ticks[ticks.length - 1].t;
    return first < last ? [first, last] : [first - 30000, last + 30000];
  }

  /** A fresh drawing area and its scales. */
  function frame({ node, width, height, domain }, yMax) {
    node.setAttribute("viewBox", `0 0 ${width} ${height}`);
    node.replaceChildren();
    const [t0, t1] = domain;
    const left = MARGIN.left, right = width - MARGIN.right, top = MARGIN.top, bottom = height - MARGIN.bottom;
    return {
      node, width, height, left, right, top, bottom, domain,
      x: (t) => left + ((t - t0) / (t1 - t0)) * (right - left),
      t: (x) => t0 + ((x - left) / (right - left)) * (t1 - t0),
      y: (v) => bottom - (v / yMax) * (bottom - top),
    };
  }

  function niceStep(span, count) {
    const raw = span / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
  }

  const digitsFor = (step) => Math.max(0, -Math.floor(Math.log10(step)));

  function drawLines(box, series, unit) {
    let max = 0;
    for (const s of series) for (const [, v] of s.points) if (v !== null && v > max) max = v;
    const step = niceStep(max || 1, 4);
    const yMax = Math.ceil((max || 1) / step - 1e-9) * step;
    const f = frame(box, yMax);
    drawYAxis(f, yMax, step, (v) => `${v.toFixed(digitsFor(step))}${unit === "%" ? unit : ""}`);
    drawTimeAxis(f);
    for (const s of series) {
      f.node.append(svgEl("path", { class: `${s.cls} c${s.slot}`, "data-server": s.server, d: pathOf(s.points, f) }));
    }
    const empty = !state.ticks.length ? "no history yet" : !series.length ? "no server selected" : "";
    if (empty) f.node.append(svgText((f.left + f.right) / 2, (f.top + f.bottom) / 2, empty, "empty", "middle"));
    const format = (v) => `${Number.isInteger(v) ? v : v.toFixed(digitsFor(step) + 1)}${unit}`;
    chartData.set(f.node, { f, series: series.filter((s) => s.cls !== "static-line"), format });
  }

  /** "Mx,y Lx,y ...": a null value lifts the pen, so unknown points are gaps. */
  function pathOf(points, f) {
    let d = "";
    let pen = false;
    for (const [t, v] of points) {
      if (v === null) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${f.x(t).toFixed(1)},${f.y(v).toFixed(1)}`;
      pen = true;
    }
    return d;
  }

  function svgText(x, y, text, cls, anchor = "start") {
    const node = svgEl("text", { x: x.toFixed(1), y: y.toFixed(1), class: cls, "text-anchor": anchor });
    node.textContent = text;
    return node;
  }

  function drawYAxis(f, yMax, step, label) {
    for (let i = 0; i * step <= yMax + step / 2; i += 1) {
      const v = i * step, y = f.y(v).toFixed(1);
      f.node.append(svgEl("line", { x1: f.left, x2: f.right, y1: y, y2: y, class: i === 0 ? "axis" : "grid" }),
        svgText(f.left - 6, f.y(v) + 4, label(v), "tick-label", "end"));
    }
  }

  const TIME_STEPS = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);

  /** Time labels at round local times (HH:MM), as many as fit. */
  function drawTimeAxis(f) {
    const [t0, t1] = f.domain;
    const room = Math.max(2, Math.floor((f.right - f.left) / 64));
    const step = TIME_STEPS.find((s) => (t1 - t0) / s <= room) || TIME_STEPS[TIME_STEPS.length - 1];
    const offset = -new Date(t0).getTimezoneOffset() * 60000;
    const label = step < 60000 ? hhmmss : hhmm;
    for (let t = Math.ceil((t0 + offset) / step) * step - offset; t <= t1; t += step) {
      const x = f.x(t);
      f.node.append(svgEl("line", { x1: x.toFixed(1), x2: x.toFixed(1), y1: f.top, y2: f.bottom, class: "grid" }));
      if (x > f.left + 18 && x < f.right - 14) f.node.append(svgText(x, f.bottom + 14, label(t), "tick-label", "middle"));
    }
  }

  /** One band per tick coloured by its rung (overload and failed ticks apart), and the
   *  pool's confidence (0..1) as a line over them. */
  function drawRungs(box, card) {
    const f = frame(box, 1);
    const ticks = state.ticks;
    const seen = new Set();
    const confidence = [];
    const interval = (state.status.interval_seconds || 10) * 1000;
    ticks.forEach((tick, i) => {
      const sample = tick.pools[card.name];
      const x = f.x(tick.t);
      const end = Math.min(f.right, f.x(ticks[i + 1] ? ticks[i + 1].t : tick.t + interval));
      const kind = !tick.ok ? "failed" : !sample ? "absent" : sample.overload ? "overload" : modeClass(sample.mode);
      seen.add(kind);
      if (kind !== "absent") {
        f.node.append(svgEl("rect", { x: x.toFixed(1), y: f.top, width: Math.max(0.5, end - x).toFixed(2),
          height: f.bottom - f.top, class: `rung ${kind}`, "data-seq": tick.seq }));
      }
      confidence.push([tick.t, sample && isNum(sample.confidence) ? sample.confidence : null]);
    });
    drawTimeAxis(f);
    f.node.append(svgText(f.left - 6, f.top + 8, "1", "tick-label", "end"), svgText(f.left - 6, f.bottom, "0", "tick-label", "end"),
      svgEl("path", { class: "confidence-line", d: pathOf(confidence, f) }));
    chartData.set(f.node, { f, series: [{ server: "confidence", points: confidence }], format: (v) => v.toFixed(2) });
    renderRungLegend(card, seen);
  }

  function renderLegend(card, servers, slots) {
    card.legend.replaceChildren(...servers.map((server, k) =>
      el("span", { class: "key" }, el("span", { class: `swatch c${slots[k]}` }), el("span", { text: server }))));
  }

  function renderRungLegend(card, seen) {
    const keys = [...seen].filter((k) => k !== "absent").sort();
    card.rungLegend.replaceChildren(...keys.map((k) =>
      el("span", { class: "key" }, el("span", { class: `swatch ${k}` }), el("span", { text: k.replace("mode-", "") }))),
    el("span", { class: "key" }, el("span", { class: "swatch confidence" }), el("span", { text: "confidence" })));
  }

  // --- forecast ---------------------------------------------------------------------------

  /** Pool ``name``'s entry of the forecast answer, or a sentence saying why there is none. */
  function forecastOf(name) {
    const body = state.forecast;
    if (!body) {
      return { state: "loading", note: state.forecastError ? `forecast not read: ${state.forecastError}` : "reading the forecast…" };
    }
    const pool = body.pools?.[name];
    if (pool?.horizons && Object.keys(pool.horizons).length) return { state: "shown", pool, body };
    if (pool?.problem) return { state: "problem", note: `no forecast: ${pool.problem}` };
    if (body.error) return { state: "unavailable", note: `no forecast: ${body.error}` };
    if (!body.generated_at) return { state: "pending", note: "no forecast yet: the first refresh has not run" };
    return { state: "absent", note: `no forecast: the refresh at ${clock(body.generated_at)} found no request history of this pool in forecast.source` };
  }

  /** Redraw the card's forecast when a new answer arrived (or a minute passed, for "ago"). */
  function renderForecast(card) {
    const key = `${state.forecastVersion}|${minute()}`;
    if (card.forecastKey === key) return;
    card.forecastKey = key;
    const view = forecastOf(card.name);
    card.forecast.dataset.state = view.state;
    card.forecast.dataset.generatedAt = state.forecast?.generated_at || "";
    if (view.state !== "shown") {
      card.forecast.replaceChildren(el("p", { class: "forecast-note muted", text: view.note }));
      return;
    }
    const horizons = Object.entries(view.pool.horizons)
      .map(([name, h]) => ({ name, ...h }))
      .sort((a, b) => a.horizon_seconds - b.horizon_seconds);
    card.forecast.replaceChildren(
      forecastHead(view.pool, view.body),
      el("div", { class: "forecast-body" }, forecastChart(view.pool, horizons),
        el("div", { class: "forecast-facts" }, recommendation(view.pool),
          el("p", { class: "forecast-reason muted", text: view.pool.reason || "" }),
          el("div", { class: "scroll" }, forecastTable(horizons)))));
  }

  /** Requests per second to about three significant figures: 1234, 123, 12.3, 1.23. */
  function rps(v) {
    if (!isNum(v)) return "–";
    const size = Math.abs(v);
    return v.toFixed(size >= 100 ? 0 : size >= 10 ? 1 : 2);
  }

  function forecastHead(pool, body) {
    const season = pool.season === "week" ? "weekly season" : pool.season === "day" ? "daily season" : `season ${pool.season}`;
    const parts = [`${season}, from the history to ${clock(pool.made_at)}`, `refreshed ${ago(body.generated_at)}`];
    const head = el("h3", { class: "forecast-title" }, el("span", { text: "Load forecast" }),
      el("span", { class: "muted", text: ` · ${parts.join(" · ")}` }));
    const stale = [body.error && `the last refresh failed (${body.error}): these figures are older`,
      state.forecastError && `not re-read: ${state.forecastError}`].filter(Boolean);
    return stale.length ? el("div", {}, head, el("p", { class: "forecast-note warn-text", text: stale.join("; ") })) : head;
  }

  function recommendation(pool) {
    const recommended = pool.recommended_servers;
    const rotation = pool.in_rotation;
    const line = el("p", { class: "recommendation" },
      el("span", { class: "figure recommended", text: isNum(recommended) ? String(recommended) : "–" }),
      el("span", { text: " servers recommended · " }),
      el("span", { class: "figure in-rotation", text: isNum(rotation) ? String(rotation) : "–" }),
      el("span", { text: " in rotation" }));
    if (isNum(recommended) && isNum(rotation)) {
      const gap = recommended - rotation;
      const [cls, text] = gap > 0 ? ["warn-text", `${plural(gap, "server")} short`]
        : gap < 0 ? ["muted", `${plural(-gap, "server")} to spare`] : ["good-text", "as many as needed"];
      line.append(el("span", { class: `rec-gap ${cls}`, text: ` (${text})` }));
    }
    return line;
  }

  function forecastTable(horizons) {
    const head = el("thead", {}, el("tr", {}, ...["ahead", "median req/s", "80% interval", "method"].map((h) => el("th", { text: h }))));
    const rows = horizons.map((h) => el("tr", { "data-horizon": h.name, title: `for ${clock(h.at)}` },
      el("td", { class: "horizon", text: h.name }),
      el("td", { class: "median", "data-value": String(h.requests_per_second), text: rps(h.requests_per_second) }),
      el("td", { class: "interval", text: `${rps(h.lower_80)}–${rps(h.upper_80)}` }),
      el("td", { class: "method", text: h.method || "–" })));
    return el("table", { class: "forecast-table" }, head, el("tbody", {}, ...rows));
  }

  /** The median at each horizon as a line and dots, the 80% interval as a band and
   *  whiskers (one horizon is a bar), and the peak the recommendation sized for. */
  function forecastChart(pool, horizons) {
    const node = svgEl("svg", { class: "chart forecast-chart", role: "img",
      "aria-label": "forecast median and 80% interval at each horizon" });
    const peak = pool.peak_requests_per_second;
    let max = isNum(peak) ? peak : 0;
    for (const h of horizons) for (const v of [h.upper_80, h.requests_per_second]) if (isNum(v) && v > max) max = v;
    const step = niceStep(max || 1, 4);
    const yMax = Math.ceil((max || 1) / step - 1e-9) * step;
    const f = frame({ node, width: 360, height: 160, domain: [-0.5, horizons.length - 0.5] }, yMax);
    drawYAxis(f, yMax, step, (v) => v.toFixed(digitsFor(step)));
    const known = horizons.map((h, i) => ({ ...h, x: f.x(i) })).filter((h) => isNum(h.lower_80) && isNum(h.upper_80));
    if (known.length > 1) {
      const edge = [...known.map((h) => [h.x, f.y(h.upper_80)]), ...[...known].reverse().map((h) => [h.x, f.y(h.lower_80)])];
      node.append(svgEl("path", { class: "forecast-band", d: `M${edge.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join("L")}Z` }));
    }
    const medians = horizons.map((h, i) => [i, isNum(h.requests_per_second) ? h.requests_per_second : null]);
    node.append(svgEl("path", { class: "forecast-median", d: pathOf(medians, f) }));
    if (isNum(peak)) {
      const y = f.y(peak).toFixed(1);
      node.append(svgEl("line", { class: "forecast-peak", x1: f.left, x2: f.right, y1: y, y2: y }),
        svgText(f.right - 2, f.y(peak) - 4, `peak ${rps(peak)} (q90)`, "tick-label", "end"));
    }
    horizons.forEach((h, i) => {
      const x = f.x(i);
      node.append(svgText(x, f.bottom + 14, h.name, "tick-label", "middle"));
      const group = svgEl("g", { class: "forecast-horizon", "data-horizon": h.name });
      const tip = svgEl("title");
      tip.textContent = `${h.name} ahead (${clock(h.at)}): median ${rps(h.requests_per_second)} req/s, `
        + `80% interval ${rps(h.lower_80)}–${rps(h.upper_80)}, ${h.method || "no method"}`;
      group.append(tip);
      if (isNum(h.lower_80) && isNum(h.upper_80)) {
        group.append(svgEl("line", { class: "forecast-whisker", x1: x.toFixed(1), x2: x.toFixed(1),
          y1: f.y(h.lower_80).toFixed(1), y2: f.y(h.upper_80).toFixed(1) }));
      }
      if (isNum(h.requests_per_second)) {
        group.append(svgEl("circle", { class: "forecast-point", cx: x.toFixed(1), cy: f.y(h.requests_per_second).toFixed(1), r: 4 }));
      }
      node.append(group);
    });
    return el("figure", { class: "chart-box forecast-figure" }, node);
  }

  // --- hover read-out -------------------------------------------------------------------

  function attachHover(node, figure) {
    const tip = el("div", { class: "tip", hidden: "" });
    figure.append(tip);
    for (const type of ["pointermove", "pointerdown"]) node.addEventListener(type, (ev) => showTip(node, tip, ev)); // pointerdown: a tap
    node.addEventListener("pointerleave", () => { tip.hidden = true; node.querySelector(".cursor")?.remove(); });
  }

  function showTip(node, tip, ev) {
    const chart = chartData.get(node);
    if (!chart || !chart.series.length || !chart.series[0].points.length) return;
    const box = node.getBoundingClientRect();
    const f = chart.f;
    const points = chart.series[0].points;
    const i = nearest(points, f.t((ev.clientX - box.left) * (f.width / box.width)));
    const t = points[i][0];
    let cursor = node.querySelector(".cursor");
    if (!cursor) { cursor = svgEl("line", { class: "cursor" }); node.append(cursor); }
    for (const [k, v] of [["x1", f.x(t)], ["x2", f.x(t)], ["y1", f.top], ["y2", f.bottom]]) cursor.setAttribute(k, v.toFixed(1));
    const values = chart.series.map((s) => `${s.server} ${s.points[i][1] === null ? "–" : chart.format(s.points[i][1])}`);
    tip.textContent = [hhmmss(t), ...values].join("\n");
    tip.hidden = false;
    const px = (f.x(t) * box.width) / f.width;
    tip.style.left = `${Math.min(px + 12, box.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${box.top - tip.parentNode.getBoundingClientRect().top + 4}px`;
  }

  /** Index of the point nearest to time `t` (points are in time order). */
  function nearest(points, t) {
    let lo = 0, hi = points.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (points[mid][0] < t) lo = mid + 1; else hi = mid;
    }
    return lo > 0 && t - points[lo - 1][0] < points[lo][0] - t ? lo - 1 : lo;
  }

  // --- start ------------------------------------------------------------------------------

  function redrawOnResize() {
    let timer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const cards = [...state.cards.values()];
        for (const card of cards) card.widths = measureWidths(card); // read every width, then draw
        for (const card of cards) drawCharts(card);
      }, 150);
    });
  }

  wireControls();
  redrawOnResize();
  poll();
  pollForecast();
})();
