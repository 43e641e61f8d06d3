#!/usr/bin/env python3
"""Where a proxy's CPU goes, by part, in µs per request.

    attribute.py LABEL=PERF_DATA:REQUESTS [LABEL=PERF_DATA:REQUESTS ...]

Reads each recording's samples with their call chains (`perf script`,
inlined frames included; the recordings are `perf record -F 1999
--call-graph dwarf`) and gives every sample to one part:

- by thread first: the usage ledger's own threads (writer, intake);
- else the innermost frame, walking from the sampled function towards the
  thread's root, that names a part: a system call, being preempted, a piece
  of the gateway's work, Pingora's HTTP machinery, the runtime.

Innermost wins, so an allocation or a copy counts for the part that asked
for it, and a `sendto` counts as a system call wherever it was made. The
parts are disjoint and add up to the recording's samples. Each sample is
1/1999 s of one thread's CPU; divided by the requests answered in the
recording's window, that is µs of CPU per request (perf's sampling inflates
both proxies' figures alike: compare the columns, not the absolute values
against run.sh's).
"""

import re
import subprocess
import sys

HZ = 1999

# (part, pattern over a frame's symbol), innermost frame first. Order
# matters only when one frame matches two patterns.
PARTS = [
    ("system calls", r"^__x64_sys_"),
    ("preempted (reschedule, return to user space)",
     r"^(asm_sysvec_reschedule_ipi|exit_to_user_mode_loop|irqentry_exit_to_user_mode)$"),
    ("page faults", r"^asm_exc_page_fault$"),
    ("request body: read, validate, find model", r"modelgate::gateway::body::|MessagesRequest::parse|anthropic::View>|strip_foreign_thinking|MessagesRequest::for_claude"),
    ("routing, plan, circuit, pricing", r"modelgate::gateway::messages::(route|plan_for)|Snapshot::resolve|modelgate::gateway::attempt::pick|health::Registry|PriceTable|modelgate::policy::"),
    ("usage: tap, settle, record, journal", r"modelgate::gateway::meter::|modelgate::store::|UsageTap|relay::read_tap|modelgate::usage::|anthropic::usage::"),
    ("access log, metrics", r"ProxyHttp>::logging|modelgate::gateway::access::|modelgate::metrics::|prometheus::"),
    ("headers: upstream request, client response",
     r"Call>::head|forward_request_headers|is_hop_by_hop|bearer_header|relay::downstream_header|Adapter>::prepare"),
    ("SSE framing (events split for the usage tap, the translators)", r"modelgate::dialects::sse::"),
    ("dialect translation", r"modelgate::dialects::(openai|gemini|bedrock)|modelgate::dialects::anthropic::(emit|types)::|modelgate::dialects::Usage|modelgate::providers::(openai|gemini|bedrock|vertex|google)"),
    ("Pingora: HTTP/1 sessions, connection pool, timers", r"pingora_core::|pingora_pool::|pingora_timeout::|pingora_http::"),
    ("Pingora: proxy phases", r"pingora_proxy::"),
    ("the gateway's own request flow (attempts, relay, upstream leg)", r"^<?modelgate::"),
    ("bare Pingora's proxy callbacks", r"bare_pingora::"),
    ("runtime (tokio)", r"^<?tokio::"),
]
COMPILED = [(name, re.compile(p)) for name, p in PARTS]
THREADS = {"ledger-writer": "usage ledger threads (writer, intake)",
           "ledger-intake": "usage ledger threads (writer, intake)"}
KERNEL_OTHER = "other kernel (softirqs, timers)"
OTHER = "other user space (libc, allocator at the root)"


def part_of(comm, frames):
    if comm in THREADS:
        return THREADS[comm]
    for sym, _ in frames:
        for name, pat in COMPILED:
            if pat.search(sym):
                return name
    return KERNEL_OTHER if frames and frames[0][1] else OTHER


def samples(data):
    """(comm, [(symbol, is_kernel)]) per sample, leaf first."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym,dso"],
                         capture_output=True, text=True, errors="replace", check=False).stdout
    comm, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith(("\t", " ")):
            comm, frames = line.strip(), []
        else:
            parts = line.split(None, 1)
            if len(parts) < 2:
                continue
            rest = parts[1]
            dso = rest[rest.rfind("(") + 1:-1] if rest.endswith(")") else ""
            sym = rest[:rest.rfind(" (")] if rest.endswith(")") else rest
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym.strip())
            frames.append((sym, "kernel" in dso))
    if comm is not None:
        yield comm, frames


def main():
    runs = []
    for arg in sys.argv[1:]:
        label, rest = arg.split("=", 1)
        data, requests = rest.rsplit(":", 1)
        counts = {}
        total = 0
        for comm, frames in samples(data):
            p = part_of(comm, frames)
            counts[p] = counts.get(p, 0) + 1
            total += 1
        runs.append((label, counts, total, float(requests)))
    order = [name for name, _ in PARTS] + [THREADS["ledger-writer"], KERNEL_OTHER, OTHER]
    order = list(dict.fromkeys(order))
    width = max(len(n) for n in order)
    print("  " + "part".ljust(width) + "".join(f"  {label:>12}" for label, *_ in runs)
          + ("  " + "difference".rjust(12) if len(runs) == 2 else ""))
    us = lambda c, n: c / HZ * 1e6 / n
    for name in order:
        vals = [us(counts.get(name, 0), n) for _, counts, _, n in runs]
        if all(v < 0.05 for v in vals):
            continue
        line = "  " + name.ljust(width) + "".join(f"  {v:12.2f}" for v in vals)
        if len(vals) == 2:
            line += f"  {vals[0] - vals[1]:+12.2f}"
        print(line)
    tot = [us(t, n) for _, _, t, n in runs]
    line = "  " + "total (µs of CPU per request)".ljust(width) + "".join(f"  {v:12.2f}" for v in tot)
    if len(tot) == 2:
        line += f"  {tot[0] - tot[1]:+12.2f}"
    print(line)


if __name__ == "__main__":
    main()
