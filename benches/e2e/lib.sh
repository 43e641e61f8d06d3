# Shared by the e2e benchmarks (run.sh, store.sh, stalls.sh, profile.sh):
# their tools, the upstream, starting a gateway, the load runner and its
# units. Sourced after scripts/lib/deps.sh; expects $work (a temp dir),
# $DURATION, $TARGET and a `pids` array the script's cleanup kills.

# ensure_load_tools: nginx (upstream, hop, collector) and wrk, installed
# with apt when missing; sets NGINX.
ensure_load_tools() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || _apt_install nginx
  command -v wrk >/dev/null 2>&1 || _apt_install wrk
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# pg_bindir: the newest installed PostgreSQL's bin directory.
pg_bindir() { dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)"; }

# The upstream's answers: fixed Anthropic and OpenAI JSON and SSE bodies.
json='{"id":"msg_bench","type":"message","role":"assistant","model":"claude-opus-4-8","content":[{"type":"text","text":"Hello from the benchmark upstream."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}'
sse=$(printf 'event: message_start\\ndata: {"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","content":[],"model":"claude-opus-4-8","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}\\n\\nevent: content_block_start\\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\\n\\nevent: content_block_delta\\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\\n\\nevent: content_block_stop\\ndata: {"type":"content_block_stop","index":0}\\n\\nevent: message_delta\\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":12}}\\n\\nevent: message_stop\\ndata: {"type":"message_stop"}\\n\\n')

oai_json='{"id":"chatcmpl-bench","object":"chat.completion","created":1763769600,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the benchmark upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":25,"completion_tokens":12,"total_tokens":37}}'
oai_sse=""
for part in Hello " from" " the" " benchmark" " upstream."; do
  oai_sse+="data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"$part\"},\"finish_reason\":null}]}\\n\\n"
done
oai_sse+='data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: {"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":25,"completion_tokens":12,"total_tokens":37}}\n\ndata: [DONE]\n\n'

# write_upstream_conf DIR PORT: an nginx config in DIR answering those
# bodies on 127.0.0.1:PORT (start it with `nginx -p DIR -c DIR/nginx.conf`).
write_upstream_conf() {
  mkdir -p "$1/logs"
  cat > "$1/nginx.conf" <<NGX
  worker_processes 1;
  error_log logs/error.log warn;
  pid logs/nginx.pid;
  worker_rlimit_nofile 20000;
  events { worker_connections 16384; }
  http {
    access_log off;
    client_max_body_size 64m;
    client_body_buffer_size 256k;
    keepalive_requests 1000000;
    server {
      listen 127.0.0.1:$2;
      location = /v1/messages { default_type application/json; return 200 '$json'; }
      location = /sse/v1/messages { default_type text/event-stream; return 200 '$sse'; }
      location = /oai/v1/chat/completions { default_type application/json; return 200 '$oai_json'; }
      location = /oai-sse/v1/chat/completions { default_type text/event-stream; return 200 '$oai_sse'; }
      # A stream that stays open: the same events, sent at 64 bytes/s.
      location = /slow/v1/messages { default_type text/event-stream; limit_rate 64; return 200 '$sse'; }
      # An OTLP/HTTP collector that takes every export (the gateway's traces and metrics).
      location /otlp/ { default_type application/x-protobuf; return 200 ''; }
    }
  }
NGX
}

# start_modelgate LOG URL ARGS...: the release binary with ARGS (`serve -c
# FILE`, `proxy ...`; variables assigned before the call reach it), its
# output in LOG, added to pids; returns once URL answers. Sets started_pid.
start_modelgate() {
  local log=$1 url=$2
  shift 2
  "$TARGET"/release/modelgate "$@" >"$log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
  wait_up "$log" "$url"
}

# start_bare PORT LOG [VAR=VALUE...]: examples/bare_pingora on PORT in
# front of the upstream, with $GW_THREADS threads and the given
# environment, added to pids; returns once it answers. Sets started_pid.
start_bare() {
  local port=$1 log=$2
  shift 2
  env "$@" "$TARGET"/release/examples/bare_pingora "127.0.0.1:$port" "127.0.0.1:$UP_PORT" "$GW_THREADS" >"$log" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
  wait_up "$log" "http://127.0.0.1:$port/v1/messages" -d '{}'
}

# rss_mib PID: its resident set in MiB, one decimal.
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# otlp_yaml SAMPLE: the `telemetry:` section sending the gateway's own
# traces (SAMPLE of them) and metrics each second to the upstream nginx's
# collector; traceparent goes upstream only with OTLP_PROPAGATE=true.
otlp_yaml() {
  cat <<YAML
telemetry:
  otlp: {endpoint: "http://127.0.0.1:$UP_PORT/otlp", interval: 1s, propagate: ${OTLP_PROPAGATE:-false}, sample_ratio: $1}
YAML
}

# wait_up LOG CURL-ARGS...: poll (10 s at most) until curl with these
# arguments succeeds; on timeout print LOG and fail.
wait_up() {
  local log=$1
  shift
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$@" 2>/dev/null && return 0
    sleep 0.1
  done
  curl -fsS -o /dev/null "$@" || { cat "$log"; exit 1; }
}

# write_post_lua FILE: wrk's script for POSTing the body in $BODY_FILE.
write_post_lua() {
  cat > "$1" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
LUA
}

# write_proxy_lua FILE: like write_post_lua, but the request line carries the
# absolute URI in $TARGET_URI (a forward proxy's request form).
write_proxy_lua() {
  write_post_lua "$1"
  echo 'wrk.path = os.getenv("TARGET_URI")' >> "$1"
}

# run NAME URL BODY CONNS THREADS [PID...] -> "rps p50 p99 cpu" (latencies in
# ms; cpu = the PIDs' user+system CPU time per request in microseconds, or -).
# LUA names another wrk script (default: $work/post.lua).
run() {
  local out t0 t1
  t0=$(cpu_ticks "${@:6}")
  out=$(BODY_FILE="$3" wrk -t"$5" -c"$4" -d"$DURATION" --latency -s "${LUA:-$work/post.lua}" "$2" 2>&1)
  t1=$(cpu_ticks "${@:6}")
  if ! grep -q "Requests/sec" <<<"$out"; then echo "wrk failed for $1: $out" >&2; exit 1; fi
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers in $1: $out" >&2; exit 1; fi
  local rps p50 p99 n cpu=-
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  [ $# -gt 5 ] && cpu=$(awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / n }')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu"
}
# bench_bodies DIR: the benchmark's request bodies, written into DIR, in
# small (passthrough JSON), stream (passthrough SSE), oai_small and
# oai_stream (translated to Chat Completions) and slow (a stream the
# upstream trickles out); big is the 100 KB Claude Code fixture.
bench_body() { echo "{\"model\":\"$2\",\"max_tokens\":64,$3\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}]}" > "$1"; }
bench_bodies() {
  small=$1/small.json stream=$1/stream.json oai_small=$1/oai_small.json oai_stream=$1/oai_stream.json slow=$1/slow.json
  big=tests/fixtures/claude_code_request.json
  bench_body "$small" claude-opus-4-8 ''
  bench_body "$stream" claude-stream '"stream":true,'
  bench_body "$oai_small" claude-gpt-json ''
  bench_body "$oai_stream" claude-gpt-stream '"stream":true,'
  bench_body "$slow" claude-slow '"stream":true,'
}

# bench_gateway_yaml PORT LEDGER: the gateway run.sh and profile.sh measure,
# on its default settings, with a provider for each body above (the nginx
# upstream on UP_PORT) and GW_THREADS threads. Its ledger (LEDGER) should
# not be in the config's directory, whose watcher would wake on every write.
bench_gateway_yaml() {
  cat <<YAML
listen: 127.0.0.1:$1
log_level: warn
state: {path: "$2"}
default_provider: up
providers:
  up: {type: anthropic, api_base: "http://127.0.0.1:$UP_PORT", api_key: bench-provider-key}
  up-sse: {type: anthropic, api_base: "http://127.0.0.1:$UP_PORT/sse", api_key: bench-provider-key}
  up-slow: {type: anthropic, api_base: "http://127.0.0.1:$UP_PORT/slow", api_key: bench-provider-key}
  oai: {type: openai, api_base: "http://127.0.0.1:$UP_PORT/oai/v1", api_key: bench-provider-key}
  oai-sse: {type: openai, api_base: "http://127.0.0.1:$UP_PORT/oai-sse/v1", api_key: bench-provider-key}
threads: $GW_THREADS
routes:
  - {match: claude-stream, provider: up-sse}
  - {match: claude-slow, provider: up-slow}
  - {match: claude-gpt-json, provider: oai, model: gpt-4o}
  - {match: claude-gpt-stream, provider: oai-sse, model: gpt-4o}
YAML
}

# median: the median of the numbers on standard input, one per line.
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# medians ROW...: each column's median over rows of run's "rps p50 p99 cpu".
medians() {
  local i out=()
  for i in 1 2 3 4; do out+=("$(printf '%s\n' "$@" | awk -v i="$i" '{print $i}' | median)"); done
  echo "${out[*]}"
}
# cpu_ticks PID... -> their summed user+system time, in clock ticks.
cpu_ticks() {
  local p t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n+=0; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

# tree PID -> PID and every descendant (worker processes, backends).
tree() {
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p"); do tree "$c"; done
}

# PostgreSQL refuses to run as root: as the `postgres` user then.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# start_postgres DATA SOCK PORT [SERVER-ARGS...]: initdb DATA (its parent
# directory and SOCK are handed to `postgres`) with a random password for
# user postgres (in $pg_pw), start the server ($PGBIN's) on 127.0.0.1:PORT
# with its socket and log in SOCK, wait (10 s at most) until it is ready,
# and create database `bench`. PG_WRAP prefixes the server's command (say
# `nice -n 19`). Sets pg_pid.
start_postgres() {
  local data=$1 sock=$2 port=$3
  shift 3
  mkdir -p "$sock" "$(dirname "$data")"
  pg_pw=bench-$RANDOM$RANDOM
  echo "$pg_pw" > "$sock/pw"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$sock" "$(dirname "$data")"; fi
  as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --pwfile="$sock/pw" >/dev/null
  # shellcheck disable=SC2086 # PG_WRAP is a command prefix, one word each
  as_pg ${PG_WRAP:-} "$PGBIN/postgres" -D "$data" -p "$port" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$sock" "$@" >"$sock/pg.log" 2>&1 &
  pg_pid=$!
  for _ in $(seq 1 100); do
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.1
  done
  as_pg "$PGBIN/psql" -X -q -h "$sock" -p "$port" -U postgres -c "CREATE DATABASE bench" >/dev/null
}
