#!/bin/sh
# Claude Code statusline for modelgate: shows the developer's own spend,
# budget and tokens for the period, from the gateway's GET /v1/usage.
#
#   $0.32 of $200.00 monthly · 500.4k tok · team platform $4999.68 left
#
# Install: copy this file somewhere, make it executable, and add to
# ~/.claude/settings.json:
#   {"statusLine": {"type": "command", "command": "/path/to/statusline.sh"}}
#
# It reads what Claude Code itself uses: ANTHROPIC_BASE_URL (the gateway) and
# the gateway key from ANTHROPIC_API_KEY or, when that is empty,
# ANTHROPIC_AUTH_TOKEN. The key goes to curl on its standard input, never on
# the command line (where `ps` would show it), and is never printed.
# Needs curl 7.55 or later (-H @-).

# Claude Code pipes the session as JSON on stdin; this script does not use it.
cat >/dev/null

unavailable() {
    printf '%s\n' 'modelgate: usage unavailable'
    exit 0
}

base=${ANTHROPIC_BASE_URL%/}
key=${ANTHROPIC_API_KEY:-${ANTHROPIC_AUTH_TOKEN:-}}
if [ -z "$base" ] || [ -z "$key" ]; then unavailable; fi

line=$(printf 'x-api-key: %s\n' "$key" |
    curl --max-time 2 -fsS -H @- "$base/v1/usage?format=text" 2>/dev/null) || unavailable
[ -n "$line" ] || unavailable
printf '%s\n' "$line"
