#!/bin/sh
# Install the Dovecot IMAP server from Debian's packages, for the e-mail tests and the IMAP benchmark.
# Idempotent: does nothing when `dovecot` is already on PATH. Needs root (or sudo) and apt-get.
# The packaged service is not used: tests start their own throw-away instance (tests/dovecot.py).
set -eu

if command -v dovecot >/dev/null 2>&1; then
    exit 0
fi

fail() {
    echo "install-dovecot: $*" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install dovecot-imapd with your system's package manager"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "must run as root (or with sudo available) to install dovecot-imapd"
    SUDO="sudo"
fi

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >"$LOG" 2>&1 || { cat "$LOG" >&2; fail "apt-get update failed (see above)"; }
$SUDO apt-get install -y -q --no-install-recommends dovecot-imapd >"$LOG" 2>&1 \
    || { cat "$LOG" >&2; fail "apt-get install dovecot-imapd failed (see above)"; }

# Debian starts the packaged service where an init system runs; the tests do not need it.
if [ -f /run/dovecot/master.pid ]; then
    $SUDO kill "$(cat /run/dovecot/master.pid)" 2>/dev/null || true
fi

command -v dovecot >/dev/null 2>&1 || fail "dovecot-imapd installed but \`dovecot\` is not on PATH"
echo "install-dovecot: $(dovecot --version 2>/dev/null | head -n 1) installed"
