#!/usr/bin/env bash
# The profiles behind the README's "Where it stands, and why", each against
# the same nginx upstream as run.sh, on loopback, every run bounded:
#
#   benches/e2e/profile.sh cpu      # modelgate under passthrough JSON (32 connections):
#                                   # perf stat (CPU, context switches; bare Pingora's too,
#                                   # under the same load), the share of user space and
#                                   # kernel (both), of each thread and the top functions
#                                   # (perf record, 5 s); where each one's kernel time
#                                   # goes (system calls, being preempted: inclusive
#                                   # shares, in µs per request) and its threads'
#                                   # voluntary and involuntary context switches;
#                                   # OTLP_SAMPLE=1.0 turns telemetry.otlp on (every request
#                                   # traced, metrics each second, to nginx's /otlp/);
#                                   # FOCUS=REGEX adds the inclusive share of the functions
#                                   # whose names match (callers included: perf --children);
#                                   # then both proxies' CPU by part, µs per request
#                                   # (benches/e2e/attribute.py: every sample to one part);
#                                   # SCENARIO= one of run.sh's rows: passthrough-json (the
#                                   # default), passthrough-sse, claude-code-100KB,
#                                   # translated-json, translated-sse (bare Pingora then
#                                   # serves the passthrough of the same shape, as in run.sh)
#   benches/e2e/profile.sh faults   # where memory is first touched while 1,000 streams
#                                   # open (perf page faults), modelgate and bare Pingora
#   benches/e2e/profile.sh steal    # bare Pingora with and without work stealing,
#                                   # alternating 5 s runs: rps, p50/p99, CPU per request
#   benches/e2e/profile.sh allocs   # heap allocations per request (passthrough JSON, 8
#                                   # connections), modelgate and bare Pingora: uprobes
#                                   # on jemalloc's entry points counted by perf stat; then
#                                   # the functions that allocate most in modelgate
#                                   # (inclusive share of its allocations)
#
# KEEP=1 keeps the work directory (perf.data included) and prints its path.
#
# Needs perf (Debian's linux-perf; installed when missing) and a machine
# whose kernel lets it sample (root, or perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/deps.sh
. benches/e2e/lib.sh
ensure_build_deps
ensure_load_tools
command -v perf >/dev/null 2>&1 || _apt_install linux-perf
MODE=${1:?usage: benches/e2e/profile.sh cpu|faults|steal|allocs}
UP_PORT=${UP_PORT:-18961}
GW_PORT=${GW_PORT:-18962}
BARE_PORT=${BARE_PORT:-18963}
BARE2_PORT=${BARE2_PORT:-18964}
STREAMS=${STREAMS:-1000}
GW_THREADS=$(nproc)
DURATION=5s
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin modelgate --example bare_pingora
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" -s stop 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
write_upstream_conf "$work/up" "$UP_PORT"
"$NGINX" -p "$work/up" -c "$work/up/nginx.conf"
write_post_lua "$work/post.lua"
bench_bodies "$work"
# SCENARIO -> the gateway's body, and bare Pingora's path and body.
SCENARIO=${SCENARIO:-passthrough-json}
case $SCENARIO in
  passthrough-json) body=$small bare_path=/v1/messages bare_body=$small ;;
  passthrough-sse) body=$stream bare_path=/sse/v1/messages bare_body=$stream ;;
  claude-code-100KB) body=$big bare_path=/v1/messages bare_body=$big ;;
  translated-json) body=$oai_small bare_path=/v1/messages bare_body=$small ;;
  translated-sse) body=$oai_stream bare_path=/sse/v1/messages bare_body=$stream ;;
  *) echo "unknown SCENARIO $SCENARIO" >&2; exit 2 ;;
esac

# The gateway as run.sh configures it. Its ledger is not in the config's
# directory, whose watcher would otherwise wake on every ledger write.
gateway() {
  mkdir -p "$work/conf"
  bench_gateway_yaml "$GW_PORT" "$work/usage.db" > "$work/conf/gw.yaml"
  if [ -n "${OTLP_SAMPLE:-}" ]; then otlp_yaml "$OTLP_SAMPLE" >> "$work/conf/gw.yaml"; fi
  start_modelgate "$work/gw.log" "http://127.0.0.1:$GW_PORT/health" serve -c "$work/conf/gw.yaml"
  gw_pid=$started_pid
}

# bare PORT [ENV...]: a bare Pingora on PORT; sets bare_pid.
bare() {
  local port=$1
  shift
  start_bare "$port" "$work/bare-$port.log" "$@"
  bare_pid=$started_pid
}

# minflt PID: the process's minor page faults so far (all its threads).
minflt() { awk '{print $10}' "/proc/$1/stat"; }

# by_dso PERF_DATA: the share of samples by binary (user space) and kernel.
by_dso() { perf report -i "$1" --no-children --stdio --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -5 || true; }

# switches PID -> "voluntary involuntary": context switches of all its threads so far.
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v + 0, n + 0}'; }

# kernel_entries PERF_DATA REQUESTS: the kernel's entry points (system calls,
# the interrupt that preempts a thread for a task woken on its core, the
# return to user space that switches to another task first, page faults):
# inclusive share of samples and CPU per request (samples at 1999 Hz).
kernel_entries() {
  local samples
  samples=$(perf report -i "$1" --stats 2>/dev/null | awk '/SAMPLE events/ {print $3; exit}')
  perf report -i "$1" --children --stdio --sort sym -g none 2>/dev/null | grep -v '^#' |
    grep -E '\] (__x64_sys_(sendto|recvfrom|epoll_wait|futex|pwrite64|madvise)|asm_sysvec_reschedule_ipi|exit_to_user_mode_loop|asm_exc_page_fault)$' |
    awk -v s="$samples" -v n="$2" '{ sub("%", "", $1); printf "    %6.2f%%  %6.2f us/request  %s\n", $1, $1 / 100 * s / 1999 * 1e6 / n, $NF }' || true
}

# Reports are symbol names demangled by rustfilt when it is installed.
demangle() { if command -v rustfilt >/dev/null 2>&1; then rustfilt; else cat; fi; }

case $MODE in
  cpu)
    gateway
    BODY_FILE="$body" wrk -t2 -c32 -d10s -s "$work/post.lua" "http://127.0.0.1:$GW_PORT/v1/messages" >"$work/wrk.out" 2>&1 &
    wrk_pid=$!
    # Past wrk's connection set-up, then 5 s of samples and counts.
    sleep 2
    sw0=$(switches "$gw_pid")
    perf stat -e task-clock,context-switches -p "$gw_pid" -o "$work/stat.txt" -- sleep 5 &
    stat_pid=$!
    perf record -q -F 1999 --call-graph dwarf,16384 -p "$gw_pid" -o "$work/perf.data" -- sleep 5 >/dev/null 2>&1
    sw1=$(switches "$gw_pid")
    wait "$stat_pid" "$wrk_pid"
    grep -E "requests in|Requests/sec" "$work/wrk.out"
    grep -E "task-clock|context-switches" "$work/stat.txt"
    echo "(perf stat covers 5 s of the 10 s run: divide by half the requests for per-request figures)"
    gw_req=$(awk '/Requests\/sec/ {print $2 * 5}' "$work/wrk.out")
    printf '\nshare of samples by binary (user space) and kernel\n'
    by_dso "$work/perf.data"
    printf '\nshare of samples by thread\n'
    perf report -i "$work/perf.data" --no-children --stdio --sort comm -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -10 || true
    printf '\ntop functions\n'
    perf report -i "$work/perf.data" --no-children --stdio --sort comm,sym -g none 2>/dev/null | demangle | grep -v '^#' | grep -v '^$' | head -40 || true
    printf '\nbare Pingora under the same load, for comparison\n'
    bare "$BARE_PORT"
    BODY_FILE="$bare_body" wrk -t2 -c32 -d10s -s "$work/post.lua" "http://127.0.0.1:$BARE_PORT$bare_path" >"$work/wrk-bare.out" 2>&1 &
    wrk_pid=$!
    sleep 2
    bsw0=$(switches "$bare_pid")
    perf stat -e task-clock,context-switches -p "$bare_pid" -o "$work/stat-bare.txt" -- sleep 5 &
    stat_pid=$!
    perf record -q -F 1999 --call-graph dwarf,16384 -p "$bare_pid" -o "$work/perf-bare.data" -- sleep 5 >/dev/null 2>&1
    bsw1=$(switches "$bare_pid")
    wait "$stat_pid" "$wrk_pid"
    grep -E "requests in|Requests/sec" "$work/wrk-bare.out"
    grep -E "task-clock|context-switches" "$work/stat-bare.txt"
    bare_req=$(awk '/Requests\/sec/ {print $2 * 5}' "$work/wrk-bare.out")
    printf '\nbare Pingora: share of samples by binary (user space) and kernel\n'
    by_dso "$work/perf-bare.data"
    printf '\nwhere the kernel time goes (inclusive; requests in the 5 s window: modelgate ~%.0f, bare Pingora ~%.0f)\n' "$gw_req" "$bare_req"
    echo "  modelgate"
    kernel_entries "$work/perf.data" "$gw_req"
    echo "  bare Pingora"
    kernel_entries "$work/perf-bare.data" "$bare_req"
    printf '\nthreads'"'"' context switches per request in the window (voluntary, involuntary)\n'
    read -r v0 n0 <<<"$sw0"; read -r v1 n1 <<<"$sw1"
    printf '  modelgate     %.3f  %.3f\n' "$(awk -v a="$v0" -v b="$v1" -v r="$gw_req" 'BEGIN{print (b-a)/r}')" "$(awk -v a="$n0" -v b="$n1" -v r="$gw_req" 'BEGIN{print (b-a)/r}')"
    read -r v0 n0 <<<"$bsw0"; read -r v1 n1 <<<"$bsw1"
    printf '  bare Pingora  %.3f  %.3f\n' "$(awk -v a="$v0" -v b="$v1" -v r="$bare_req" 'BEGIN{print (b-a)/r}')" "$(awk -v a="$n0" -v b="$n1" -v r="$bare_req" 'BEGIN{print (b-a)/r}')"
    printf '\nCPU by part, us per request (under perf; every sample given to one part: benches/e2e/attribute.py)\n'
    python3 benches/e2e/attribute.py "modelgate=$work/perf.data:$gw_req" "bare=$work/perf-bare.data:$bare_req" || true
    if [ -n "${FOCUS:-}" ]; then
      printf '\ninclusive share of functions matching %s\n' "$FOCUS"
      perf report -i "$work/perf.data" --children --stdio --sort sym -g none 2>/dev/null | demangle | grep -E -- "$FOCUS" | head -30 || true
    fi
    ;;
  faults)
    gateway
    bare "$BARE_PORT"
    for name in modelgate bare-pingora; do
      case $name in
        modelgate) pid=$gw_pid url="http://127.0.0.1:$GW_PORT/v1/messages" ;;
        *) pid=$bare_pid url="http://127.0.0.1:$BARE_PORT/slow/v1/messages" ;;
      esac
      r0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
      f0=$(minflt "$pid")
      perf record -q -e page-faults -c 1 --call-graph dwarf,16384 -p "$pid" -o "$work/$name.data" -- sleep 8 >/dev/null 2>&1 &
      perf_pid=$!
      # wrk opens the streams while perf records; each stays open ~14 s.
      BODY_FILE="$slow" wrk -t2 -c"$STREAMS" -d6s --timeout 60s -s "$work/post.lua" "$url" >/dev/null 2>&1
      wait "$perf_pid"
      r1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
      printf '\n%s: RSS %s -> %s kB, %s kB per stream\n' "$name" "$r0" "$r1" "$(( (r1 - r0) / STREAMS ))"
      # perf's samples cover only part of the faults: its shares below are
      # indicative, not a census.
      printf 'minor faults (/proc/<pid>/stat): %s; perf samples: %s\n' "$(( $(minflt "$pid") - f0 ))" \
        "$(perf report -i "$work/$name.data" --stats 2>/dev/null | awk '/SAMPLE events/ {print $3; exit}')"
      perf report -i "$work/$name.data" --no-children --stdio --sort sym -g caller,0.5,callee,function,percent \
        2>/dev/null | demangle | grep -v '^#' | grep -v '^$' | head -60 | cut -c1-200 || true
    done
    ;;
  steal)
    bare "$BARE_PORT"
    steal_pid=$bare_pid
    bare "$BARE2_PORT" STEAL=0
    printf '%-22s %10s %9s %9s %11s\n' target rps p50_ms p99_ms cpu_us/req
    for round in 1 2; do
      read -r rps p50 p99 cpu < <(run "steal/$round" "http://127.0.0.1:$BARE_PORT/v1/messages" "$small" 32 2 "$steal_pid")
      printf '%-22s %10.0f %9s %9s %11s\n' "work stealing" "$rps" "$p50" "$p99" "$cpu"
      read -r rps p50 p99 cpu < <(run "nosteal/$round" "http://127.0.0.1:$BARE2_PORT/v1/messages" "$small" 32 2 "$bare_pid")
      printf '%-22s %10.0f %9s %9s %11s\n' "a runtime per thread" "$rps" "$p50" "$p99" "$cpu"
    done
    ;;
  allocs)
    gateway
    bare "$BARE_PORT"
    # One uprobe per jemalloc entry point a Rust allocation goes through
    # (realloc counted apart: it may move in place), in each binary.
    allocators=(malloc mallocx calloc rallocx)
    for g in mga bpa; do perf probe -d "$g:*" >/dev/null 2>&1 || true; done
    trap 'for g in mga bpa; do perf probe -d "$g:*" >/dev/null 2>&1 || true; done; cleanup' EXIT
    for f in "${allocators[@]}"; do
      perf probe -x "$TARGET/release/modelgate" -a "mga:mga_$f=_rjem_$f" >/dev/null 2>&1
      perf probe -x "$TARGET/release/examples/bare_pingora" -a "bpa:bpa_$f=_rjem_$f" >/dev/null 2>&1
    done
    printf '%-14s %10s %12s %12s %12s %12s\n' target requests malloc/req mallocx/req calloc/req rallocx/req
    for name in modelgate bare-pingora; do
      case $name in
        modelgate) pid=$gw_pid url="http://127.0.0.1:$GW_PORT/v1/messages" g=mga ;;
        *) pid=$bare_pid url="http://127.0.0.1:$BARE_PORT/v1/messages" g=bpa ;;
      esac
      # Warm (connections, pools, first-use allocations), then count 5 s.
      BODY_FILE="$small" wrk -t1 -c8 -d1s -s "$work/post.lua" "$url" >/dev/null 2>&1
      perf stat -x, -e "$g:*" -p "$pid" -o "$work/allocs-$name.txt" -- sleep 6 &
      stat_pid=$!
      sleep 0.5
      BODY_FILE="$small" wrk -t1 -c8 -d5s -s "$work/post.lua" "$url" >"$work/wrk-$name.out" 2>&1
      wait "$stat_pid"
      n=$(awk '/requests in/ {print $1}' "$work/wrk-$name.out")
      awk -F, -v n="$n" -v name="$name" '$3 ~ /:/ {split($3, e, ":"); sub(/^[a-z]+_/, "", e[2]); c[e[2]] = $1}
        END {printf "%-14s %10d %12.1f %12.1f %12.1f %12.1f\n", name, n, c["malloc"]/n, c["mallocx"]/n, c["calloc"]/n, c["rallocx"]/n}' "$work/allocs-$name.txt"
    done
    printf '\nmodelgate: inclusive share of its allocations (malloc, mallocx, calloc) by function\n'
    BODY_FILE="$small" wrk -t1 -c8 -d5s -s "$work/post.lua" "http://127.0.0.1:$GW_PORT/v1/messages" >/dev/null 2>&1 &
    wrk_pid=$!
    sleep 1
    perf record -q -e mga:mga_malloc -e mga:mga_mallocx -e mga:mga_calloc --call-graph dwarf,16384 -p "$gw_pid" -o "$work/allocs.data" -- sleep 3 >/dev/null 2>&1
    wait "$wrk_pid"
    perf report -i "$work/allocs.data" --children --stdio --sort sym -g none 2>/dev/null | demangle \
      | grep -E 'modelgate::|pingora_[a-z_]+::' | head -${TOP:-40} | cut -c1-200 || true
    ;;
  *)
    echo "usage: benches/e2e/profile.sh cpu|faults|steal|allocs" >&2
    exit 2
    ;;
esac
