#!/usr/bin/env bash
# Nothing on the request path waits for a dependency it does not need: one
# gateway with every outside dependency a fleet gives it (Redis for shared
# state, PostgreSQL for the ledger's store, an OTLP collector for traces and
# metrics), measured while each one in turn is stalled (SIGSTOP: it accepts
# connections and never answers, the worst way to fail).
#
#   benches/e2e/stalls.sh              # 10 s per phase
#   DURATION=5s benches/e2e/stalls.sh
#
# Phases: all up; Redis stalled; PostgreSQL stalled; the collector stalled;
# all up again. In each, wrk drives CONNS connections of `/v1/messages`
# (passthrough JSON, with a gateway key) and, beside it, CONNS connections
# of `GET /v1/models` (answered by the gateway itself, with the same key).
# A keyed `/v1/messages` needs Redis (admission charges the key's scopes
# there); it needs neither the store (records go through the local
# journal) nor the collector (exports are queued and dropped when full).
# `/v1/models` needs none of the three. Output: rps, p50 and p99 of each
# load in each phase, and the ratio of each p99 to the first phase's.
# Every process listens on 127.0.0.1 only and every load run is bounded by
# DURATION.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/deps.sh
. benches/e2e/lib.sh
ensure_build_deps
ensure_test_deps
ensure_postgres
ensure_load_tools
PGBIN=$(pg_bindir)

DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
THREADS=${THREADS:-1}
UP_PORT=${UP_PORT:-18921}
COLLECTOR_PORT=${COLLECTOR_PORT:-18922}
GW_PORT=${GW_PORT:-18923}
ADMIN_PORT=${ADMIN_PORT:-18924}
REDIS_PORT=${REDIS_PORT:-18925}
PG_PORT=${PG_PORT:-18926}
GW_THREADS=${GW_THREADS:-$(nproc)}

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin modelgate
work=$(mktemp -d)
chmod 755 "$work"
pids=()
stalled=()
cleanup() {
  for p in "${stalled[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  [ -f "$work/pg/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1 || true
  # runuser, once stopped and continued, can be left stopped itself.
  [ -n "${pg_pid:-}" ] && { kill -CONT "$pg_pid"; kill -KILL "$pg_pid"; } 2>/dev/null || true
  "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" -s stop 2>/dev/null || true
  "$NGINX" -p "$work/collector" -c "$work/collector/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The upstream, and a second nginx of the same config as the collector (its
# /otlp/ takes every export).
write_upstream_conf "$work/up" "$UP_PORT"
write_upstream_conf "$work/collector" "$COLLECTOR_PORT"
"$NGINX" -p "$work/up" -c "$work/up/nginx.conf"
"$NGINX" -p "$work/collector" -c "$work/collector/nginx.conf"

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")

start_postgres "$work/pg/data" "$work/pg" "$PG_PORT"
pids+=("$pg_pid")
pw=$pg_pw

key=mg-stall-$RANDOM$RANDOM$RANDOM
mkdir -p "$work/gw"
cat > "$work/gw/gw.yaml" <<YAML
listen: 127.0.0.1:$GW_PORT
admin_listen: 127.0.0.1:$ADMIN_PORT
log_level: warn
threads: $GW_THREADS
default_provider: up
providers:
  up: {type: anthropic, api_base: "http://127.0.0.1:$UP_PORT", api_key: bench-provider-key}
keys:
  - {name: bench, key_env: BENCH_KEY, rate_limit: {rpm: 100000000}}
state:
  backend: redis
  redis_url: redis://127.0.0.1:$REDIS_PORT/0
  path: $work/gw/usage.db
store:
  url: "postgres://postgres:\${PGPASSWORD}@127.0.0.1:$PG_PORT/bench?sslmode=disable"
  spool: $work/gw/spool
telemetry:
  otlp: {endpoint: "http://127.0.0.1:$COLLECTOR_PORT/otlp", interval: 1s, sample_ratio: 1.0}
YAML
BENCH_KEY=$key PGPASSWORD=$pw start_modelgate "$work/gw/gw.log" "http://127.0.0.1:$ADMIN_PORT/health" serve -c "$work/gw/gw.yaml"
gw_pid=$started_pid

small="$work/small.json"
echo '{"model":"claude-opus-4-8","max_tokens":64,"messages":[{"role":"user","content":"Say hello."}]}' > "$small"
write_post_lua "$work/post.lua"
echo "wrk.headers[\"x-api-key\"] = \"$key\"" >> "$work/post.lua"
# One request first: a gateway that answers it with anything but 200 is
# misconfigured, not slow.
code=$(curl -sS -o "$work/first.out" -w '%{http_code}' -H "x-api-key: $key" -H 'content-type: application/json' \
  -H 'anthropic-version: 2023-06-01' --data-binary @"$small" "http://127.0.0.1:$GW_PORT/v1/messages")
if [ "$code" != 200 ]; then
  echo "the first request got $code: $(cat "$work/first.out")" >&2
  cat "$work/gw/gw.log" >&2
  exit 1
fi
cat > "$work/get.lua" <<LUA
wrk.headers["x-api-key"] = "$key"
LUA

stall() { stalled=($(tree "$1")); kill -STOP "${stalled[@]}"; }
resume() {
  kill -CONT "${stalled[@]}" 2>/dev/null || true
  stalled=()
}
collector_pid=$(cat "$work/collector/logs/nginx.pid")

# wrk_run URL LUA CONNS -> "rps p50 p99" (ms); errors are reported, not fatal.
wrk_run() {
  local out
  out=$(wrk -t"$THREADS" -c"$3" -d"$DURATION" --timeout 10s --latency -s "$2" "$1" 2>&1) || true
  grep -q "Requests/sec" <<<"$out" || { echo "wrk failed: $out" >&2; echo "0 - -"; return; }
  local bad
  bad=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
  [ "$bad" -gt 0 ] && echo "  ($bad errors or non-2xx answers in $1)" >&2
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

declare -A base
phase() {
  local name=$1 m_out g_out
  BODY_FILE=$small wrk_run "http://127.0.0.1:$GW_PORT/v1/messages" "$work/post.lua" "$CONNS" >"$work/m.out" &
  local m=$!
  wrk_run "http://127.0.0.1:$GW_PORT/v1/models" "$work/get.lua" "$CONNS" >"$work/g.out" &
  local g=$!
  wait "$m" "$g"
  for load in messages:m models:g; do
    IFS=: read -r what f <<<"$load"
    read -r rps p50 p99 <"$work/$f.out"
    [ -z "${base[$what]:-}" ] && base[$what]=$p99
    printf '%-22s %-26s %10.0f %9s %9s %11s\n' "$name" "$what" "$rps" "$p50" "$p99" \
      "$(awk -v a="$p99" -v b="${base[$what]}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else print "-" }')"
  done
}

printf '\nstalled dependencies: %s per phase, %s connections per load, %s cores\n' "$DURATION" "$CONNS" "$(nproc)"
printf '%-22s %-26s %10s %9s %9s %11s\n' phase load rps p50_ms p99_ms p99_vs_up
phase "all up"
stall "$redis_pid"; phase "Redis stalled"; resume
stall "$pg_pid"; phase "PostgreSQL stalled"; resume
stall "$collector_pid"; phase "collector stalled"; resume
phase "all up again"
# The spool replays what PostgreSQL missed: wait (30 s at most) for every
# answered request's row.
rows() { as_pg "$PGBIN/psql" -X -q -A -t -h "$work/pg" -p "$PG_PORT" -U postgres -d bench -c 'SELECT count(*) FROM requests' 2>/dev/null || echo 0; }
answered() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^modelgate_requests_total/ && /provider="up"/ && /status_class="2xx"/ {n += $2} END {print n + 0}'; }
for _ in $(seq 1 300); do
  [ "$(rows)" -ge "$(answered)" ] && break
  sleep 0.1
done
printf '\nledger rows in PostgreSQL: %s for %s answered requests\ngateway counters: %s\n' "$(rows)" "$(answered)" \
  "$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^modelgate_(ledger|state_errors|otlp_exports)' | tr '\n' ' ')"
