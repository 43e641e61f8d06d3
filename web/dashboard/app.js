// The activity page (/dashboard): reads the documented admin endpoints
// (/admin/usage, /admin/budgets, /admin/reliability) and follows the live
// feed (/admin/live, server-sent events). Charts are uPlot, vendored.
"use strict";

(() => {
  const { usd, count, compact, ms, pct, time, dateTime, el, td, fill, getJSON } = mg;
  const $ = (sel) => document.querySelector(sel);
  const DAY = 86400e3;
  const HOUR = 3600e3;
  // Okabe–Ito: distinguishable with the common colour-vision deficiencies.
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"];
  const OTHER = "#8a8a8a";
  const TOP_SERIES = PALETTE.length;
  const LIVE_ROWS = 200;
  const REFRESH_MS = 30e3;
  const SPLIT_TITLE = { key: "By developer", team: "By team", model: "By model", provider: "By provider" };
  const METRIC = {
    cost_usd: { label: "Spend", fmt: usd, axis: (v) => "$" + (Math.abs(v) >= 1e4 ? compact(v) : String(+v.toFixed(2))) },
    requests: { label: "Requests", fmt: count, axis: compact },
    tokens: { label: "Tokens", fmt: count, axis: compact },
  };

  const state = { budgetStart: null, charts: {}, loading: false };

  // "provider/account", or the provider alone when its one account has no
  // name of its own.
  const where = (provider, account) =>
    (provider || "—") + (account && account !== provider && account !== "default" ? "/" + account : "");
  const tokensOf = (r) => r.input_tokens + r.output_tokens + r.cache_read_tokens + r.cache_write_tokens;
  const valueOf = (r, metric) => (metric === "tokens" ? tokensOf(r) : r[metric]);

  // The chosen range: `from`, the bucket size and a label.
  function currentRange() {
    const now = Date.now();
    const choice = $("#range").value;
    if (choice === "today") {
      const d = new Date(now);
      return { from: Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()), bucket: "hour", label: "today (UTC)" };
    }
    if (choice === "30d") return { from: now - 30 * DAY, bucket: "day", label: "last 30 days" };
    if (choice === "budget") {
      const d = new Date(now);
      const from = state.budgetStart ? Date.parse(state.budgetStart) : Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
      const label = "budget period since " + dateTime(new Date(from).toISOString());
      return { from, bucket: now - from > 3 * DAY ? "day" : "hour", label };
    }
    return { from: now - 7 * DAY, bucket: "hour", label: "last 7 days" };
  }

  // Bucket start times (seconds, for uPlot) from `from` to now.
  function buckets(from, bucket) {
    const step = bucket === "day" ? DAY : HOUR;
    const out = [];
    for (let t = Math.floor(from / step) * step; t <= Date.now() && out.length < 1000; t += step) out.push(t / 1000);
    return out;
  }

  const bucketOf = (group, bucket) => {
    const step = bucket === "day" ? DAY : HOUR;
    return (Math.floor(Date.parse(group) / step) * step) / 1000;
  };

  // Stacked series from split rows: the biggest few by `metric`, the rest
  // folded into "other".
  function splitSeries(rows, metric, bucket, xs) {
    const totals = new Map();
    for (const r of rows) totals.set(r.split, (totals.get(r.split) || 0) + valueOf(r, metric));
    const names = [...totals.entries()].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]).map(([n]) => n);
    const shown = names.length > TOP_SERIES ? names.slice(0, TOP_SERIES - 1) : names;
    const folded = names.length > shown.length;
    const index = new Map(shown.map((n, i) => [n, i]));
    const at = new Map(xs.map((x, i) => [x, i]));
    const series = shown.map((n, i) => ({ label: n, color: PALETTE[i], values: xs.map(() => 0) }));
    if (folded) series.push({ label: "other", color: OTHER, values: xs.map(() => 0) });
    for (const r of rows) {
      const i = at.get(bucketOf(r.group, bucket));
      if (i === undefined) continue;
      const s = index.has(r.split) ? series[index.get(r.split)] : series[series.length - 1];
      if (s) s.values[i] += valueOf(r, metric);
    }
    return series;
  }

  // Draw (or redraw) a stacked area chart into `target`.
  function drawStacked(key, target, xs, series, fmt, axis) {
    if (state.charts[key]) {
      state.charts[key].destroy();
      delete state.charts[key];
    }
    target.replaceChildren();
    if (!series.length) {
      target.append(el("p", { class: "muted empty-chart" }, "No requests in this range."));
      return;
    }
    const raw = series.map((s) => s.values);
    const stacked = [];
    let acc = xs.map(() => 0);
    for (const values of raw) {
      acc = acc.map((a, i) => a + values[i]);
      stacked.push(acc);
    }
    const opts = {
      width: Math.max(target.clientWidth, 280),
      height: 240,
      scales: { x: { time: true } },
      axes: [{ stroke: "#333", grid: { stroke: "#e5e5e5" } }, { stroke: "#333", grid: { stroke: "#e5e5e5" }, size: 64, values: (u, vals) => vals.map(axis) }],
      series: [
        { value: (u, v) => (v === null ? "—" : dateTime(new Date(v * 1000).toISOString())) },
        ...series.map((s, si) => ({
          label: s.label,
          stroke: s.color,
          fill: s.color + "55",
          width: 1.5,
          points: { show: false },
          value: (u, v, _s, idx) => (idx === null || idx === undefined ? "—" : fmt(raw[si][idx])),
        })),
      ],
      bands: series.slice(1).map((_, i) => ({ series: [i + 2, i + 1] })),
      legend: { live: true },
    };
    state.charts[key] = new uPlot(opts, [xs, ...stacked], target);
  }

  function showProblem(err) {
    const p = $("#problem");
    if (!err) {
      p.hidden = true;
      p.textContent = "";
      return;
    }
    p.hidden = false;
    p.textContent =
      err.status === 401 || err.status === 403
        ? "The gateway refused the admin key (" + err.message + "). Reload the page to enter it again."
        : "Could not load the figures: " + err.message;
  }

  function renderTotals(modelRows, label) {
    const sum = (f) => modelRows.reduce((a, r) => a + (r[f] || 0), 0);
    const requests = sum("requests");
    const savings = sum("cache_savings_usd");
    const tiles = [
      ["Spend", usd(sum("cost_usd"))],
      ["Requests", count(requests)],
      ["Input tokens", compact(sum("input_tokens"))],
      ["Output tokens", compact(sum("output_tokens"))],
      ["Cache read", compact(sum("cache_read_tokens"))],
      ["Cache write", compact(sum("cache_write_tokens"))],
      ["Error rate", requests ? pct(sum("errors") / requests) : "—"],
      ["Cache savings", usd(savings)],
    ];
    $("#totals").replaceChildren(...tiles.map(([k, v]) => el("div", { class: "tile" }, el("dt", null, k), el("dd", { dataset: { tile: k } }, v))));
    $("#range-label").textContent = "· " + label;
  }

  function renderBreakdown(rows, split) {
    $("#h-breakdown").textContent = SPLIT_TITLE[split];
    fill(
      $("#breakdown"),
      rows.map((r) => [
        td(r.group),
        td(count(r.requests), true),
        td(compact(r.input_tokens), true),
        td(compact(r.output_tokens), true),
        td(compact(r.cache_read_tokens), true),
        td(compact(r.cache_write_tokens), true),
        td(usd(r.cost_usd), true),
        td(count(r.errors), true),
        td(ms(Math.round(r.avg_latency_ms)), true),
      ])
    );
  }

  function renderBudgets(budgets) {
    fill(
      $("#budgets"),
      budgets.map((b) => {
        const used = Math.max(0, Math.min(1, b.used));
        const meter = el("meter", { min: 0, max: 1, low: 0.75, high: 0.9, optimum: 0, value: used.toFixed(4), "aria-label": b.scope + " " + b.name + " budget used" });
        return el(
          "tr",
          { class: b.used >= 1 ? "over" : null },
          td(el("span", null, el("span", { class: "muted" }, b.scope + " "), b.name)),
          td(el("span", null, b.period, b.period_end ? el("span", { class: "muted small block" }, "resets " + dateTime(b.period_end)) : null)),
          td(usd(b.limit_usd), true),
          td(usd(b.spent_usd), true),
          td(usd(b.left_usd), true),
          td(el("span", { class: "used" }, meter, " " + pct(b.used))),
          td(count(b.requests), true)
        );
      }),
      "No key or team has a budget."
    );
  }

  function renderReliability(rel) {
    fill(
      $("#providers"),
      rel.providers.map((p) => [td(p.provider), td(count(p.requests), true), td(count(p.errors), true), td(pct(p.error_rate), true), td(count(p.failovers), true)])
    );
    fill(
      $("#circuits"),
      rel.circuits.map((c) => [
        td(where(c.provider, c.account)),
        td(el("span", { class: "badge state-" + c.state }, c.state.replace(/_/g, " "))),
        td(count(c.attempts), true),
        td(pct(c.error_rate), true),
        td(count(c.throttled), true),
        td(count(c.opened_total), true),
      ]),
      "No circuits yet."
    );
    fill($("#ttft"), rel.ttft_by_model.map((t) => [td(t.model), td(ms(t.p50_ms), true), td(ms(t.p95_ms), true), td(count(t.samples), true)]));
  }

  function renderSavings(modelRows) {
    const rows = modelRows.filter((r) => r.cache_read_tokens > 0).sort((a, b) => (b.cache_savings_usd || 0) - (a.cache_savings_usd || 0));
    fill(
      $("#savings"),
      rows.map((r) => [td(r.group), td(compact(r.cache_read_tokens), true), td(r.cache_savings_usd === null ? "no price" : usd(r.cache_savings_usd), true), td(usd(r.cost_usd), true)]),
      "No prompt-cache reads in this range."
    );
  }

  function renderSessions(rows) {
    fill($("#sessions"), rows.map((r) => [td(el("code", null, r.group)), td(count(r.requests), true), td(compact(tokensOf(r)), true), td(usd(r.cost_usd), true)]));
  }

  async function refresh() {
    if (state.loading) return;
    state.loading = true;
    const split = $("#split").value;
    const metric = $("#metric").value;
    try {
      // Budgets first: the "budget period" range starts where they do.
      const budgets = await getJSON("/admin/budgets");
      const periodic = budgets.budgets.find((b) => b.period_start);
      state.budgetStart = periodic ? periodic.period_start : null;
      $("#range option[value=budget]").textContent = periodic ? "Budget period (" + periodic.period + ")" : "Budget period";
      renderBudgets(budgets.budgets);
      const r = currentRange();
      const q = "from=" + encodeURIComponent(new Date(r.from).toISOString());
      const [byModel, series, perBucket, breakdown, rel, sessions] = await Promise.all([
        getJSON("/admin/usage?group_by=model&" + q),
        getJSON("/admin/usage?group_by=" + r.bucket + "&split=" + split + "&" + q),
        getJSON("/admin/usage?group_by=" + r.bucket + "&" + q),
        getJSON("/admin/usage?group_by=" + split + "&" + q),
        getJSON("/admin/reliability?" + q),
        getJSON("/admin/usage?group_by=session&limit=10&" + q),
      ]);
      const where = byModel.shared ? "the fleet's shared PostgreSQL store" : "this node's SQLite ledger";
      $("#store").textContent = "Usage from " + where;
      $("#footer-store").textContent = " (" + where + ")";
      renderTotals(byModel.rows, r.label);
      const xs = buckets(r.from, r.bucket);
      const m = METRIC[metric];
      $("#h-chart").textContent = m.label + " over time, by " + (split === "key" ? "developer" : split);
      drawStacked("main", $("#chart"), xs, splitSeries(series.rows, metric, r.bucket, xs), m.fmt, m.axis);
      const at = new Map(xs.map((x, i) => [x, i]));
      const kinds = [
        ["input", "input_tokens", PALETTE[0]],
        ["output", "output_tokens", PALETTE[1]],
        ["cache read", "cache_read_tokens", PALETTE[2]],
        ["cache write", "cache_write_tokens", PALETTE[3]],
      ].map(([label, field, color]) => ({ label, field, color, values: xs.map(() => 0) }));
      for (const row of perBucket.rows) {
        const i = at.get(bucketOf(row.group, r.bucket));
        if (i !== undefined) for (const k of kinds) k.values[i] += row[k.field];
      }
      drawStacked("tokens", $("#tokens-chart"), xs, perBucket.rows.length ? kinds : [], count, compact);
      renderBreakdown(breakdown.rows, split);
      renderReliability(rel);
      renderSavings(byModel.rows);
      renderSessions(sessions.rows);
      showProblem(null);
      document.body.dataset.loaded = String(Date.now());
    } catch (err) {
      showProblem(err);
    } finally {
      state.loading = false;
    }
  }

  function liveRow(e) {
    const who = e.key ? el("span", null, e.key, e.team ? el("span", { class: "muted" }, " · " + e.team) : null) : el("span", { class: "muted" }, "—");
    let route = e.model + " → " + where(e.provider, e.account);
    if (e.upstream_model && e.upstream_model !== e.model) route += " (" + e.upstream_model + ")";
    const ok = e.status > 0 && e.status < 400;
    return el(
      "tr",
      { class: "fresh", title: e.session ? "session " + e.session : null, dataset: { requestId: e.request_id, session: e.session || "" } },
      td(time(e.ts)),
      td(who),
      td(route),
      td(el("span", { class: "badge " + (ok ? "ok" : "bad"), title: e.error || null }, e.status || "—"), true),
      td(compact(e.input_tokens) + " / " + compact(e.output_tokens), true),
      td(compact(e.cache_read_tokens) + " / " + compact(e.cache_write_tokens), true),
      td(e.cost_usd === null ? "—" : usd(e.cost_usd), true),
      td(ms(e.ttft_ms), true),
      td(ms(e.duration_ms), true),
      td(e.cache_hit ? "hit" : ""),
      td(count(e.attempts), true)
    );
  }

  function follow() {
    const status = $("#live-status");
    const body = $("#live").tBodies[0];
    fill($("#live"), [], "Waiting for requests…");
    const source = new EventSource("/admin/live");
    source.onopen = () => {
      status.textContent = "live";
      status.className = "badge ok";
    };
    source.onerror = () => {
      status.textContent = source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…";
      status.className = "badge bad";
    };
    source.addEventListener("request", (m) => {
      let e;
      try {
        e = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      const placeholder = body.querySelector("tr.empty");
      if (placeholder) placeholder.remove();
      body.prepend(liveRow(e));
      while (body.rows.length > LIVE_ROWS) body.deleteRow(-1);
    });
    source.addEventListener("lagged", (m) => {
      let missed = "some";
      try {
        missed = JSON.parse(m.data).missed;
      } catch (_) {
        /* keep "some" */
      }
      status.textContent = "live (missed " + missed + ")";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const id of ["#range", "#split", "#metric"]) $(id).addEventListener("change", refresh);
    $("#refresh").addEventListener("click", refresh);
    $("#controls").addEventListener("submit", (e) => e.preventDefault());
    if (window.ResizeObserver) {
      const ro = new ResizeObserver(() => {
        for (const [key, chart] of Object.entries(state.charts)) {
          const target = key === "main" ? $("#chart") : $("#tokens-chart");
          if (target.clientWidth && Math.abs(target.clientWidth - chart.width) > 4) chart.setSize({ width: target.clientWidth, height: 240 });
        }
      });
      ro.observe($("main"));
    }
    refresh();
    follow();
    setInterval(refresh, REFRESH_MS);
  });
})();
