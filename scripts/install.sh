#!/usr/bin/env bash
# Install modelgate as a system service on this host.
#
#   scripts/install.sh [--binary PATH] [--init SYSTEM] [--dry-run] [--help]
#
# 1. Builds the release binary (cargo build --release --locked), unless
#    --binary names one that is already built.
# 2. Installs it as /usr/local/bin/modelgate, creates the `modelgate` user
#    (macOS: `_modelgate`), /etc/modelgate and /var/lib/modelgate, and the
#    config /etc/modelgate/modelgate.yaml (from deploy/systemd/modelgate.yaml)
#    and /etc/modelgate/env (provider keys) when they do not exist yet.
# 3. Detects the init system (systemd, OpenRC, SysV init, macOS launchd) and
#    installs the matching service file from deploy/.
#
# Existing config and env files are never overwritten. Running it again with
# a new binary is an upgrade: it prints the zero-downtime reload command.
# Works with bash 3.2 (macOS) and later.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX_BIN=/usr/local/bin
CONF_DIR=/etc/modelgate
STATE_DIR=/var/lib/modelgate
LOG_DIR=/var/log/modelgate
SVC_USER=modelgate

BINARY=""
INIT=auto
DRY_RUN=0
DONE=()   # what was done, for the summary

usage() {
    cat <<'EOF'
Usage: scripts/install.sh [options]

Install modelgate as a service: binary in /usr/local/bin, user `modelgate`,
config in /etc/modelgate, state in /var/lib/modelgate, and a service file for
this host's init system. Run as root (sudo), except with --dry-run.

Options:
  --binary PATH   install this binary instead of building one
                  (default: cargo build --release --locked, then
                  target/release/modelgate)
  --init SYSTEM   skip detection: systemd, openrc, sysv, launchd or none
  --dry-run       print what would be done, change nothing
  -h, --help      show this help

Examples:
  cargo build --release --locked && sudo scripts/install.sh --binary target/release/modelgate
  sudo scripts/install.sh                 # builds first (as $SUDO_USER when run through sudo)
  scripts/install.sh --dry-run
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# Print a command, then run it unless this is a dry run.
run() {
    local shown
    shown=$(printf '%q ' "$@")
    if [ "$DRY_RUN" = 1 ]; then
        echo "  [dry-run] ${shown% }"
    else
        echo "  + ${shown% }"
        "$@"
    fi
}

ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; BINARY=$2; shift 2 ;;
        --binary=*) BINARY=${1#--binary=}; shift ;;
        --init) [ $# -ge 2 ] || die "--init needs a value"; INIT=$2; shift 2 ;;
        --init=*) INIT=${1#--init=}; shift ;;
        --dry-run|-n) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

OS=$(uname -s)

detect_init() {
    if [ "$OS" = Darwin ]; then echo launchd; return; fi
    # systemd's own test (sd_booted): the directory exists only when PID 1 is systemd.
    if [ -d /run/systemd/system ]; then echo systemd; return; fi
    if [ -x /sbin/openrc-run ] || [ -d /run/openrc ] || command -v openrc-run >/dev/null 2>&1; then
        echo openrc; return
    fi
    if [ -d /etc/init.d ]; then echo sysv; return; fi
    echo none
}

[ -f "$REPO/deploy/systemd/modelgate.yaml" ] || die "$REPO/deploy/ not found: run this from a modelgate checkout"
if [ "$INIT" = auto ]; then INIT=$(detect_init); fi
case "$INIT" in
    systemd|openrc|sysv|launchd|none) ;;
    *) die "--init: unknown init system '$INIT' (systemd, openrc, sysv, launchd, none)" ;;
esac
RUN_DIR=/run/modelgate
if [ "$OS" = Darwin ] || [ "$INIT" = launchd ]; then
    SVC_USER=_modelgate            # the plist's UserName; macOS names daemon users _name
    RUN_DIR=/var/run/modelgate     # macOS has no /run
fi

if [ "$DRY_RUN" = 1 ]; then
    say "dry run: nothing will be changed (init system: $INIT)"
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root, e.g. sudo $0 $ARGS  (or --dry-run to preview)"
fi

# --- 1. the binary --------------------------------------------------------
if [ -z "$BINARY" ]; then
    say "building the release binary"
    BINARY=$REPO/target/release/modelgate
    build=(cargo build --release --locked --bin modelgate)
    if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        # Build as the invoking user, so target/ does not end up owned by root.
        build=(sudo -u "$SUDO_USER" -H env "PATH=$PATH" "${build[@]}")
    fi
    if [ "$DRY_RUN" = 0 ] && ! command -v cargo >/dev/null 2>&1; then
        die "cargo not found (sudo may reset PATH). Build first, then pass the binary:
    cargo build --release --locked && sudo $0 --binary target/release/modelgate"
    fi
    (cd "$REPO" && run "${build[@]}")
    DONE+=("built $BINARY")
elif [ "$DRY_RUN" = 0 ] || [ -e "$BINARY" ]; then
    if [ ! -f "$BINARY" ] || [ ! -x "$BINARY" ]; then die "--binary: $BINARY is not an executable file"; fi
fi
case "$BINARY" in /*) ;; *) BINARY=$PWD/$BINARY ;; esac

say "installing the binary"
# Copy, then rename over the old one: a running gateway keeps its (old) inode,
# so the upgrade below can hand its sockets to the new binary.
run install -d -m 0755 "$PREFIX_BIN"
run cp "$BINARY" "$PREFIX_BIN/.modelgate.new"
run chmod 0755 "$PREFIX_BIN/.modelgate.new"
run mv -f "$PREFIX_BIN/.modelgate.new" "$PREFIX_BIN/modelgate"
DONE+=("installed $PREFIX_BIN/modelgate")

# --- 2. user, directories, config -----------------------------------------
nologin_shell() {
    for s in /usr/sbin/nologin /sbin/nologin /usr/bin/false /bin/false; do
        if [ -x "$s" ]; then echo "$s"; return; fi
    done
    echo /bin/false
}

# A uid/gid below 500 that no macOS user or group has.
mac_free_id() {
    local used id
    used=$( { dscl . -list /Users UniqueID; dscl . -list /Groups PrimaryGroupID; } | awk '{print $2}')
    id=499
    while [ "$id" -ge 300 ]; do
        if ! echo "$used" | grep -qx "$id"; then echo "$id"; return 0; fi
        id=$((id - 1))
    done
    return 1
}

say "service user $SVC_USER"
if id "$SVC_USER" >/dev/null 2>&1; then
    echo "  user $SVC_USER exists"
elif [ "$OS" = Darwin ]; then
    gid=$(mac_free_id) || die "no free uid/gid below 500 for $SVC_USER"
    run dscl . -create "/Groups/$SVC_USER"
    run dscl . -create "/Groups/$SVC_USER" PrimaryGroupID "$gid"
    run dscl . -create "/Groups/$SVC_USER" Password '*'
    run dscl . -create "/Users/$SVC_USER"
    run dscl . -create "/Users/$SVC_USER" UniqueID "$gid"
    run dscl . -create "/Users/$SVC_USER" PrimaryGroupID "$gid"
    run dscl . -create "/Users/$SVC_USER" UserShell /usr/bin/false
    run dscl . -create "/Users/$SVC_USER" NFSHomeDirectory "$STATE_DIR"
    run dscl . -create "/Users/$SVC_USER" RealName "modelgate gateway"
    run dscl . -create "/Users/$SVC_USER" Password '*'
    run dscl . -create "/Users/$SVC_USER" IsHidden 1
    DONE+=("created user $SVC_USER (uid/gid $gid)")
elif command -v useradd >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell "$(nologin_shell)" --comment "modelgate gateway" "$SVC_USER"
    DONE+=("created user $SVC_USER")
elif command -v adduser >/dev/null 2>&1; then
    # BusyBox (Alpine).
    run addgroup -S "$SVC_USER"
    run adduser -S -D -H -h "$STATE_DIR" -s "$(nologin_shell)" -G "$SVC_USER" "$SVC_USER"
    DONE+=("created user $SVC_USER")
else
    die "cannot create user $SVC_USER: no useradd or adduser"
fi

say "directories"
run install -d -m 0750 -o root -g "$SVC_USER" "$CONF_DIR"
run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$STATE_DIR"
case "$INIT" in
    sysv|openrc|launchd) run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$LOG_DIR" ;;
esac
if [ "$INIT" = launchd ] || [ "$INIT" = none ]; then
    # systemd, OpenRC and the SysV script create it at each start (it is on tmpfs).
    run install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$RUN_DIR"
fi

say "config"
CONF=$CONF_DIR/modelgate.yaml
if [ -e "$CONF" ]; then
    echo "  $CONF exists: left as it is"
elif [ "$RUN_DIR" = /run/modelgate ]; then
    run install -m 0640 -o root -g "$SVC_USER" "$REPO/deploy/systemd/modelgate.yaml" "$CONF"
    DONE+=("installed $CONF")
else
    # Same config with pid_file and upgrade_sock under $RUN_DIR.
    if [ "$DRY_RUN" = 1 ]; then
        echo "  [dry-run] write $CONF (deploy/systemd/modelgate.yaml with /run/modelgate -> $RUN_DIR)"
    else
        echo "  + write $CONF (deploy/systemd/modelgate.yaml with /run/modelgate -> $RUN_DIR)"
        sed "s#/run/modelgate/#$RUN_DIR/#g" "$REPO/deploy/systemd/modelgate.yaml" >"$CONF.tmp"
        chmod 0640 "$CONF.tmp"
        chown "root:$SVC_USER" "$CONF.tmp"
        mv "$CONF.tmp" "$CONF"
    fi
    DONE+=("installed $CONF")
fi
ENV_FILE=$CONF_DIR/env
if [ -e "$ENV_FILE" ]; then
    echo "  $ENV_FILE exists: left as it is"
else
    if [ "$DRY_RUN" = 1 ]; then
        echo "  [dry-run] write $ENV_FILE (mode 0640, root:$SVC_USER): commented provider-key template"
    else
        echo "  + write $ENV_FILE (mode 0640, root:$SVC_USER)"
        ( umask 077
          cat >"$ENV_FILE" <<'EOF'
# Environment for the modelgate service: provider keys, KEY=value lines
# (no `export`, no spaces around =). Read by systemd (EnvironmentFile=), the
# OpenRC and SysV scripts, and the launchd job.
#ANTHROPIC_API_KEY=sk-ant-...
#OPENAI_API_KEY=sk-...
#RUST_LOG=info
EOF
        )
        chown "root:$SVC_USER" "$ENV_FILE"
        chmod 0640 "$ENV_FILE"
    fi
    DONE+=("created $ENV_FILE (add provider keys there)")
fi
if [ "$DRY_RUN" = 0 ]; then
    # Checked with the environment the service will have.
    # shellcheck source=/dev/null
    if ( set -a; . "$ENV_FILE"; set +a; "$PREFIX_BIN/modelgate" config validate -c "$CONF" ); then
        :
    else
        echo "install.sh: warning: $CONF does not validate; fix it before starting the service" >&2
    fi
fi

# --- 3. service file --------------------------------------------------------
NEXT=()
say "service ($INIT)"
case "$INIT" in
    systemd)
        run install -m 0644 "$REPO/deploy/systemd/modelgate.service" /etc/systemd/system/modelgate.service
        run systemctl daemon-reload
        run systemctl enable modelgate
        DONE+=("installed /etc/systemd/system/modelgate.service, enabled it")
        if [ "$DRY_RUN" = 0 ] && systemctl is-active --quiet modelgate; then
            NEXT+=("systemctl reload modelgate     # zero-downtime switch to the new binary")
        else
            NEXT+=("systemctl start modelgate && systemctl status modelgate")
        fi
        NEXT+=("journalctl -u modelgate -f")
        ;;
    openrc)
        run install -m 0755 "$REPO/deploy/openrc/modelgate" /etc/init.d/modelgate
        run rc-update add modelgate default
        DONE+=("installed /etc/init.d/modelgate (OpenRC), added to the default runlevel")
        if [ "$DRY_RUN" = 0 ] && rc-service modelgate status >/dev/null 2>&1; then
            NEXT+=("rc-service modelgate reload   # zero-downtime switch to the new binary")
        else
            NEXT+=("rc-service modelgate start")
        fi
        NEXT+=("tail -f $LOG_DIR/modelgate.log")
        ;;
    sysv)
        run install -m 0755 "$REPO/deploy/init.d/modelgate" /etc/init.d/modelgate
        if command -v update-rc.d >/dev/null 2>&1; then
            run update-rc.d modelgate defaults
        elif command -v chkconfig >/dev/null 2>&1; then
            run chkconfig --add modelgate
        else
            echo "  no update-rc.d or chkconfig: link /etc/init.d/modelgate into your runlevels by hand"
        fi
        DONE+=("installed /etc/init.d/modelgate (SysV), enabled at boot")
        if [ "$DRY_RUN" = 0 ] && /etc/init.d/modelgate status >/dev/null 2>&1; then
            NEXT+=("/etc/init.d/modelgate reload   # zero-downtime switch to the new binary")
        else
            NEXT+=("/etc/init.d/modelgate start")
        fi
        NEXT+=("tail -f $LOG_DIR/modelgate.log")
        ;;
    launchd)
        PLIST=/Library/LaunchDaemons/com.modelgate.gateway.plist
        run install -m 0644 -o root -g wheel "$REPO/deploy/launchd/com.modelgate.gateway.plist" "$PLIST"
        DONE+=("installed $PLIST")
        if [ "$DRY_RUN" = 0 ] && launchctl print system/com.modelgate.gateway >/dev/null 2>&1; then
            NEXT+=("launchctl kickstart -k system/com.modelgate.gateway   # restart on the new binary (drains first)")
        else
            NEXT+=("launchctl bootstrap system $PLIST")
        fi
        NEXT+=("tail -f $LOG_DIR/modelgate.log")
        ;;
    none)
        echo "  no supported init system found: no service file installed"
        NEXT+=("sudo -u $SVC_USER $PREFIX_BIN/modelgate serve -c $CONF")
        ;;
esac
if [ "$INIT" = sysv ] || [ "$INIT" = openrc ]; then
    if [ -d /etc/logrotate.d ]; then
        run install -m 0644 "$REPO/deploy/logrotate/modelgate" /etc/logrotate.d/modelgate
        DONE+=("installed /etc/logrotate.d/modelgate")
    fi
fi

# --- summary ----------------------------------------------------------------
echo
if [ "$DRY_RUN" = 1 ]; then say "dry run, would have:"; else say "done:"; fi
for d in "${DONE[@]}"; do echo "  - $d"; done
echo
say "next:"
echo "  - put provider keys in $ENV_FILE (e.g. ANTHROPIC_API_KEY=...), check $CONF"
for n in "${NEXT[@]}"; do echo "  - $n"; done
echo "  - curl -fsS http://127.0.0.1:8080/health"
