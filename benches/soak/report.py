#!/usr/bin/env python3
"""Summary of one benches/soak.sh run (Python 3 standard library only).

Reads the work directory the soak left behind:
  requests.jsonl   one line per request (driver.py)
  events.tsv       kind, start, end, ok, detail: the injected faults, reloads,
                   upgrades, old processes' exits and the final stop
  samples.tsv      label, time, pid, RSS (KiB), open fds of the serving gateway
  ledger.db        the gateway's SQLite usage ledger (table `requests`)
  audit.jsonl      the gateway's audit log
and prints a few small tables. Exit status 0 when every target holds:
no failure outside an injected outage, one ledger row (and one audit line)
per answered request with the usage the client saw, and RSS and open fds of
the serving process flat within 10 % under load.

A failed request is put down to an outage when its time window overlaps the
outage, widened by --tail seconds after the service was back (circuits close
and Redis reconnects on their own schedule), and its failure is the kind that
outage causes: upstream down -> 502/503/504/529 or a stream or body cut off;
Redis down -> 529 (the default `on_redis_error` refuses budgeted requests).
"""

import argparse
import collections
import json
import os
import sqlite3
import sys


def load_events(path):
    events = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 5:
                events.append({"kind": parts[0], "start": float(parts[1]), "end": float(parts[2]),
                               "ok": parts[3] == "1", "detail": parts[4]})
    return events


def load_samples(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                label, t, pid, rss, fds, clients, upstream, redis = line.rstrip("\n").split("\t")
                out.append({"label": label, "t": float(t), "pid": int(pid), "rss": int(rss), "fds": int(fds),
                            "conns": int(clients) + int(upstream) + int(redis),
                            "detail": f"{clients}/{upstream}/{redis}"})
    return out


UPSTREAM_STATUSES = {502, 503, 504, 529}
CUT = {"stream_error", "stream_incomplete", "body_error"}


def classify(rec, up_windows, redis_windows, tail):
    """ok, upstream, redis or other. When the request overlaps both kinds of
    outage (one began within `tail` of the other's end), the later one wins:
    it is the one still going on."""
    if rec["outcome"] == "ok":
        return "ok"

    def latest(windows):
        hits = [start for start, end in windows if rec["t0"] <= end + tail and rec["t1"] >= start]
        return max(hits) if hits else None

    cands = []
    if rec["status"] in UPSTREAM_STATUSES or rec["outcome"] in CUT:
        t = latest(up_windows)
        if t is not None:
            cands.append((t, "upstream"))
    if rec["status"] == 529:
        t = latest(redis_windows)
        if t is not None:
            cands.append((t, "redis"))
    return max(cands)[1] if cands else "other"


def nearest_event(rec, events, t_base):
    best = None
    for e in events:
        if e["kind"] in ("old_exit",):
            continue
        d = 0.0 if e["start"] <= rec["t1"] and rec["t0"] <= e["end"] else min(
            abs(rec["t0"] - e["end"]), abs(e["start"] - rec["t1"]))
        if best is None or d < best[0]:
            best = (d, e)
    if best is None or best[0] > 15:
        return "-"
    d, e = best
    where = "during" if d == 0 else f"{d:.1f}s from"
    return f"{where} {e['kind']}@{e['start'] - t_base:.1f}s"


def likely_cause(rec, events):
    """What a failure outside an outage coincided with, for the reader."""
    exits = {e["detail"].split()[0]: e["end"] for e in events if e["kind"] == "old_exit"}
    for e in events:
        if e["kind"] == "upgrade":
            old = e["detail"].split()[0]
            if e["start"] <= rec["t0"] <= exits.get(old, float("inf")):
                what = "keep-alive connection closed" if rec["outcome"] == "transport" and rec["reused"] else "failed"
                return f"{what} while pid {old} drained (upgraded at {{:.1f}}s)", e["start"]
        if e["kind"] == "stop" and rec["t1"] >= e["start"]:
            return "during the final stop ({:.1f}s)", e["start"]
    return None, None


def pct(a, b):
    return 0.0 if a == 0 else (b - a) * 100.0 / a


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--grace", type=float, default=20.0, help="grace_period of the soak config, seconds")
    p.add_argument("--work", required=True)
    p.add_argument("--t-load", type=float, required=True, help="when the load started (Unix s)")
    p.add_argument("--tail", type=float, default=5.0)
    p.add_argument("--flat", type=float, default=10.0, help="RSS/fd tolerance, percent")
    a = p.parse_args()
    w = a.work
    recs = [json.loads(l) for l in open(os.path.join(w, "requests.jsonl")) if l.strip()]
    events = load_events(os.path.join(w, "events.tsv"))
    samples = load_samples(os.path.join(w, "samples.tsv"))
    up = [(e["start"], e["end"]) for e in events if e["kind"] == "upstream_down"]
    rd = [(e["start"], e["end"]) for e in events if e["kind"] == "redis_down"]
    verdicts = []

    # --- events ---------------------------------------------------------
    print("\nevents (times from the start of the load)")
    by = collections.defaultdict(list)
    for e in events:
        by[e["kind"]].append(e)

    def times(es):
        return " ".join(f"{e['start'] - a.t_load:.0f}s" for e in es)

    rows = []
    ups = by["upstream_down"]
    rows.append(("upstream killed + restarted", f"{sum(e['ok'] for e in ups)}/{len(ups)}",
                 f"at {times(ups)}; down " + ", ".join(f"{e['end'] - e['start']:.1f}s" for e in ups)))
    rs = by["redis_down"]
    rows.append(("redis restarted", f"{sum(e['ok'] for e in rs)}/{len(rs)}",
                 f"at {times(rs)}; down " + ", ".join(f"{e['end'] - e['start']:.1f}s" for e in rs)))
    rl = by["reload"]
    lat = sorted(e["end"] - e["start"] for e in rl if e["ok"])
    rows.append(("config edited + reloaded", f"{sum(e['ok'] for e in rl)}/{len(rl)}",
                 (f"applied in {lat[0]:.2f}-{lat[-1]:.2f}s; " if lat else "")
                 + f"{sum('SIGHUP' in e['detail'] for e in rl)} by SIGHUP, "
                 + f"{sum('watch' in e['detail'] for e in rl)} by the file watch alone"))
    ug = by["upgrade"]
    exits = {e["detail"].split()[0]: e for e in by["old_exit"]}
    drains = []
    for e in ug:
        old = e["detail"].split()[0]
        if old in exits and exits[old]["ok"]:
            drains.append(f"{exits[old]['end'] - e['start']:.1f}s")
        else:
            drains.append("never")
    rows.append(("binary upgraded (modelgate upgrade)", f"{sum(e['ok'] for e in ug)}/{len(ug)}",
                 "pids " + " | ".join(e["detail"].split(" (")[0] for e in ug)
                 + "; hand-over " + ", ".join(f"{e['end'] - e['start']:.1f}s" for e in ug)
                 + "; old process gone after " + ", ".join(drains)))
    st = by["stop"]
    for e in st:
        rows.append(("final stop (SIGTERM)", "ok" if e["ok"] else "FAIL",
                     f"exited {e['end'] - e['start']:.1f}s after SIGTERM ({e['detail']})"))
    for name, n, detail in rows:
        print(f"  {name:<36} {n:>6}  {detail}")
    for e in st:
        if e["end"] - e["start"] >= a.grace - 0.5:
            print(f"  note: the final stop took the whole grace period ({a.grace:.0f}s) with no request in flight")
    full = [d for d in drains if d != "never" and float(d[:-1]) >= 5 + a.grace - 0.5]
    if full:
        print(f"  note: {len(full)} of {len(drains)} old processes ran the whole 5 s hand-over + {a.grace:.0f}s grace"
              " period, although every request they held ends sooner")
    all_ok = all(e["ok"] for e in events if e["kind"] in ("upstream_down", "redis_down", "reload", "upgrade", "stop"))
    never = [d for d in drains if d == "never"]
    verdicts.append(("every fault, reload, upgrade and the stop happened as scheduled", all_ok and not never))

    # --- requests ---------------------------------------------------------
    cls = collections.Counter()
    per_kind = collections.defaultdict(collections.Counter)
    others = []
    for r in recs:
        c = classify(r, up, rd, a.tail)
        r["class"] = c
        kind = "long" if r["kind"] == "long" else ("translated" if r["kind"].startswith("tr_") else r["kind"])
        for k in (kind, "all"):
            per_kind[k]["sent"] += 1
            per_kind[k]["completed"] += r["status"] > 0
            per_kind[k][c] += 1
        if c == "other":
            others.append(r)
    cols = ["all", "json", "sse", "translated", "long"]
    print("\nrequests (/v1/messages; no retries)")
    print(f"  {'':<40}" + "".join(f"{c:>11}" for c in cols))
    for label, key in (("sent", "sent"), ("completed (got a response head)", "completed"), ("ok", "ok"),
                       ("failed: upstream outage (expected)", "upstream"),
                       ("failed: redis outage, 529 (expected)", "redis"),
                       ("failed: anything else (target 0)", "other")):
        print(f"  {label:<40}" + "".join(f"{per_kind[c][key]:>11}" for c in cols))
    lags = []
    for kind, windows in (("upstream", up), ("redis", rd)):
        for start, end in windows:
            last = max((r["t1"] for r in recs if r["class"] == kind and r["kind"] != "long"
                        and r["t0"] <= end + a.tail and r["t1"] >= start), default=None)
            lags.append(f"{kind}@{start - a.t_load:.0f}s " + (f"{last - end:+.1f}s" if last else "none"))
    print("  last outage failure (short requests) relative to the service being back: " + ", ".join(lags))
    verdicts.append(("no failure outside an injected outage", not others))
    if others:
        print("\n  failures outside an outage, by kind:")
        kinds = collections.Counter((r["outcome"], r["status"], (r["detail"] or "")[:70]) for r in others)
        for (outcome, status, detail), n in kinds.most_common(12):
            print(f"    {n:>5}  {outcome:<17} status {status:<4} {detail}")
        causes = collections.Counter()
        for r in others:
            c, t = likely_cause(r, events)
            causes[(c.format(t - a.t_load) if c else "no injected event explains it")] += 1
        print("  what they coincided with:")
        for c, n in causes.most_common():
            print(f"    {n:>5}  {c}")
        print("  first few:")
        for r in others[:6]:
            print(f"    t={r['t0'] - a.t_load:7.2f}-{r['t1'] - a.t_load:7.2f}s {r['kind']:<5} {r['outcome']:<10}"
                  f" {r['status']:<4} {'reused-conn' if r['reused'] else 'new-conn':<11}"
                  f" {r['request_id'] or '-':<28} {nearest_event(r, events, a.t_load)}")

    # --- ledger -----------------------------------------------------------
    db = os.path.join(w, "ledger.db")
    rows = []
    if os.path.exists(db):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute("SELECT request_id, status, error, input_tokens, output_tokens, cache_read_tokens, "
                           "cache_write_tokens, stream FROM requests").fetchall()
        con.close()
    ledger = {}
    dup = 0
    for row in rows:
        if row[0] in ledger:
            dup += 1
        ledger[row[0]] = row
    completed = [r for r in recs if r["status"] > 0]
    matched = [r for r in completed if r["request_id"] in ledger]
    missing = [r for r in completed if r["request_id"] not in ledger]
    seen = {r["request_id"] for r in completed}
    extra = [row for rid, row in ledger.items() if rid not in seen]
    usage_bad = []
    for r in matched:
        if r["outcome"] == "ok" and r["usage"] is not None:
            row = ledger[r["request_id"]]
            if list(r["usage"]) != [row[3], row[4], row[5], row[6]]:
                usage_bad.append((r, row))
    audit_lines = 0
    apath = os.path.join(w, "audit.jsonl")
    if os.path.exists(apath):
        with open(apath, "rb") as f:
            audit_lines = sum(1 for _ in f)
    print("\nusage ledger (sqlite table `requests`) vs the driver")
    print(f"  {'ledger rows':<48}{len(rows):>8}")
    print(f"  {'completed requests (any status)':<48}{len(completed):>8}")
    print(f"  {'  matched to a ledger row by request-id':<48}{len(matched):>8}")
    print(f"  {'  with no ledger row (target 0)':<48}{len(missing):>8}")
    print(f"  {'ledger rows for no completed request':<48}{len(extra):>8}")
    print(f"  {'ok answers whose ledger usage differs (target 0)':<48}{len(usage_bad):>8}")
    print(f"  {'audit log lines':<48}{audit_lines:>8}")
    st_l = collections.Counter(row[1] for row in rows)
    st_d = collections.Counter(r["status"] for r in completed)
    print("  by status (ledger / driver): " + ", ".join(
        f"{s}: {st_l[s]}/{st_d[s]}" for s in sorted(set(st_l) | set(st_d))))
    if extra:
        ex = collections.Counter((row[1], row[2]) for row in extra)
        print("  ledger rows without a completed request: " + ", ".join(
            f"{n}x status {s} {e or ''}".rstrip() for (s, e), n in ex.most_common(6)))
        tr = [r for r in recs if r["status"] == 0]
        if tr:
            print(f"  (the driver has {len(tr)} requests with no response head; such rows may be theirs)")
    for r, row in usage_bad[:5]:
        print(f"    usage mismatch {r['request_id']} {r['kind']}: client saw {r['usage']}, ledger {list(row[3:7])}")
    for r in missing[:5]:
        print(f"    no ledger row: {r['request_id']} {r['kind']} status {r['status']} {r['outcome']}")
    verdicts.append(("ledger rows == completed requests, each matched", not missing and not extra and not dup
                     and len(rows) == len(completed)))
    verdicts.append(("ledger usage == usage the client saw", not usage_bad))
    verdicts.append(("audit lines == ledger rows", audit_lines == len(rows)))

    # --- Redis vs ledger --------------------------------------------------
    spath = os.path.join(w, "redis-spend.tsv")
    if os.path.exists(db) and os.path.exists(spath):
        redis = collections.defaultdict(lambda: [0, 0, 0, 0, 0])  # nanos, in, out, cache read, cache write
        with open(spath) as f:
            for line in f:
                key, fields = line.rstrip("\n").split("\t")
                _, _, scope, name, _start = key.split(":", 4)
                h = dict(zip(fields.split()[0::2], fields.split()[1::2]))
                acc = redis[(scope, name)]
                for i, k in enumerate(("spent", "input", "output", "cache_read", "cache_write")):
                    acc[i] += int(h.get(k, 0))
        holds = 0
        hpath = os.path.join(w, "redis-holds.tsv")
        if os.path.exists(hpath):
            with open(hpath) as f:
                holds = sum(int(l.split("\t")[1]) for l in f if l.strip())
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        led = {}
        for scope, col in (("key", '"key"'), ("team", "team")):
            for row in con.execute(f"SELECT {col}, COUNT(*), SUM(cost_usd), SUM(input_tokens), SUM(output_tokens), "
                                   f"SUM(cache_read_tokens), SUM(cache_write_tokens) FROM requests "
                                   f"WHERE {col} IS NOT NULL GROUP BY 1"):
                led[(scope, row[0])] = row[1:]
        con.close()
        print("\nbudgets in Redis vs the ledger (spend per key and team, after three Redis restarts)")
        print(f"  {'scope':<18}{'ledger USD':>14}{'redis USD':>14}{'tokens equal':>14}")
        bad = 0
        for sc in sorted(set(led) | set(redis)):
            n, cost, *tok = led.get(sc, (0, 0.0, 0, 0, 0, 0))
            r = redis.get(sc, [0, 0, 0, 0, 0])
            # Redis adds each request's cost in whole nano-dollars; allow that rounding.
            ok_cost = abs(round((cost or 0) * 1e9) - r[0]) <= n
            ok_tok = [t or 0 for t in tok] == r[1:]
            bad += not (ok_cost and ok_tok)
            print(f"  {sc[0] + ' ' + sc[1]:<18}{(cost or 0):>14.6f}{r[0] / 1e9:>14.6f}{'yes' if ok_tok else 'NO':>14}"
                  + ("" if ok_cost else "   <- spend differs"))
        print(f"  open budget holds left in Redis: {holds}")
        verdicts.append(("Redis spend and tokens == ledger, per key and team; no hold left open", bad == 0 and holds == 0))

    # --- process ----------------------------------------------------------
    print("\nserving gateway process (pid from pid_file)")
    print(f"  {'when':<34}{'pid':>8}{'RSS MiB':>10}{'open fds':>10}  {'connections: clients/upstream/redis'}")
    labels = {"idle_start": "idle, before the load", "load_start": "under load, after warm-up",
              "load_end": "under load, before it stops", "idle_end": "idle, after the load"}
    pick = {}
    for s in samples:
        if s["label"] in labels:
            pick[s["label"]] = s
    for lab, text in labels.items():
        s = pick.get(lab)
        if s:
            print(f"  {text:<34}{s['pid']:>8}{s['rss'] / 1024:>10.1f}{s['fds']:>10}  {s['detail']}")
    if samples:
        peak = max(samples, key=lambda s: s["rss"])
        print(f"  {'peak RSS sampled (every 5 s)':<34}{peak['pid']:>8}{peak['rss'] / 1024:>10.1f}"
              f"{max(s['fds'] for s in samples):>10}  (peak fds)")
    flat = False
    if "load_start" in pick and "load_end" in pick:
        s0, s1 = pick["load_start"], pick["load_end"]
        drss, dfd = pct(s0["rss"], s1["rss"]), pct(s0["fds"], s1["fds"])
        drest = pct(s0["fds"] - s0["conns"], s1["fds"] - s1["conns"])
        print(f"  under load, end vs start: RSS {drss:+.1f} %, fds {dfd:+.1f} % (fds other than connections {drest:+.1f} %)")
        flat = abs(drss) <= a.flat and abs(dfd) <= a.flat
    if "idle_start" in pick and "idle_end" in pick:
        s0, s1 = pick["idle_start"], pick["idle_end"]
        print(f"  idle, after vs before: RSS {pct(s0['rss'], s1['rss']):+.1f} %, fds {pct(s0['fds'], s1['fds']):+.1f} %"
              " (a fresh process vs one that has served; informational)")
    verdicts.append((f"RSS and fds under load flat within {a.flat:.0f} %", flat))

    print("\ntargets")
    for text, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
