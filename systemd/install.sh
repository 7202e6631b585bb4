#!/usr/bin/env bash
# Install, upgrade or remove the envagent service on a Raspberry Pi. Run it from the checkout:
#
#   sudo systemd/install.sh                      install or upgrade, then (re)start the service
#   sudo systemd/install.sh --uninstall          remove the service and its venv, keep data + config
#   sudo systemd/install.sh --uninstall --purge  also remove /var/lib/envagent, /etc/envagent, user
#   sudo systemd/install.sh --root DIR ...       work below DIR instead of / (packaging, tests)
#
# Safe to run again: the venv is reused, the unit is replaced, and an existing
# /etc/envagent/envagent.toml is never overwritten.
#
# With --root the system itself is not touched: no user or group is created (useradd --root
# would need a complete system image under DIR), no udev rule is reloaded and systemctl is not
# called. The venv is created in DIR/opt/envagent/venv and its scripts name that path, so it is
# only usable there — the layout is right, the interpreter paths are not relocatable.
set -euo pipefail

readonly SERVICE=envagent.service
readonly PYTHON=${ENVAGENT_PYTHON:-/usr/bin/python3}   # the system Python: /root/.pyenv & co. are
                                                       # hidden from the service (ProtectHome=yes)
SRC_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC_DIR
readonly COMMAND_LINE="$0 $*"

ROOT=""
UNINSTALL=0
PURGE=0

say() { printf 'envagent-install: %s\n' "$*"; }
warn() { printf 'envagent-install: WARNING: %s\n' "$*" >&2; }
die() { printf 'envagent-install: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while (($#)); do
    case $1 in
        --root)
            (($# >= 2)) || die "--root needs a directory"
            ROOT=$(realpath -m -- "$2")
            shift 2
            ;;
        --root=*) ROOT=$(realpath -m -- "${1#--root=}"); shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
((PURGE == 0 || UNINSTALL == 1)) || die "--purge only goes with --uninstall"
[[ $ROOT != / ]] || ROOT=""

readonly ROOT UNINSTALL PURGE
readonly VENV_PARENT=$ROOT/opt/envagent
readonly VENV=$VENV_PARENT/venv
readonly UNIT_PATH=$ROOT/etc/systemd/system/$SERVICE
readonly UDEV_RULE=$ROOT/etc/udev/rules.d/99-envagent-i2c.rules
readonly CONF_DIR=$ROOT/etc/envagent
readonly CONFIG=$CONF_DIR/envagent.toml
readonly TOKEN=$CONF_DIR/upload-token
readonly STATE_DIR=$ROOT/var/lib/envagent
readonly CLI_LINK=$ROOT/usr/local/bin/envagent   # so technicians can type `sudo envagent status`

# Whether to talk to the running system: not under --root, and only when systemd is PID 1
# (sd_booted(3) checks for this directory the same way).
live_system() { [[ -z $ROOT && -d /run/systemd/system ]]; }

[[ $EUID -eq 0 ]] || die "run as root: sudo $COMMAND_LINE"

create_user() {
    if [[ -n $ROOT ]]; then
        say "--root: not creating user 'envagent' (the unit's User= must exist on the target)"
        return
    fi
    local group missing=()
    getent group envagent >/dev/null || groupadd --system envagent
    if ! getent passwd envagent >/dev/null; then
        useradd --system --gid envagent --no-create-home --home-dir /var/lib/envagent \
            --shell /usr/sbin/nologin --comment "envagent sensor agent" envagent
        say "created system user envagent"
    fi
    # The unit names both groups in SupplementaryGroups=, and systemd refuses to start a unit
    # whose groups do not exist. Raspberry Pi OS ships them, owning /dev/i2c-* and
    # /dev/gpiochip* (udev 99-com.rules); elsewhere create them and install the same rule.
    for group in i2c gpio; do
        if ! getent group "$group" >/dev/null; then
            groupadd --system "$group"
            missing+=("$group")
        fi
        usermod --append --groups "$group" envagent
    done
    if ((${#missing[@]})); then
        install -D -m 0644 "$SRC_DIR/systemd/99-envagent-i2c.rules" "$UDEV_RULE"
        say "created group(s) ${missing[*]} and $UDEV_RULE giving them the devices"
        if command -v udevadm >/dev/null && live_system; then
            udevadm control --reload
            udevadm trigger --subsystem-match=i2c-dev --subsystem-match=gpio
        fi
    fi
}

create_venv() {
    [[ -x $PYTHON ]] || die "$PYTHON not found: apt install python3"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "envagent needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1)); use Bookworm or later"
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        "$PYTHON" -c 'import ensurepip' 2>/dev/null || die "Python venv support is missing: apt install python3-venv"
        rm -rf -- "$VENV"
        mkdir -p -- "$VENV_PARENT"
        "$PYTHON" -m venv -- "$VENV"
        say "created $VENV"
    fi
    say "installing envagent from $SRC_DIR into $VENV (needs network access to PyPI)"
    # Built from a clean copy of what the package holds: pip builds a source directory in place,
    # and a build/ left there by an earlier version would ship modules that no longer exist.
    local build
    build=$(mktemp -d)
    cp -RL -- "$SRC_DIR/pyproject.toml" "$SRC_DIR/README.md" "$SRC_DIR/agent" "$SRC_DIR/drivers" \
        "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf -- {} +
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install --quiet --upgrade -- "$build" ||
        { rm -rf -- "$build"; die "pip could not install envagent (see above)"; }
    rm -rf -- "$build"
    if [[ -e $CLI_LINK && ! -L $CLI_LINK ]]; then
        warn "$CLI_LINK exists and is not our link; leaving it alone"
    else
        mkdir -p -- "$(dirname -- "$CLI_LINK")"
        ln -sfn -- "${VENV#"$ROOT"}/bin/envagent" "$CLI_LINK"
    fi
}

install_unit() {
    if [[ -f $UNIT_PATH ]] && cmp -s -- "$SRC_DIR/systemd/$SERVICE" "$UNIT_PATH"; then
        say "$UNIT_PATH is up to date"
    else
        install -D -m 0644 -- "$SRC_DIR/systemd/$SERVICE" "$UNIT_PATH"
        say "installed $UNIT_PATH"
    fi
}

install_config() {
    install -d -m 0755 -- "$CONF_DIR"
    if [[ -e $CONFIG ]]; then
        say "keeping existing $CONFIG"
    else
        install -m 0644 -- "$SRC_DIR/config/envagent.example.toml" "$CONFIG"
        say "installed the example config as $CONFIG — edit it for this station"
    fi
    # systemd 252 refuses to start a unit whose LoadCredential= file is missing, and sampling
    # would stop with it. An empty placeholder lets the agent sample and buffer; its uplink
    # reports "token file is empty" until the token is written. Only PID 1 reads this file (the
    # service gets a private copy at start), so it stays root-only and a change needs a restart.
    if [[ ! -e $TOKEN ]]; then
        install -m 0600 /dev/null "$TOKEN"
        say "created an empty $TOKEN: write the upload token in it (one line)," \
            "then: sudo systemctl restart envagent"
    fi
}

check_i2c() {
    local cfg
    if [[ -e $ROOT/dev/i2c-1 ]]; then
        say "I2C bus 1 is available (/dev/i2c-1)"
        return
    fi
    for cfg in "$ROOT/boot/firmware/config.txt" "$ROOT/boot/config.txt"; do
        if [[ -f $cfg ]] && grep -Eq '^[[:space:]]*dtparam=(i2c_arm|i2c)=on' "$cfg"; then
            warn "I2C is enabled in $cfg but /dev/i2c-1 is missing: reboot, or run 'modprobe i2c-dev'"
            return
        fi
    done
    warn "I2C is not enabled: run 'sudo raspi-config nonint do_i2c 0', then" \
        "'sudo systemctl restart envagent' (the service only sees buses present when it starts)"
}

check_gpio() {
    # Only where there is a GPIO chip: not on a PC, and not under --root unless the target has one.
    [[ -e $ROOT/dev/gpiochip0 ]] || return 0
    if "$VENV/bin/python" -c 'import lgpio' 2>/dev/null; then
        say "lgpio is installed: a status LED, button and power_pin switches can use the GPIO"
        return
    fi
    # pyproject.toml pulls in lgpio only where PyPI has a wheel (CPython <= 3.12 on armv7l and
    # aarch64); elsewhere (e.g. Python 3.13, or an armv6l Pi Zero/1) it has to be built.
    warn "lgpio is not installed in $VENV: a status LED, button or power_pin would not work" \
        "(sampling does). To build it: sudo apt install swig python3-dev &&" \
        "sudo ${VENV#"$ROOT"}/bin/pip install 'lgpio>=0.2.2.0', then: sudo systemctl restart envagent"
}

start_service() {
    if ! live_system; then
        say "systemd is not running here (or --root): not enabling or starting $SERVICE"
        return
    fi
    systemctl daemon-reload
    systemctl enable --quiet "$SERVICE"
    local check
    if ! check=$("$VENV/bin/envagent" config check --config "$CONFIG" 2>&1); then
        printf '%s\n' "$check" >&2
        warn "$CONFIG has problems (above): $SERVICE is enabled but not started." \
            "Fix the config, then: sudo systemctl restart envagent"
        return
    fi
    # restart, not "enable --now": an upgrade must replace the code that is already running.
    systemctl restart "$SERVICE"
    say "$SERVICE enabled and (re)started; follow it with: journalctl -u envagent -f"
}

uninstall() {
    if live_system; then
        systemctl disable --now --quiet "$SERVICE" 2>/dev/null || true
    fi
    rm -f -- "$UNIT_PATH"
    if [[ -L $CLI_LINK && $(readlink -- "$CLI_LINK") == "${VENV#"$ROOT"}/bin/envagent" ]]; then
        rm -f -- "$CLI_LINK"
    fi
    rm -rf -- "$VENV"
    rmdir --ignore-fail-on-non-empty -- "$VENV_PARENT" 2>/dev/null || true
    rm -f -- "$UDEV_RULE"
    if live_system; then
        systemctl daemon-reload
    fi
    say "removed $SERVICE and $VENV"
    if ((PURGE)); then
        rm -rf -- "$STATE_DIR" "$CONF_DIR"
        say "purged $STATE_DIR and $CONF_DIR"
        if [[ -z $ROOT ]] && getent passwd envagent >/dev/null; then
            userdel envagent
            say "removed user envagent (groups i2c and gpio are left alone)"
        fi
    else
        say "kept $STATE_DIR (unsent readings) and $CONF_DIR; --uninstall --purge removes them"
    fi
}

if ((UNINSTALL)); then
    uninstall
    exit 0
fi

create_user
create_venv
install_unit
install_config
check_i2c
check_gpio
start_service
say "done"
