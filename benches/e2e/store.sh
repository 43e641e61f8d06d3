#!/usr/bin/env bash
# What the ledger's store costs the request path: one gateway config run
# twice in the same benchmark, once with the embedded SQLite store and once
# with a PostgreSQL store (a local server started here, default durability),
# measured alternately against the same nginx upstream.
#
#   benches/e2e/store.sh               # 10 s per run, 2 rounds
#   DURATION=5s ROUNDS=3 benches/e2e/store.sh
#   PG_OPTS="-c synchronous_commit=off" benches/e2e/store.sh   # server options
#   PROFILE=1 benches/e2e/store.sh     # also each gateway's CPU per request (perf)
#   RATE=4000 benches/e2e/store.sh     # the offered load of the paced runs (requests/s)
#
# Output: RPS and p99 per scenario and store at full load (as fast as wrk
# can send), and the PostgreSQL/SQLite ratio; then the same at a paced load
# below what either gateway can serve (RATE in all, spread over the
# connections), with a control run: the SQLite gateway while pgbench gives
# the PostgreSQL server the insert load the PostgreSQL gateway gave it. On
# a machine where the database shares the cores, full-load throughput is
# decided by the database's CPU; against the control, what remains is what
# the store costs the request path. Then the p50/p99 each adds at c=1 over
# hitting the upstream directly (control included), and whether every
# answered request has its row in PostgreSQL. Every process listens on
# 127.0.0.1 only and every load run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/deps.sh
. benches/e2e/lib.sh
ensure_build_deps
ensure_postgres
ensure_load_tools
PGBIN=$(pg_bindir)

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
UP_PORT=${UP_PORT:-18911}
SQLITE_PORT=${SQLITE_PORT:-18912}
PG_GW_PORT=${PG_GW_PORT:-18913}
PG_PORT=${PG_PORT:-18914}
GW_THREADS=${GW_THREADS:-$(nproc)}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin modelgate
work=$(mktemp -d)
chmod 755 "$work"
# The database's files: on a disk of their own where one exists (tmpfs by
# default). On one shared disk PostgreSQL's commit fsyncs make the kernel
# flush the gateway's own appends with them (ext4's journal), which a
# database on its own host never does (PG_DIR=$work/pgdata to see it).
PG_DIR=${PG_DIR:-$(mktemp -d -p /dev/shm modelgate-bench-pg.XXXXXX)}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  [ -f "$PG_DIR/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$work" "$PG_DIR"
}
trap cleanup EXIT

write_upstream_conf "$work/up" "$UP_PORT"
"$NGINX" -p "$work/up" -c "$work/up/nginx.conf"
write_post_lua "$work/post.lua"

# The database shares this machine's cores with the gateway and the load
# generator; at the lowest CPU priority it takes their idle time, as a
# database on a host of its own would (PG_NICE=0 to compare).
# shellcheck disable=SC2086 # PG_OPTS: server options, one word each
PG_WRAP="nice -n ${PG_NICE:-19}" start_postgres "$PG_DIR/data" "$work/pg" "$PG_PORT" ${PG_OPTS:-}
pids+=("$pg_pid")
pw=$pg_pw
psql_() { as_pg "$PGBIN/psql" -X -q -A -t -h "$work/pg" -p "$PG_PORT" -U postgres "$@"; }

# gateway NAME PORT STORE_YAML: start one and wait for /health.
gateway() {
  mkdir -p "$work/$1"
  cat > "$work/$1/gw.yaml" <<YAML
listen: 127.0.0.1:$2
log_level: warn
threads: $GW_THREADS
default_provider: up
providers:
  up: {type: anthropic, api_base: "http://127.0.0.1:$UP_PORT", api_key: bench-provider-key}
  up-sse: {type: anthropic, api_base: "http://127.0.0.1:$UP_PORT/sse", api_key: bench-provider-key}
routes:
  - {match: claude-stream, provider: up-sse}
state: {path: "$work/$1/usage.db"}
$3
YAML
  PGPASSWORD=$pw start_modelgate "$work/$1/gw.log" "http://127.0.0.1:$2/health" serve -c "$work/$1/gw.yaml"
}
gateway sqlite "$SQLITE_PORT" ""
gateway postgres "$PG_GW_PORT" "store: {url: \"postgres://postgres:\${PGPASSWORD}@127.0.0.1:$PG_PORT/bench?sslmode=disable\", spool: \"$work/postgres/spool\"}"
sqlite_pid=${pids[-2]}
pg_pid=${pids[-1]}

small="$work/small.json"
echo '{"model":"claude-opus-4-8","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}' > "$small"
stream="$work/stream.json"
echo '{"model":"claude-stream","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello."}]}' > "$stream"

# db_load ROWS_PER_S: pgbench inserting that many rows a second into `bg`
# for DURATION, in the background: copies of the newest ledger rows under
# new request ids, as the writer's statement does it (`ON CONFLICT` on the
# unique request id, the same indexes); sets bg_pid.
db_load() {
  cat > "$work/bg.sql" <<SQL
INSERT INTO bg (ts_ms, request_id, "key", team, session_id, agent_id, model, provider, upstream_model, input_tokens,
  output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, ttft_ms, status, attempts, stream, error, writer)
SELECT ts_ms, md5(random()::text || id), "key", team, session_id, agent_id, model, provider, upstream_model, input_tokens,
  output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, latency_ms, ttft_ms, status, attempts, stream, error, writer
FROM requests ORDER BY id DESC LIMIT $(awk -v r="$1" 'BEGIN { n = int(r / 40 + 0.5); print (n < 1 ? 1 : n) }')
ON CONFLICT (request_id) DO NOTHING;
SQL
  chmod 644 "$work/bg.sql"
  as_pg env PGPASSWORD="$pw" "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -R 40 -T "$duration_s" \
    -f "$work/bg.sql" bench >"$work/pgbench.log" 2>&1 &
  bg_pid=$!
}

# at STORE NAME BODY CONNS THREADS: one wrk run against STORE's gateway
# (LUA passes through to `run`); sets `last` to "rps p50 p99 cpu" and adds
# them to `sum[STORE.rps|p50|p99]`. sqlite+db is the SQLite gateway while
# db_load gives the database the rows a second the PostgreSQL gateway's
# last run wrote.
declare -A sum
at() {
  local store=$1 port=$SQLITE_PORT pid=$sqlite_pid rps p50 p99 cpu
  bg_pid=
  if [ "$store" = postgres ]; then port=$PG_GW_PORT pid=$pg_pid; fi
  if [ "$store" = sqlite+db ]; then db_load "$pg_rps"; fi
  last=$(run "$2/$store" "http://127.0.0.1:$port/v1/messages" "$3" "$4" "$5" "$pid")
  if [ -n "$bg_pid" ]; then wait "$bg_pid" || { cat "$work/pgbench.log" >&2; exit 1; }; fi
  read -r rps p50 p99 cpu <<<"$last"
  if [ "$store" = postgres ]; then pg_rps=$rps; fi
  sum[$store.rps]=$(awk -v a="${sum[$store.rps]:-0}" -v b="$rps" 'BEGIN{print a+b}')
  sum[$store.p50]=$(awk -v a="${sum[$store.p50]:-0}" -v b="$p50" 'BEGIN{print a+b}')
  sum[$store.p99]=$(awk -v a="${sum[$store.p99]:-0}" -v b="$p99" 'BEGIN{print a+b}')
}

# rounds LABEL STORE...: every scenario, ROUNDS times over STORE..., a row
# per run and PostgreSQL's ratio to each other store (of the rounds' sums).
rounds() {
  local label=$1 scenario name body round store ref rps p50 p99 cpu
  shift
  printf '%-18s %-6s %-9s %10s %9s %9s %11s\n' scenario round store rps p50_ms p99_ms cpu_us/req
  for scenario in "passthrough-json:$small" "passthrough-sse:$stream"; do
    IFS=: read -r name body <<<"$scenario"
    sum=()
    for round in $(seq 1 "$ROUNDS"); do
      for store in "$@"; do
        at "$store" "$name" "$body" "$CONNS" "$THREADS"
        read -r rps p50 p99 cpu <<<"$last"
        printf '%-18s %-6s %-9s %10.0f %9s %9s %11s\n' "$name" "$round" "$store" "$rps" "$p50" "$p99" "$cpu"
      done
    done
    for ref in "$@"; do
      [ "$ref" = postgres ] && continue
      printf '%-18s postgres/%s%s: rps %.3fx, p50 %.3fx, p99 %.3fx\n' "$name" "$ref" "$label" \
        "$(awk -v a="${sum[postgres.rps]}" -v b="${sum[$ref.rps]}" 'BEGIN{print a/b}')" \
        "$(awk -v a="${sum[postgres.p50]}" -v b="${sum[$ref.p50]}" 'BEGIN{print a/b}')" \
        "$(awk -v a="${sum[postgres.p99]}" -v b="${sum[$ref.p99]}" 'BEGIN{print a/b}')"
    done
    echo
  done
}

printf '\nledger store cost: %s per run, %s rounds, %s connections, %s cores\n\n' "$DURATION" "$ROUNDS" "$CONNS" "$(nproc)"
rounds "" sqlite postgres

# Paced: each connection sends a request, waits for its answer, then waits
# CONNS * 1000 / RATE ms (wrk's delay(), whole milliseconds) before the
# next: every gateway is offered the same load, below its throughput. A
# third run per round is the control: the SQLite gateway again, while
# pgbench inserts into the same PostgreSQL server as many rows a second as
# the PostgreSQL gateway's writer just did, in a batch every 25 ms (its
# `LINGER` under load): the database's CPU shares the cores as before, and
# the gateway does not depend on it. What is left between the PostgreSQL
# gateway and the control is what the store costs the request path.
RATE=${RATE:-4000}
delay_ms=$(( CONNS * 1000 / (RATE > 0 ? RATE : 1) ))
if [ "$delay_ms" -lt 1 ]; then
  echo "RATE=$RATE is more than $CONNS connections can be paced at (a whole millisecond each at least)" >&2
  exit 2
fi
# pgbench's run length in whole seconds (DURATION is wrk's: 10s, 1m).
duration_s=$(awk -v d="$DURATION" 'BEGIN { n = d + 0; if (d ~ /m$/) n *= 60; else if (d ~ /h$/) n *= 3600; print int(n) }')
cp "$work/post.lua" "$work/paced.lua"
echo "function delay() return $delay_ms end" >> "$work/paced.lua"
psql_ -d bench -c "CREATE TABLE bg (LIKE requests INCLUDING ALL)"
printf 'paced: %s connections, each waiting %s ms between an answer and its next request (at most %s requests/s);\n' "$CONNS" "$delay_ms" "$RATE"
printf 'sqlite+db: the SQLite gateway while pgbench inserts as many rows a second into the PostgreSQL server as the\n'
printf 'PostgreSQL gateway just wrote\n\n'
LUA="$work/paced.lua" rounds ", paced" sqlite postgres sqlite+db

printf 'added latency at c=1 (sequential requests), small JSON body, over direct (sqlite+db: as above)\n'
read -r _ d50 d99 _ < <(run direct "http://127.0.0.1:$UP_PORT/v1/messages" "$small" 1 1)
for store in sqlite postgres sqlite+db; do
  at "$store" c1 "$small" 1 1
  read -r _ g50 g99 _ <<<"$last"
  printf '%-9s p50 %+8.3f ms  p99 %+8.3f ms\n' "$store" "$(awk -v a="$g50" -v b="$d50" 'BEGIN{print a-b}')" "$(awk -v a="$g99" -v b="$d99" 'BEGIN{print a-b}')"
done
printf 'pgbench inserted %s rows beside the SQLite gateway in all\n' "$(psql_ -d bench -c "SELECT COUNT(*) FROM bg")"

# PROFILE=1: each gateway's own CPU per request, sampled by perf over 8 s
# of a 14 s run (samples at 999 Hz, over the requests of that run).
if [ "${PROFILE:-0}" = 1 ]; then
  command -v perf >/dev/null 2>&1 || _apt_install linux-perf
  printf '\ngateway CPU per request (perf record -F 999 -p PID, 8 s of a 14 s run), small JSON body\n'
  for target in "sqlite:$SQLITE_PORT:$sqlite_pid" "postgres:$PG_GW_PORT:$pg_pid"; do
    IFS=: read -r name port pid <<<"$target"
    BODY_FILE="$small" wrk -t"$THREADS" -c"$CONNS" -d14s -s "$work/post.lua" "http://127.0.0.1:$port/v1/messages" >"$work/wrk-$name.txt" 2>&1 &
    wrk_pid=$!
    sleep 3
    perf record -q -F 999 -p "$pid" -o "$work/perf-$name.data" -- sleep 8 >/dev/null 2>&1
    wait "$wrk_pid"
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$name.txt")
    samples=$(perf report -i "$work/perf-$name.data" -n --stdio -q --sort pid 2>/dev/null | awk '{s += $2} END {print s + 0}')
    printf '%-9s %8.0f rps  %6.1f us CPU/request\n' "$name" "$rps" "$(awk -v s="$samples" -v r="$rps" 'BEGIN { print s / 999 * 1e6 / (r * 8) }')"
  done
fi

# Every model answer the PostgreSQL gateway gave (not its /health checks,
# provider "local") has its row once its writer catches up.
answered=$(curl -fsS "http://127.0.0.1:$PG_GW_PORT/metrics" | awk '$1 ~ /^modelgate_requests_total/ && $0 ~ /status_class="2xx"/ && $0 !~ /provider="local"/ {n += $2} END {print n+0}')
rows=0
for _ in $(seq 1 100); do
  rows=$(psql_ -d bench -c "SELECT COUNT(*) FROM requests")
  [ "$rows" -ge "$answered" ] && break
  sleep 0.1
done
printf '\nPostgreSQL ledger: %s rows for %s answers counted by the gateway\n' "$rows" "$answered"
