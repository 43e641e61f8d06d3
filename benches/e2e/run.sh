#!/usr/bin/env bash
# End-to-end load benchmark on loopback: modelgate vs an nginx proxy hop vs
# hitting the upstream directly, all measured in the same run.
#
#   benches/e2e/run.sh                 # 10 s per scenario
#   DURATION=5s CONNS=32 ROUNDS=3 benches/e2e/run.sh   # ROUNDS: of the main table (3 by default), whose
#                                                     # rows are each column's median over the rounds
#   ONLY=otlp benches/e2e/run.sh       # just the OTLP-export rows
#   ONLY=otlp OTLP_SAMPLE=0.05 benches/e2e/run.sh   # the same, 5% of requests traced (OTLP_ROUNDS=3;
#                                                   # OTLP_PROPAGATE=true adds traceparent upstream)
#   ONLY=proxy benches/e2e/run.sh      # just the forward-proxy rows
#   ONLY=streams benches/e2e/run.sh    # just the open-streams rows (1,000 and 10,000)
#   PEERS=1 benches/e2e/run.sh         # also LiteLLM and Portkey side by side (installs them; never in CI)
#   ONLY=peers benches/e2e/run.sh      # just that table
#   ONLY=c1 benches/e2e/run.sh         # just the added latency at c=1 (ROUNDS rounds)
#
# The upstream is nginx answering fixed Anthropic JSON and SSE bodies. Every
# process listens on 127.0.0.1 only and every load run is bounded by
# DURATION. Output: one table with RPS, p50/p99 latency, the ratio to the
# nginx hop measured in this run, and each proxy's CPU time per request
# (what it costs, apart from how the two cores were shared); then memory
# (idle, 1,000 open streams) and the added latency at c=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/deps.sh
. benches/e2e/lib.sh
ensure_build_deps
ensure_load_tools

DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
UP_PORT=${UP_PORT:-18901}
HOP_PORT=${HOP_PORT:-18902}
GW_PORT=${GW_PORT:-18903}
BARE_PORT=${BARE_PORT:-18904}
OTEL_PORT=${OTEL_PORT:-18905}
PROXY_PORT=${PROXY_PORT:-18906}
STREAMS=${STREAMS:-1000}
ROUNDS=${ROUNDS:-3}
GW_THREADS=${GW_THREADS:-$(nproc)}
# Open streams need two descriptors each in the proxy (10,000 streams:
# 20,000 and a few), one in wrk and one in the upstream.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin modelgate --example bare_pingora
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" -s stop 2>/dev/null || true
  "$NGINX" -p "$work/hop" -c "$work/hop/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/hop/logs"
write_upstream_conf "$work/up" "$UP_PORT"
cat > "$work/hop/nginx.conf" <<NGX
worker_processes auto;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_max_body_size 64m;
  client_body_buffer_size 256k;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$HOP_PORT;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
"$NGINX" -p "$work/up" -c "$work/up/nginx.conf"
"$NGINX" -p "$work/hop" -c "$work/hop/nginx.conf"

# Each gateway's ledger is its own, in the run's directory (not the
# config's: its watcher would wake on every ledger write), so that runs do
# not add to one file that grows from run to run.
mkdir -p "$work/state"
bench_gateway_yaml "$GW_PORT" "$work/state/gw.db" > "$work/gw.yaml"
start_modelgate "$work/gw.log" "http://127.0.0.1:$GW_PORT/health" serve -c "$work/gw.yaml"
gw_pid=$started_pid
idle_rss=$(rss_mib "$gw_pid")
start_bare "$BARE_PORT" "$work/bare.log"
bare_pid=$started_pid
bare_idle_rss=$(rss_mib "$bare_pid")

bench_bodies "$work"
write_post_lua "$work/post.lua"


# The same gateway with its own OTLP export on (traces of every request,
# metrics every second) to a collector that takes everything (the upstream
# nginx's /otlp/): what exporting costs.
sed -e "s/^listen: .*/listen: 127.0.0.1:$OTEL_PORT/" -e "s#/state/gw.db#/state/otel.db#" "$work/gw.yaml" > "$work/gw-otel.yaml"
otlp_yaml "${OTLP_SAMPLE:-1.0}" >> "$work/gw-otel.yaml"
start_modelgate "$work/gw-otel.log" "http://127.0.0.1:$OTEL_PORT/health" serve -c "$work/gw-otel.yaml"
otel_pid=$started_pid
# OTLP_ROUNDS rounds (default 3) of each scenario, off and on back to back,
# the order swapped every round so that drift on a shared machine falls on
# both alike; the median of the rounds' on/off ratios is the row's answer.
otlp_rows() {
  local rounds=${OTLP_ROUNDS:-3}
  printf '\nOTLP export (same run, %s rounds, sample_ratio %s, propagate %s): modelgate with telemetry.otlp on, against modelgate without it\n' "$rounds" "${OTLP_SAMPLE:-1.0}" "${OTLP_PROPAGATE:-false}"
  printf '%-22s %6s %10s %10s %9s %9s %10s %10s %9s\n' scenario round off_rps on_rps on/off off_p99 on_p99 off_cpu on_cpu
  for scenario in "passthrough-json:$small" "passthrough-sse:$stream" "translated-sse:$oai_stream"; do
    IFS=: read -r name body <<<"$scenario"
    local ratios=() r
    for ((r = 1; r <= rounds; r++)); do
      local off_rps off50 off99 off_cpu on_rps on50 on99 on_cpu
      if ((r % 2)); then
        read -r off_rps off50 off99 off_cpu < <(run "$name/otlp-off" "http://127.0.0.1:$GW_PORT/v1/messages" "$body" "$CONNS" "$THREADS" "$gw_pid")
        read -r on_rps on50 on99 on_cpu < <(run "$name/otlp-on" "http://127.0.0.1:$OTEL_PORT/v1/messages" "$body" "$CONNS" "$THREADS" "$otel_pid")
      else
        read -r on_rps on50 on99 on_cpu < <(run "$name/otlp-on" "http://127.0.0.1:$OTEL_PORT/v1/messages" "$body" "$CONNS" "$THREADS" "$otel_pid")
        read -r off_rps off50 off99 off_cpu < <(run "$name/otlp-off" "http://127.0.0.1:$GW_PORT/v1/messages" "$body" "$CONNS" "$THREADS" "$gw_pid")
      fi
      ratios+=("$(awk -v a="$on_rps" -v b="$off_rps" 'BEGIN{printf "%.3f", a/b}')")
      printf '%-22s %6s %10.0f %10.0f %8sx %9s %10s %10s %9s\n' "$name" "$r" "$off_rps" "$on_rps" "${ratios[-1]}" "$off99" "$on99" "$off_cpu" "$on_cpu"
    done
    printf '%-22s %6s %10s %10s %8sx\n' "$name" median "" "" "$(printf '%s\n' "${ratios[@]}" | median)"
  done
  printf 'OTLP exports: %s\n' "$(curl -fsS "http://127.0.0.1:$OTEL_PORT/metrics" | grep -E '^modelgate_otlp_(exports|spans_dropped)_total' | tr '\n' ' ')"
}

# `modelgate proxy` (the forward proxy) relaying absolute-form POSTs to the
# upstream, against the same POSTs sent to the upstream directly. Its access
# log is off (log_level: warn), as the nginx hop's is.
cat > "$work/proxy.yaml" <<YAML
log_level: warn
state: {path: "$work/state/proxy.db"}
threads: $GW_THREADS
proxy: {allow: ["127.0.0.1:$UP_PORT"]}
YAML
start_modelgate "$work/proxy.log" "http://127.0.0.1:$PROXY_PORT/health" proxy -c "$work/proxy.yaml" -p "$PROXY_PORT"
proxy_pid=$started_pid
write_proxy_lua "$work/proxy.lua"
proxy_rows() {
  printf '\nforward proxy (same run): absolute-form POSTs through modelgate proxy, against the upstream directly\n'
  printf '%-26s %-16s %12s %10s %10s %12s %12s\n' scenario target rps p50_ms p99_ms vs_direct cpu_us/req
  for scenario in "proxy-json:/v1/messages:$small" "proxy-sse:/sse/v1/messages:$stream"; do
    IFS=: read -r name path body <<<"$scenario"
    read -r d_rps d50 d99 _ < <(run "$name/direct" "http://127.0.0.1:$UP_PORT$path" "$body" "$CONNS" "$THREADS")
    # shellcheck disable=SC2086 # one pid per word
    read -r h_rps h50 h99 h_cpu < <(run "$name/nginx" "http://127.0.0.1:$HOP_PORT$path" "$body" "$CONNS" "$THREADS" $hop_pids)
    read -r p_rps p50 p99 p_cpu < <(TARGET_URI="http://127.0.0.1:$UP_PORT$path" LUA="$work/proxy.lua" \
      run "$name/proxy" "http://127.0.0.1:$PROXY_PORT/" "$body" "$CONNS" "$THREADS" "$proxy_pid")
    printf '%-26s %-16s %12.0f %10s %10s %12s %12s\n' "$name" direct "$d_rps" "$d50" "$d99" "1.00x" -
    printf '%-26s %-16s %12.0f %10s %10s %11.2fx %12s\n' "$name" "nginx-hop (ref)" "$h_rps" "$h50" "$h99" "$(awk -v a="$h_rps" -v b="$d_rps" 'BEGIN{print a/b}')" "$h_cpu"
    printf '%-26s %-16s %12.0f %10s %10s %11.2fx %12s\n' "$name" modelgate-proxy "$p_rps" "$p50" "$p99" "$(awk -v a="$p_rps" -v b="$d_rps" 'BEGIN{print a/b}')" "$p_cpu"
  done
}
# Memory with streams open at once: the upstream trickles each one out at
# 64 bytes/s (~14 s per answer), so they stay open while wrk holds the
# connections. First $STREAMS, then $BIG_STREAMS: by default 10,000, or as
# many as the descriptor limit lets a proxy hold (two per stream, a client
# and an upstream connection, and a few of its own).
fd_limit=$(ulimit -n)
BIG_STREAMS=${BIG_STREAMS:-$(( (fd_limit - 128) / 2 < 10000 ? (fd_limit - 128) / 2 : 10000 ))}
gw_streams() { curl -fsS "http://127.0.0.1:$STREAM_GW_PORT/metrics" | awk '/^modelgate_streams_in_flight / {print int($2)}'; }
# Bare Pingora has no metrics: its connections to the upstream are the
# streams it is relaying (client connections still in its accept queue are
# established too, but not yet served).
bare_streams() { ss -Htnp state established "( dport = :$UP_PORT )" | grep -c "pid=$sbare_pid," || true; }
gw_5xx() { curl -fsS "http://127.0.0.1:$STREAM_GW_PORT/metrics" | awk '/^modelgate_requests_total/ && /status_class="5xx"/ {n += $2} END {print n + 0}'; }
# hold_streams N URL PID COUNT-FN: wrk holds N connections on URL; poll (30 s
# at most) until COUNT-FN reports N open; print "open rss_mib errors", then
# let wrk run to the end of its 25 s, answers completing while new ones open.
# errors: wrk's socket errors and non-2xx answers.
hold_streams() {
  local n=$1 url=$2 pid=$3 count=$4 open=0 rss
  BODY_FILE="$slow" wrk -t"$THREADS" -c"$n" -d25s --timeout 60s -s "$work/post.lua" "$url" >"$work/hold.out" 2>&1 &
  local wrk_pid=$!
  for _ in $(seq 1 300); do
    open=$($count)
    [ "${open:-0}" -ge "$n" ] && break
    sleep 0.1
  done
  rss=$(rss_mib "$pid")
  wait "$wrk_pid" 2>/dev/null || true
  echo "${open:-0} $rss $(awk '/Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} /Non-2xx/ {n += $NF} END {print n + 0}' "$work/hold.out")"
}
# The streams are held by a gateway and a bare Pingora of their own, started
# by stream_rows and idle until then: memory that the load runs leave with the
# allocator is not counted as the streams', and the load runs do not meet
# what ten thousand connections leave behind.
STREAM_GW_PORT=${STREAM_GW_PORT:-18907}
STREAM_BARE_PORT=${STREAM_BARE_PORT:-18908}
stream_rows() {
  sed -e "s/^listen: .*/listen: 127.0.0.1:$STREAM_GW_PORT/" -e "s#/state/gw.db#/state/streams.db#" "$work/gw.yaml" > "$work/gw-streams.yaml"
  start_modelgate "$work/gw-streams.log" "http://127.0.0.1:$STREAM_GW_PORT/health" serve -c "$work/gw-streams.yaml"
  sgw_pid=$started_pid
  start_bare "$STREAM_BARE_PORT" "$work/bare-streams.log"
  sbare_pid=$started_pid
  sgw_idle_rss=$(rss_mib "$sgw_pid")
  sbare_idle_rss=$(rss_mib "$sbare_pid")
  printf '\nopen streams (slow upstream; a gateway and a bare Pingora that served nothing before; idle RSS %s and %s MiB)\n' \
    "$sgw_idle_rss" "$sbare_idle_rss"
  printf '%-10s %-12s %8s %10s %14s %8s\n' streams target open rss_mib kb_per_stream errors
  for n in "$STREAMS" "$BIG_STREAMS"; do
    five0=$(gw_5xx)
    read -r open rss errs < <(hold_streams "$n" "http://127.0.0.1:$STREAM_GW_PORT/v1/messages" "$sgw_pid" gw_streams)
    printf '%-10s %-12s %8s %10s %14.1f %8s\n' "$n" modelgate "$open" "$rss" "$(awk -v r="$rss" -v i="$sgw_idle_rss" -v n="$open" 'BEGIN{print n ? (r - i) * 1024 / n : 0}')" "$((errs + $(gw_5xx) - five0))"
    read -r open rss errs < <(hold_streams "$n" "http://127.0.0.1:$STREAM_BARE_PORT/slow/v1/messages" "$sbare_pid" bare_streams)
    printf '%-10s %-12s %8s %10s %14.1f %8s\n' "$n" bare-pingora "$open" "$rss" "$(awk -v r="$rss" -v i="$sbare_idle_rss" -v n="$open" 'BEGIN{print n ? (r - i) * 1024 / n : 0}')" "$errs"
  done
}
# Added latency at c=1 (one connection, sequential requests, the small JSON
# body): ROUNDS rounds of direct, the nginx hop, bare Pingora and modelgate
# in turn; each proxy's p50 and p99 over direct's in the same round, then
# the median of each proxy's p50 over the rounds.
c1_rows() {
  local r t name port d50 d99 p50 p99 line
  local -A added
  printf '\nadded latency at c=1 (sequential requests), small JSON body: ms over direct, p50 (p99)\n'
  printf '%-7s %10s %20s %20s %20s\n' round direct_p50 nginx-hop bare-pingora modelgate
  for ((r = 1; r <= ROUNDS; r++)); do
    read -r _ d50 d99 _ < <(run direct "http://127.0.0.1:$UP_PORT/v1/messages" "$small" 1 1)
    line=$(printf '%-7s %10.3f' "$r" "$d50")
    for t in "nginx-hop:$HOP_PORT" "bare-pingora:$BARE_PORT" "modelgate:$GW_PORT"; do
      name=${t%%:*} port=${t##*:}
      read -r _ p50 p99 _ < <(run "$name" "http://127.0.0.1:$port/v1/messages" "$small" 1 1)
      p50=$(awk -v a="$p50" -v b="$d50" 'BEGIN{printf "%+.3f", a - b}')
      added[$name]+="$p50 "
      line+=$(printf ' %9s (%+8.3f)' "$p50" "$(awk -v a="$p99" -v b="$d99" 'BEGIN{print a - b}')")
    done
    echo "$line"
  done
  printf '%-7s %10s' median ""
  for name in nginx-hop bare-pingora modelgate; do
    # shellcheck disable=SC2086 # one figure per word
    printf ' %9s %10s' "$(printf '%s\n' ${added[$name]} | median | awk '{printf "%+.3f", $1}')" ""
  done
  echo
}

# nginx's CPU is its workers'.
hop_pids=$(pgrep -P "$(cat "$work/hop/logs/nginx.pid")" | tr '\n' ' ')
if [ "${PEERS:-0}" = 1 ] || [ "${ONLY:-}" = peers ]; then
  . benches/e2e/peers.sh
fi
case "${ONLY:-}" in
  c1) c1_rows; exit 0 ;;
  otlp) otlp_rows; exit 0 ;;
  proxy) proxy_rows; exit 0 ;;
  streams) stream_rows; exit 0 ;;
  peers) peer_rows; exit 0 ;;
esac

# Each scenario runs ROUNDS times, the nginx hop, modelgate and bare Pingora
# in turn, so that drift on a shared machine falls on all of them; a row is
# each column's median over the rounds.
printf '\nmodelgate e2e benchmark: %s per scenario, %s rounds (medians), %s connections, %s wrk threads, %s cores\n\n' "$DURATION" "$ROUNDS" "$CONNS" "$THREADS" "$(nproc)"
printf '%-26s %-12s %12s %10s %10s %12s %12s %12s\n' scenario target rps p50_ms p99_ms vs_nginx_hop cpu_us/req cpu_vs_bare
# Bare Pingora's CPU per request by shape (json, sse): the floor each
# modelgate row is measured against (translated rows against the passthrough
# of the same shape).
declare -A bare_cpu
# name:nginx-hop path:nginx body:modelgate body (the hop is always plain pass-through)
for scenario in "passthrough-json:/v1/messages:$small:$small" "passthrough-sse:/sse/v1/messages:$stream:$stream" \
                "claude-code-100KB:/v1/messages:$big:$big" "translated-json:/v1/messages:$small:$oai_small" \
                "translated-sse:/sse/v1/messages:$stream:$oai_stream"; do
  IFS=: read -r name path hop_body gw_body <<<"$scenario"
  hop_rows=() gw_rows=() b_rows=()
  for ((r = 1; r <= ROUNDS; r++)); do
    # shellcheck disable=SC2086 # one pid per word
    hop_rows+=("$(run "$name/nginx" "http://127.0.0.1:$HOP_PORT$path" "$hop_body" "$CONNS" "$THREADS" $hop_pids)")
    gw_rows+=("$(run "$name/modelgate" "http://127.0.0.1:$GW_PORT/v1/messages" "$gw_body" "$CONNS" "$THREADS" "$gw_pid")")
    # Bare Pingora is a pass-through: it has no translated rows.
    if [ "$hop_body" = "$gw_body" ]; then
      b_rows+=("$(run "$name/bare-pingora" "http://127.0.0.1:$BARE_PORT$path" "$hop_body" "$CONNS" "$THREADS" "$bare_pid")")
    fi
  done
  read -r hop_rps hop50 hop99 hop_cpu <<<"$(medians "${hop_rows[@]}")"
  read -r gw_rps gw50 gw99 gw_cpu <<<"$(medians "${gw_rows[@]}")"
  printf '%-26s %-12s %12.0f %10s %10s %12s %12s\n' "$name" nginx-hop "$hop_rps" "$hop50" "$hop99" "1.00x" "$hop_cpu"
  if [ "$hop_body" = "$gw_body" ]; then
    read -r b_rps b50 b99 b_cpu <<<"$(medians "${b_rows[@]}")"
    printf '%-26s %-12s %12.0f %10s %10s %11.2fx %12s %12s\n' "$name" bare-pingora "$b_rps" "$b50" "$b99" "$(awk -v a="$b_rps" -v b="$hop_rps" 'BEGIN{print a/b}')" "$b_cpu" "1.00x"
    case $name in *-sse) bare_cpu[sse]=$b_cpu ;; passthrough-json) bare_cpu[json]=$b_cpu ;; *) bare_cpu[$name]=$b_cpu ;; esac
  fi
  case $name in *-sse) floor=${bare_cpu[sse]} ;; *-json) floor=${bare_cpu[json]} ;; *) floor=${bare_cpu[$name]} ;; esac
  printf '%-26s %-12s %12.0f %10s %10s %11.2fx %12s %11.2fx\n' "$name" modelgate "$gw_rps" "$gw50" "$gw99" "$(awk -v a="$gw_rps" -v b="$hop_rps" 'BEGIN{print a/b}')" "$gw_cpu" "$(awk -v a="$gw_cpu" -v b="$floor" 'BEGIN{print a/b}')"
done
printf '\nmodelgate RSS: idle %s MiB, after load %s MiB\n' "$idle_rss" "$(rss_mib "$gw_pid")"
otlp_rows
proxy_rows
if [ "${PEERS:-0}" = 1 ]; then peer_rows; fi

stream_rows

c1_rows
