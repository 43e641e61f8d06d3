#!/usr/bin/env bash
# Bounded soak of the release gateway under faults (not part of CI).
#
#   benches/soak.sh                    # 10 minutes
#   benches/soak.sh --duration 90s     # smoke test (90 s is the minimum)
#   benches/soak.sh --duration 30m --rate 100 --streams 32 --keep
#
# Everything runs on 127.0.0.1, on free ports, started and stopped here:
# - a fake Anthropic Messages upstream (benches/soak/upstream.py: JSON and
#   SSE with realistic `usage`, an OpenAI-shaped endpoint for translated
#   routes, and slow streams that trickle one delta a second);
# - redis-server, the gateway's `state` backend;
# - the release gateway (`serve -d`, gateway keys for four developers, two
#   of them in one team, limits and budgets far above the load, the SQLite
#   ledger and the audit log in the work directory, grace_period 20s);
# - the load (benches/soak/driver.py): short requests (Anthropic JSON and
#   SSE, and both translated from an OpenAI-shaped upstream) at --rate per
#   second, plus --streams long streams held open throughout. It retries
#   nothing and records every request's status and time window.
# Meanwhile, spread over the run: the upstream is SIGKILLed and restarted 3
# times, Redis restarted 3 times, the config edited and reloaded 10 times
# (every other time with SIGHUP, else the file watch alone), and the binary
# upgraded 3 times with `modelgate upgrade`. Then the load stops, the
# gateway gets SIGTERM, and benches/soak/report.py prints the tables:
# requests and failures (outage-caused or not), ledger rows vs answered
# requests, Redis spend vs the ledger, and the serving process's RSS and
# open fds. Exit status 0 when
# every target holds, 1 when one does not, 2 when the soak could not run.
#
# Options: --duration D (10m; 90s, 2m, 1h, 1m30s or bare seconds), --rate N
# (short requests/s, 40), --workers N (8), --streams N (long streams, 12),
# --keep (keep the work directory; it is always kept when a target fails),
# --head (build HEAD in a temporary git worktree instead of the working tree,
# sharing CARGO_TARGET_DIR), --binary PATH (soak that modelgate binary;
# nothing is built). A failed build of the working tree (someone's
# edit in progress) is retried twice, a minute apart.
# shellcheck disable=SC2317 # functions run from traps and poll
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk with '.' decimals
caller_dir=$PWD
cd "$(dirname "$0")/.."
root=$PWD
. scripts/lib/deps.sh

DURATION=10m
RATE=40
WORKERS=8
STREAMS=12
KEEP=0
FROM_HEAD=0
BINARY=""
GRACE=20           # grace_period of the soak config, seconds
UP_OUTAGE=3        # how long the upstream stays dead, seconds
REDIS_OUTAGE=1     # how long Redis stays down, seconds
TRICKLE_EVENTS=10  # long streams: this many deltas ...
TRICKLE_GAP=1      # ... this many seconds apart (must end well within GRACE)

die() { echo "soak: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=${2:?}; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --rate) RATE=${2:?}; shift 2 ;;
    --workers) WORKERS=${2:?}; shift 2 ;;
    --streams) STREAMS=${2:?}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --head) FROM_HEAD=1; shift ;;
    --binary) BINARY=$(cd "$caller_dir" && realpath "${2:?}"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# 10m, 90s, 1h, 1m30s, 120 -> seconds
parse_duration() {
  local s=$1 total=0 n u
  [[ $s =~ ^[0-9]+$ ]] && { echo "$s"; return; }
  [[ $s =~ ^([0-9]+[hms])+$ ]] || return 1
  while [[ $s =~ ^([0-9]+)([hms])(.*)$ ]]; do
    n=${BASH_REMATCH[1]}; u=${BASH_REMATCH[2]}; s=${BASH_REMATCH[3]}
    case $u in h) total=$((total + n * 3600)) ;; m) total=$((total + n * 60)) ;; s) total=$((total + n)) ;; esac
  done
  echo "$total"
}
DUR=$(parse_duration "$DURATION") || die "bad --duration $DURATION (e.g. 90s, 2m, 10m, 1m30s)"
[ "$DUR" -ge 90 ] || die "--duration must be at least 90s (19 scheduled events need room)"

# --- dependencies ------------------------------------------------------------
ensure_build_deps
ensure_test_deps # redis-server
command -v curl >/dev/null 2>&1 || _apt_install curl
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || die "needs python3 >= 3.11"
command -v redis-cli >/dev/null 2>&1 || _apt_install redis-tools
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- state, cleanup ----------------------------------------------------------
work=$(mktemp -d /tmp/modelgate-soak.XXXXXX)
mkdir -p "$work/bin" "$work/redis"
worktree=""
up_pid=""
redis_pid=""
driver_pid=""
report_rc=2
: >"$work/gw.pids"

now() { echo "$EPOCHREALTIME"; }
is_gateway() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "$work/bin/modelgate"; }
# Alive and not a zombie (an exited child of this shell stays one until `wait`).
alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; }
gone() { ! alive "$1"; }

cleanup() {
  set +e
  [ -n "$driver_pid" ] && alive "$driver_pid" && kill "$driver_pid"
  local p left=()
  for p in "${watchers[@]}"; do alive "$p" && kill "$p"; done
  for p in $(sort -u "$work/gw.pids" 2>/dev/null); do
    if is_gateway "$p"; then kill -TERM "$p"; left+=("$p"); fi
  done
  for _ in $(seq 1 100); do # at most 10 s, then SIGKILL
    local any=0
    for p in "${left[@]}"; do is_gateway "$p" && any=1; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for p in "${left[@]}"; do is_gateway "$p" && kill -KILL "$p"; done
  [ -n "$up_pid" ] && alive "$up_pid" && kill -KILL "$up_pid"
  [ -n "$redis_pid" ] && alive "$redis_pid" && kill -KILL "$redis_pid"
  [ -n "$driver_pid" ] && alive "$driver_pid" && kill -KILL "$driver_pid"
  wait 2>/dev/null
  if [ -n "$worktree" ]; then git -C "$root" worktree remove --force "$worktree" >/dev/null 2>&1 || rm -rf "$worktree"; fi
  if [ "$KEEP" = 1 ] || [ "$report_rc" != 0 ]; then
    echo "soak: work directory kept: $work (gateway log gw.log, requests.jsonl, events.tsv, ledger.db)" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP_PORT=$(free_port)
REDIS_PORT=$(free_port)
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
[ "$(printf '%s\n' "$UP_PORT" "$REDIS_PORT" "$GW_PORT" "$ADMIN_PORT" | sort -u | wc -l)" = 4 ] || die "port clash, run again"

# --- build -------------------------------------------------------------------
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
if [ -n "$BINARY" ]; then
  [ -x "$BINARY" ] || die "--binary $BINARY is not an executable"
elif [ "$FROM_HEAD" = 1 ]; then
  worktree=$(mktemp -d /tmp/modelgate-soak-head.XXXXXX)
  rmdir "$worktree"
  git worktree add --detach --quiet "$worktree" HEAD
  echo "soak: building HEAD ($(git rev-parse --short HEAD)) in $worktree" >&2
  (cd "$worktree" && CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet --bin modelgate) || die "build of HEAD failed"
else
  for attempt in 1 2 3; do
    if CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet --bin modelgate; then break; fi
    [ "$attempt" = 3 ] && die "the working tree does not build (an edit in progress?); try --head"
    echo "soak: build failed (attempt $attempt of 3); retrying in 60 s" >&2
    sleep 60
  done
fi
# A private copy: a rebuild during the soak must not change the binary under
# the running gateway, and `modelgate upgrade` starts this same file.
cp "${BINARY:-$TARGET/release/modelgate}" "$work/bin/modelgate"
BIN=$work/bin/modelgate

# --- config ------------------------------------------------------------------
conf=$work/modelgate.yaml
: >"$work/keys.txt"
declare -A SHA
for name in alice bob carol dave; do
  key="mg-soak$(python3 -c 'import secrets; print(secrets.token_hex(20))')"
  printf '%s %s\n' "$name" "$key" >>"$work/keys.txt"
  SHA[$name]=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
done

# write_config GEN: the whole config, with GEN in alice's rpm (so each
# reload is a real change), written atomically (a rename, as editors do).
write_config() {
  cat >"$conf.tmp" <<YAML
# benches/soak.sh config, generation $1
listen: 127.0.0.1:$GW_PORT
admin_listen: 127.0.0.1:$ADMIN_PORT
log_level: info
threads: 2
grace_period: ${GRACE}s
pid_file: $work/gw.pid
upgrade_sock: $work/gw.upgrade.sock
timeout: 60s
connect_timeout: 2s
max_retries: 2
default_provider: up
providers:
  up:
    type: anthropic
    api_base: "http://127.0.0.1:$UP_PORT"
    api_key: soak-provider-key
    health_check: {type: tcp, interval: 1s}
  up-slow:
    type: anthropic
    api_base: "http://127.0.0.1:$UP_PORT/slow"
    api_key: soak-provider-key
    health_check: {type: tcp, interval: 1s}
  oai:
    type: openai
    api_base: "http://127.0.0.1:$UP_PORT/oai/v1"
    api_key: soak-provider-key
    health_check: {type: tcp, interval: 1s}
routes:
  - {match: claude-soak-slow, provider: up-slow, model: claude-sonnet-4-5}
  - {match: claude-soak-translated, provider: oai, model: gpt-4o}
keys:
  - {name: alice, team: platform, key_sha256: "${SHA[alice]}", rate_limit: {rpm: $((100000 + $1)), tpm: 500000000}, budget: {usd: 1000000, period: monthly}}
  - {name: bob, team: platform, key_sha256: "${SHA[bob]}", rate_limit: {rpm: 100000, tpm: 500000000}, budget: {usd: 1000000, period: daily}}
  - {name: carol, team: research, key_sha256: "${SHA[carol]}", rate_limit: {rpm: 100000}, budget: {usd: 1000000, period: total}}
  - {name: dave, key_sha256: "${SHA[dave]}", rate_limit: {rpm: 100000, tpm: 500000000}, budget: {usd: 1000000}}
teams:
  platform:
    rate_limit: {rpm: 1000000, tpm: 1000000000}
    budget: {usd: 10000000, period: monthly}
  research:
    budget: {usd: 10000000, period: weekly}
state:
  backend: redis
  redis_url: redis://127.0.0.1:$REDIS_PORT/0
  redis_prefix: soak
  on_redis_error: {rate_limits: fail_open, budgets: fail_closed}
  path: $work/ledger.db
audit:
  path: $work/audit.jsonl
YAML
  mv -f "$conf.tmp" "$conf"
}
write_config 0
"$BIN" config validate -c "$conf" >"$work/validate.out" 2>&1 || { cat "$work/validate.out" >&2; die "the soak config does not validate"; }

# --- services ----------------------------------------------------------------
: >"$work/events.tsv"
: >"$work/samples.tsv"
# event KIND START END OK DETAIL
event() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$work/events.tsv"; }
t_load=""
say() {
  local t=-
  [ -n "$t_load" ] && t=$(awk -v a="$t_load" -v b="$(now)" 'BEGIN { printf "%6.1fs", b - a }')
  printf '  [%s] %s\n' "$t" "$*"
}

# poll CMD... every 0.1 s for at most $POLL_S seconds (default 10)
poll() {
  local i
  for i in $(seq 1 $((${POLL_S:-10} * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
up_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$UP_PORT/health"; }
redis_ready() { [ "$(redis-cli -p "$REDIS_PORT" --no-auth-warning ping 2>/dev/null)" = PONG ]; }
gw_ready() { curl -fsS --max-time 1 "http://127.0.0.1:$GW_PORT/health"; }

start_upstream() {
  python3 "$root/benches/soak/upstream.py" --port "$UP_PORT" --trickle-events "$TRICKLE_EVENTS" \
    --trickle-interval "$TRICKLE_GAP" >>"$work/upstream.log" 2>&1 &
  up_pid=$!
  poll up_ready || die "the upstream did not come up on $UP_PORT (see $work/upstream.log)"
}
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes --save '' \
    --daemonize no --logfile "$work/redis.log" &
  redis_pid=$!
  poll redis_ready || die "redis-server did not come up on $REDIS_PORT (see $work/redis.log)"
}
serving_pid() { cat "$work/gw.pid" 2>/dev/null; }

# The serving process's RSS (KiB), open fds and connections, as one samples.tsv line.
sample() {
  local pid st
  pid=$(serving_pid) || return 0
  st=$(python3 "$root/benches/soak/procstat.py" "$pid" "$GW_PORT" "$ADMIN_PORT" "$UP_PORT" "$REDIS_PORT" 2>/dev/null) || return 0
  # shellcheck disable=SC2086 # five fields
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$(now)" "$pid" $st >>"$work/samples.tsv"
}
last_sample=0
# Between events: sample every 5 s.
housekeeping() {
  local t
  t=$(now)
  if awk -v a="$last_sample" -v b="$t" 'BEGIN { exit !(b - a >= 5) }'; then
    sample periodic
    last_sample=$t
  fi
}
# watch_exit PID SINCE (in the background): when the old gateway PID exits,
# polled every 0.1 s for at most GRACE + 60 s.
watch_exit() {
  local pid=$1 since=$2 limit
  limit=$(plus "$since" "$((GRACE + 60))")
  while is_gateway "$pid" && awk -v a="$(now)" -v b="$limit" 'BEGIN { exit !(a < b) }'; do sleep 0.1; done
  if is_gateway "$pid"; then
    event old_exit "$since" "$(now)" 0 "$pid still running"
    say "old gateway pid $pid still running $((GRACE + 60)) s after the upgrade began"
  else
    event old_exit "$since" "$(now)" 1 "$pid exited"
    say "old gateway pid $pid exited ($(awk -v a="$since" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s after the upgrade began)"
  fi
}
watchers=()
# wait_until EPOCH: housekeeping every 0.2 s until then.
wait_until() {
  while awk -v a="$(now)" -v b="$1" 'BEGIN { exit !(a < b) }'; do
    housekeeping
    sleep 0.2
  done
}
at() { awk -v a="$t_load" -v f="$1" -v d="$DUR" 'BEGIN { printf "%.3f", a + f * d }'; }
plus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a + b }'; }

status_field() { # status_field PY-EXPR: "pid value" from /status (polls logged to status-polls.log)
  local t0 out rc=0
  t0=$(now)
  out=$(curl -sS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/status" 2>&1 |
    python3 -c "import json, sys; s = json.load(sys.stdin); print(s['pid'], $1)" 2>/dev/null) || rc=1
  printf '%s\t%s\t%s\n' "$t0" "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')" "${out:-failed}" >>"$work/status-polls.log"
  [ "$rc" = 0 ] && echo "$out"
}
# The config version the serving process reports (asks until it is the one in pid_file answering).
serving_version() {
  local i out
  for i in $(seq 1 50); do
    out=$(status_field "s['config']['version']") || true
    [ "${out%% *}" = "$(serving_pid)" ] && { echo "${out#* }"; return 0; }
    sleep 0.1
  done
  return 1
}

# --- the faults --------------------------------------------------------------
gen=0
do_upstream() {
  local t0 t1
  t0=$(now)
  kill -KILL "$up_pid"
  wait "$up_pid" 2>/dev/null || true
  say "upstream killed (SIGKILL); down for ${UP_OUTAGE}s"
  wait_until "$(plus "$t0" "$UP_OUTAGE")"
  start_upstream
  t1=$(now)
  event upstream_down "$t0" "$t1" 1 "SIGKILL"
  say "upstream back"
}
do_redis() {
  local t0 t1 ok=1
  t0=$(now)
  kill -TERM "$redis_pid"
  POLL_S=10 poll gone "$redis_pid" || { kill -KILL "$redis_pid"; ok=0; }
  wait "$redis_pid" 2>/dev/null || true
  say "redis stopped (SIGTERM); down for ${REDIS_OUTAGE}s"
  wait_until "$(plus "$t0" "$REDIS_OUTAGE")"
  start_redis
  t1=$(now)
  event redis_down "$t0" "$t1" "$ok" "SIGTERM"
  say "redis back"
}
do_reload() {
  local t0 t1 before after="" how ok=0 i
  gen=$((gen + 1))
  before=$(serving_version) || before="?"
  t0=$(now)
  write_config "$gen"
  if [ $((gen % 2)) = 0 ]; then
    kill -HUP "$(serving_pid)"
    how="file write + SIGHUP"
  else
    how="file watch"
  fi
  for i in $(seq 1 100); do # 10 s
    after=$(serving_version) || after=""
    if [ -n "$after" ] && [ "$after" != "$before" ]; then ok=1; break; fi
    housekeeping
    sleep 0.1
  done
  t1=$(now)
  event reload "$t0" "$t1" "$ok" "$how: $before -> ${after:-?}"
  if [ "$ok" = 1 ]; then say "config reload $gen ($how): applied, version $before -> $after"; else
    say "config reload $gen ($how): NOT applied within 10 s (version still ${after:-?})"; fi
}
do_upgrade() {
  local t0 t1 old new rc=0
  old=$(serving_pid)
  t0=$(now)
  timeout 90 "$BIN" upgrade -c "$conf" --timeout 30s </dev/null >>"$work/upgrade.out" 2>>"$work/gw.log" || rc=$?
  t1=$(now)
  new=$(serving_pid)
  echo "$new" >>"$work/gw.pids"
  local ok=0
  [ "$rc" = 0 ] && [ "$new" != "$old" ] && ok=1
  event upgrade "$t0" "$t1" "$ok" "$old -> $new (exit $rc)"
  watch_exit "$old" "$t0" &
  watchers+=($!)
  say "upgrade: $old -> $new (exit $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s)"
}

# --- run ---------------------------------------------------------------------
printf '\nmodelgate soak: %s (%ss), %s short requests/s over %s connections + %s long streams (%ss each), %s cores\n' \
  "$DURATION" "$DUR" "$RATE" "$WORKERS" "$STREAMS" "$((TRICKLE_EVENTS * TRICKLE_GAP))" "$(nproc)"
printf 'work directory %s; gateway 127.0.0.1:%s (admin %s), upstream %s, redis %s\n\n' "$work" "$GW_PORT" "$ADMIN_PORT" "$UP_PORT" "$REDIS_PORT"
start_upstream
start_redis
timeout 60 "$BIN" serve -d -c "$conf" </dev/null >>"$work/gw.log" 2>&1 || die "the gateway did not start (see $work/gw.log)"
POLL_S=30 poll gw_ready || die "the gateway does not answer /health (see $work/gw.log)"
serving_pid >>"$work/gw.pids"
sample idle_start
say "gateway pid $(serving_pid) serving"

# Long streams start spread over the first 4 % of the run (at most one stream
# length), so that all are open by the warm-up sample at 7 %.
stagger=$(awk -v d="$DUR" -v l="$((TRICKLE_EVENTS * TRICKLE_GAP))" 'BEGIN { s = 0.04 * d; if (s > l) s = l; printf "%.1f", s }')
python3 "$root/benches/soak/driver.py" --url "127.0.0.1:$GW_PORT" --keys "$work/keys.txt" --out "$work/requests.jsonl" \
  --duration "$DUR" --workers "$WORKERS" --rate "$RATE" --streams "$STREAMS" \
  --stagger "$stagger" --long-timeout "$((TRICKLE_EVENTS * TRICKLE_GAP + 60))" \
  2>"$work/driver.log" &
driver_pid=$!
t_load=$(now)
say "load started"

# 19 events, evenly spaced from 8 % to 88 % of the run, the kinds interleaved.
plan=(reload upstream reload redis upgrade reload upstream reload redis reload upgrade reload upstream reload redis reload upgrade reload reload)
n=${#plan[@]}
wait_until "$(at 0.07)"
sample load_start
for i in "${!plan[@]}"; do
  wait_until "$(at "$(awk -v i="$i" -v n="$n" 'BEGIN { printf "%.4f", 0.08 + i * 0.80 / (n - 1) }')")"
  alive "$driver_pid" || die "the load driver died (see $work/driver.log)"
  "do_${plan[$i]}"
done
wait_until "$(at 0.97)"
sample load_end
say "load stopping; waiting for open requests and streams"

# The driver starts nothing after DUR and every request has a bounded timeout.
limit=$(plus "$t_load" "$((DUR + TRICKLE_EVENTS * TRICKLE_GAP + 90))")
while alive "$driver_pid" && awk -v a="$(now)" -v b="$limit" 'BEGIN { exit !(a < b) }'; do housekeeping; sleep 0.2; done
if alive "$driver_pid"; then kill "$driver_pid"; die "the driver did not finish in time"; fi
wait "$driver_pid" || die "the load driver failed (see $work/driver.log)"
driver_pid=""
tail -n 1 "$work/driver.log" | sed 's/^/  /'
# Idle: nothing in flight on the serving process (bounded), then a sample.
in_flight() { curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^modelgate_requests_in_flight / { exit !($2 == 0) }'; }
POLL_S=10 poll in_flight || true
sample idle_end
curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$work/metrics.txt" 2>/dev/null || true
curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/status" >"$work/status.json" 2>/dev/null || true

# Graceful stop of the serving process; old ones still draining are waited for too.
pid=$(serving_pid)
t0=$(now)
kill -TERM "$pid"
say "SIGTERM to gateway pid $pid"
bound=$((GRACE + 20))
limit=$(plus "$t0" "$bound")
while alive "$pid" && awk -v a="$(now)" -v b="$limit" 'BEGIN { exit !(a < b) }'; do housekeeping; sleep 0.1; done
t1=$(now)
alive "$pid" && ok=0 || ok=1
event stop "$t0" "$t1" "$ok" "pid $pid, bound ${bound}s"
say "gateway pid $pid $([ "$ok" = 1 ] && echo exited || echo "still running after ${bound}s")"
[ ${#watchers[@]} -eq 0 ] || wait "${watchers[@]}" || true # each bounded by GRACE + 60 s from its upgrade
watchers=()

# What Redis holds for the budgets, to compare with the ledger: spend per
# key and team, and budget reservations (holds) still open.
for k in $(redis-cli -p "$REDIS_PORT" --scan --pattern 'soak:spend:*' 2>/dev/null); do
  printf '%s\t%s\n' "$k" "$(redis-cli -p "$REDIS_PORT" hgetall "$k" | paste -sd' ')"
done >"$work/redis-spend.tsv" || true
for k in $(redis-cli -p "$REDIS_PORT" --scan --pattern 'soak:holds:*' 2>/dev/null); do
  printf '%s\t%s\n' "$k" "$(redis-cli -p "$REDIS_PORT" zcard "$k")"
done >"$work/redis-holds.tsv" || true

report_rc=0
python3 "$root/benches/soak/report.py" --work "$work" --t-load "$t_load" --grace "$GRACE" || report_rc=$?
if [ "$report_rc" = 0 ] && grep -qiE 'panic|thread .* panicked' "$work/gw.log"; then
  echo "  (the gateway log mentions a panic: see $work/gw.log)"
  report_rc=1
fi
exit "$report_rc"
