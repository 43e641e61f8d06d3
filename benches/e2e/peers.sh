# The gateways a platform team would pick instead, side by side with
# modelgate in the same run (`PEERS=1 benches/e2e/run.sh`, or
# `ONLY=peers benches/e2e/run.sh` for this table alone). Sourced by run.sh;
# never part of CI.
#
# - LiteLLM proxy (PyPI `litellm[proxy]`), with one worker and with one per
#   core (its recommendation), through its Anthropic `/v1/messages`
#   endpoint: passthrough to the Anthropic-shaped upstream, and translated
#   to Chat Completions for the OpenAI-shaped one
#   (LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES, as modelgate
#   translates; by default it would use the Responses API).
# - Portkey's gateway (npm `@portkey-ai/gateway`) through its `/v1/messages`
#   with `x-portkey-provider` and `x-portkey-custom-host`. It translates
#   `/v1/messages` for no provider but Anthropic, so it has passthrough rows
#   only.
#
# Both are installed at pinned versions into benches/e2e/.peers/ (git-ignored)
# and listen on 127.0.0.1 only; LiteLLM reads its model prices locally and
# sends no telemetry.

LITELLM_VERSION=1.108.7
PORTKEY_VERSION=1.15.2
PEERS_DIR=benches/e2e/.peers
PEER_PORT=${PEER_PORT:-18910}
# LiteLLM refuses to start without a master key; this one guards nothing but
# a loopback benchmark.
PEER_KEY=sk-bench-7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c2e

ensure_peers() {
  command -v npm >/dev/null 2>&1 || _apt_install npm
  python3 -c 'import venv, ensurepip' 2>/dev/null || _apt_install python3-venv
  if [ ! -x "$PEERS_DIR/venv/bin/litellm" ]; then
    python3 -m venv "$PEERS_DIR/venv"
    "$PEERS_DIR/venv/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"
  fi
  if [ ! -f "$PEERS_DIR/node/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
    mkdir -p "$PEERS_DIR/node"
    (cd "$PEERS_DIR/node" && npm init -y >/dev/null && npm install --silent "@portkey-ai/gateway@$PORTKEY_VERSION")
  fi
}


tree_rss_mb() {
  local t=0 p
  for p in $(tree "$1"); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
  awk -v k="$t" 'BEGIN { printf "%.1f", k / 1024 }'
}

# wait_http URL: poll (60 s at most: LiteLLM takes a while to import).
wait_http() {
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "not up: $1" >&2
  return 1
}

start_peers() {
  ensure_peers
  cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: claude-opus-4-8
    litellm_params: {model: anthropic/claude-opus-4-8, api_base: "http://127.0.0.1:$UP_PORT", api_key: bench-provider-key}
  - model_name: claude-stream
    litellm_params: {model: anthropic/claude-opus-4-8, api_base: "http://127.0.0.1:$UP_PORT/sse", api_key: bench-provider-key}
  - model_name: claude-gpt-json
    litellm_params: {model: openai/gpt-4o, api_base: "http://127.0.0.1:$UP_PORT/oai/v1", api_key: bench-provider-key}
  - model_name: claude-gpt-stream
    litellm_params: {model: openai/gpt-4o, api_base: "http://127.0.0.1:$UP_PORT/oai-sse/v1", api_key: bench-provider-key}
litellm_settings: {telemetry: false}
general_settings: {master_key: $PEER_KEY}
YAML
  local workers
  litellm_pids=()
  for workers in 1 "$(nproc)"; do
    LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES=true \
      "$PEERS_DIR/venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 \
      --port $((PEER_PORT + workers)) --num_workers "$workers" >"$work/litellm-$workers.log" 2>&1 &
    litellm_pids+=("$!")
    pids+=("$!")
  done
  node "$PEERS_DIR/node/node_modules/@portkey-ai/gateway/build/start-server.js" --port="$PEER_PORT" --headless \
    >"$work/portkey.log" 2>&1 &
  portkey_pid=$!
  pids+=("$portkey_pid")
  wait_http "http://127.0.0.1:$((PEER_PORT + 1))/health/liveliness"
  wait_http "http://127.0.0.1:$((PEER_PORT + $(nproc)))/health/liveliness"
  wait_http "http://127.0.0.1:$PEER_PORT/"
  # wrk's script with extra headers from $EXTRA_HEADERS ("name=value|name=value").
  write_post_lua "$work/peer.lua"
  cat >> "$work/peer.lua" <<'LUA'
for name, value in string.gmatch(os.getenv("EXTRA_HEADERS") or "", "([^|=]+)=([^|]+)") do
  wrk.headers[name] = value
end
LUA
}

# peer_run NAME URL BODY PIDS... -> "rps p50 p99 cpu" or "failed". A 2 s
# run at 4 connections first, not counted: the Python and Node peers are
# slow on their first requests (imports, JIT), which is not what is measured.
peer_run() {
  local out
  BODY_FILE="$3" wrk -t1 -c4 -d2s -s "$work/peer.lua" "$2" >/dev/null 2>&1 || true
  # shellcheck disable=SC2046 # one pid per word
  if out=$(LUA="$work/peer.lua" run "$1" "$2" "$3" "$CONNS" "$THREADS" "${@:4}" 2>"$work/peer-err.txt"); then
    echo "$out"
  else
    echo "failed"
  fi
}

peer_rows() {
  start_peers
  printf '\npeers (same run): the same requests through LiteLLM %s and Portkey gateway %s; CPU and RSS are each whole process tree'"'"'s\n' \
    "$LITELLM_VERSION" "$PORTKEY_VERSION"
  printf '%-22s %-18s %10s %9s %9s %11s %10s\n' scenario target rps p50_ms p99_ms cpu_us/req rss_mib
  local scenario name body kind target url pids row headers
  for scenario in "passthrough-json:$small:anthropic:/v1" "passthrough-sse:$stream:anthropic:/sse/v1" \
                  "translated-json:$oai_small:openai:/oai/v1" "translated-sse:$oai_stream:openai:/oai-sse/v1"; do
    IFS=: read -r name body kind path <<<"$scenario"
    for target in modelgate litellm-1w "litellm-$(nproc)w" portkey; do
      headers=
      case $target in
        modelgate) url="http://127.0.0.1:$GW_PORT/v1/messages"; pids="$gw_pid" ;;
        litellm-1w) url="http://127.0.0.1:$((PEER_PORT + 1))/v1/messages"; pids=$(tree "${litellm_pids[0]}")
                    headers="authorization=Bearer $PEER_KEY" ;;
        litellm-*) url="http://127.0.0.1:$((PEER_PORT + $(nproc)))/v1/messages"; pids=$(tree "${litellm_pids[1]}")
                   headers="authorization=Bearer $PEER_KEY" ;;
        portkey)
          if [ "$kind" != anthropic ]; then
            printf '%-22s %-18s %10s\n' "$name" "$target" "not supported (/v1/messages is Anthropic-only there)"
            continue
          fi
          url="http://127.0.0.1:$PEER_PORT/v1/messages"; pids="$portkey_pid"
          headers="x-portkey-provider=anthropic|x-portkey-custom-host=http://127.0.0.1:$UP_PORT$path|x-api-key=bench-provider-key" ;;
      esac
      # shellcheck disable=SC2086 # one pid per word
      row=$(EXTRA_HEADERS="$headers" peer_run "$name/$target" "$url" "$body" $pids)
      if [ "$row" = failed ]; then
        printf '%-22s %-18s %10s\n' "$name" "$target" "failed: $(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$work/peer-err.txt" || head -c 80 "$work/peer-err.txt")"
        continue
      fi
      read -r rps p50 p99 cpu <<<"$row"
      # shellcheck disable=SC2086
      printf '%-22s %-18s %10.0f %9s %9s %11s %10s\n' "$name" "$target" "$rps" "$p50" "$p99" "$cpu" \
        "$(case $target in modelgate) tree_rss_mb "$gw_pid" ;; portkey) tree_rss_mb "$portkey_pid" ;; litellm-1w) tree_rss_mb "${litellm_pids[0]}" ;; *) tree_rss_mb "${litellm_pids[1]}" ;; esac)"
    done
  done
}
