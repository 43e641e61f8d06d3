// The developer's own page (/dashboard/me): the caller's standing and
// newest requests from GET /v1/usage?recent=50, with the developer's own
// gateway key (or sign-in token). The key lives in this closure only: not
// in storage, not in the URL, not in the page.
"use strict";

(() => {
  const { usd, count, compact, ms, dateTime, el, td, fill, getJSON } = mg;
  const $ = (sel) => document.querySelector(sel);
  const RECENT = 50;
  const REFRESH_MS = 30e3;
  const PERIOD = { daily: "today", weekly: "this week", monthly: "this month", total: "in total" };
  const during = (p) => PERIOD[p] || "this " + p + " period";
  let key = null;
  let timer = null;

  function problem(msg) {
    const p = $("#problem");
    p.hidden = !msg;
    p.textContent = msg || "";
  }

  function standingTiles(u) {
    const tiles = [
      ["Spent " + during(u.period), usd(u.spend_usd)],
      ["Budget", u.budget_usd === null ? "none" : usd(u.budget_usd)],
      ["Left", u.remaining_usd === null ? "—" : usd(u.remaining_usd)],
      ["Resets", u.resets_at ? dateTime(u.resets_at) : "never"],
      ["Requests", count(u.requests)],
      ["Input tokens", compact(u.tokens.input)],
      ["Output tokens", compact(u.tokens.output)],
      ["Cache read", compact(u.tokens.cache_read)],
    ];
    return tiles.map(([k, v]) => el("div", { class: "tile" }, el("dt", null, k), el("dd", { dataset: { tile: k } }, v)));
  }

  async function load() {
    if (!key) return;
    let me;
    try {
      me = await getJSON("/v1/usage?recent=" + RECENT, { "x-api-key": key });
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        forget();
        problem("The gateway did not accept that key: " + err.message);
      } else {
        problem("Could not load your usage: " + err.message);
      }
      return;
    }
    problem(null);
    $("#signin").hidden = true;
    $("#mine").hidden = false;
    $("#recent-section").hidden = false;
    $("#who").textContent = me.key + (me.team ? " · team " + me.team : "");
    $("#standing").replaceChildren(...standingTiles(me.usage));
    const t = me.team_usage;
    $("#team-standing").textContent = t
      ? "Team " + me.team + ": " + usd(t.spend_usd) + " spent" + (t.budget_usd === null ? "" : " of " + usd(t.budget_usd) + ", " + usd(t.remaining_usd) + " left") + " " + during(t.period) + "."
      : "";
    fill(
      $("#recent"),
      (me.recent || []).map((r) =>
        el(
          "tr",
          { dataset: { requestId: r.request_id } },
          td(dateTime(r.ts)),
          td(r.model + " → " + (r.provider || "—")),
          td(el("span", { class: "badge " + (r.status < 400 ? "ok" : "bad") }, r.status), true),
          td(compact(r.input_tokens) + " / " + compact(r.output_tokens), true),
          td(compact(r.cache_read_tokens) + " / " + compact(r.cache_write_tokens), true),
          td(usd(r.cost_usd), true),
          td(ms(r.ttft_ms), true),
          td(ms(r.duration_ms), true)
        )
      ),
      "No requests yet."
    );
    document.body.dataset.loaded = String(Date.now());
  }

  function forget() {
    key = null;
    if (timer) clearInterval(timer);
    timer = null;
    $("#signin").hidden = false;
    $("#mine").hidden = true;
    $("#recent-section").hidden = true;
    $("#standing").replaceChildren();
    fill($("#recent"), []);
    $("#key").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("#key");
      key = input.value.trim() || null;
      input.value = "";
      if (!key) return;
      load();
      if (timer) clearInterval(timer);
      timer = setInterval(load, REFRESH_MS);
    });
    $("#forget").addEventListener("click", forget);
    $("#reload").addEventListener("click", load);
  });
})();
