// Shared by the activity page (app.js) and the developer's page (me.js):
// formatting, DOM building (text only: names from the ledger are never
// parsed as HTML) and JSON fetching with the gateway's error shape.
"use strict";

const mg = (() => {
  const nf0 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const usd = (v) => {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    const a = Math.abs(v);
    const digits = a !== 0 && a < 1 ? 4 : 2;
    return "$" + v.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: digits });
  };
  const count = (v) => (v === null || v === undefined ? "—" : nf0.format(v));
  const compact = (v) => {
    if (v === null || v === undefined) return "—";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "B";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return nf0.format(v);
  };
  const ms = (v) => {
    if (v === null || v === undefined) return "—";
    return v >= 10000 ? (v / 1000).toFixed(1) + " s" : nf0.format(v) + " ms";
  };
  const pct = (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(1) + "%");
  const time = (iso) => {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString("en-GB", { hour12: false });
  };
  const dateTime = (iso) => {
    const d = new Date(iso);
    return Number.isNaN(d.getTime())
      ? iso
      : d.toLocaleString("en-GB", { hour12: false, year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  };

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  // A table cell; numbers right-aligned.
  const td = (v, num) => el("td", num ? { class: "num" } : null, v);

  // Replace a table's body with rows (arrays of cells), or one "nothing
  // yet" row.
  function fill(table, rows, empty) {
    const body = table.tBodies[0];
    const cols = table.tHead ? table.tHead.rows[0].cells.length : 1;
    body.replaceChildren();
    if (!rows.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: cols }, empty || "Nothing in this range.")));
      return;
    }
    for (const cells of rows) {
      const tr = cells instanceof Node ? cells : el("tr", null, ...cells);
      body.append(tr);
    }
  }

  // GET a JSON endpoint; a non-2xx answer throws with the gateway's
  // Anthropic-shaped error message.
  async function getJSON(path, headers) {
    let r;
    try {
      r = await fetch(path, { headers: headers || {}, cache: "no-store", credentials: "same-origin" });
    } catch (e) {
      throw new Error("the gateway cannot be reached (" + e.message + ")");
    }
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      /* not JSON */
    }
    if (!r.ok) {
      const msg = body && body.error && body.error.message ? body.error.message : "HTTP " + r.status;
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  return { usd, count, compact, ms, pct, time, dateTime, el, td, fill, getJSON };
})();
