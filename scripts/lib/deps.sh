# Shared by scripts/test and scripts/serve: install what the build and the
# tests need, only when it is missing. Debian/Ubuntu (apt-get); root or sudo.

_apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "error: need root or sudo to install: $*" >&2; return 1
    fi
  fi
  if [ -z "${_MODELGATE_APT_UPDATED:-}" ]; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _MODELGATE_APT_UPDATED=1
  fi
  echo "installing: $*" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# cmake builds Pingora's zlib-ng; a C compiler builds ring and zstd.
ensure_build_deps() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  command -v make >/dev/null 2>&1 || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then _apt_install "${missing[@]}"; fi
}

# redis-server backs the shared-state (multi-replica) tests.
ensure_test_deps() {
  command -v redis-server >/dev/null 2>&1 || _apt_install redis-server
}

# PostgreSQL (initdb and postgres, Debian's /usr/lib/postgresql/*/bin) backs
# the shared-store tests; each test starts its own server in a temp dir.
ensure_postgres() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
    || _apt_install postgresql
}

# HAProxy (Debian's `haproxy`) is the load balancer in front of a fleet of
# gateways in the fleet tests; each test starts its own on free ports.
ensure_haproxy() {
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || _apt_install haproxy
}

# The official Anthropic Python SDK, in a git-ignored venv, for the
# real-client conformance tests.
ensure_python_sdk() {
  local venv=tests/clients/venv
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import anthropic' 2>/dev/null; then return 0; fi
  command -v python3 >/dev/null 2>&1 || _apt_install python3
  python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || _apt_install python3-venv
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
}

# promtool (Debian package `prometheus`) lints the /metrics output in tests.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 || _apt_install prometheus
}

# The Node.js packages the tests run (pinned in tests/clients/package.json
# and its lock file), in git-ignored tests/clients/node_modules: the real
# Claude Code CLI for the conformance suite, oidc-provider (the OpenID
# provider of the sign-in tests) and playwright-core (drives Chromium in the
# dashboard tests). Needs Node.js 18 or newer; reinstalls when any installed
# version differs from its pin.
ensure_node_clients() {
  local dir=tests/clients major=0
  if command -v node >/dev/null 2>&1; then major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0); fi
  if [ "$major" -ge 18 ] && node -e '
    const fs = require("fs"), dir = process.argv[1];
    const want = require(dir + "/package.json").dependencies;
    for (const [name, version] of Object.entries(want)) {
      let have = null;
      try { have = JSON.parse(fs.readFileSync(dir + "/node_modules/" + name + "/package.json")).version; } catch (_) {}
      if (have !== version) process.exit(1);
    }' "$PWD/$dir" 2>/dev/null; then
    return 0
  fi
  if [ "$major" -lt 18 ] || ! command -v npm >/dev/null 2>&1; then _apt_install nodejs npm; fi
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || {
    echo "error: could not install the pinned Node.js test clients into $dir (npm ci failed)" >&2
    return 1
  }
}

# Debian's Chromium (and its ChromeDriver) for the dashboard's browser
# tests; playwright-core starts /usr/bin/chromium headless.
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 || _apt_install chromium chromium-driver
}
