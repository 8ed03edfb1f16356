#!/bin/sh
# Install the peers that benchmarks/bench_pcap.py compares apiwatch with:
# tshark (Debian bookworm main), Suricata 7 (bookworm-backports) and GNU time.
# Idempotent: re-running it changes nothing once everything is installed.
# Needs root (apt). Reuses the apt source already configured on the machine:
# it only adds the bookworm-backports suite to the existing deb822 entry.
set -eu

SOURCES=/etc/apt/sources.list.d/debian.sources
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "install_peers.sh: must run as root" >&2
    exit 1
fi

need_update=0

# 1. Enable bookworm-backports on the main archive entry (the one whose Suites line
#    is "bookworm bookworm-updates"), unless some source already provides it.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f "$SOURCES" ] && grep -q '^Suites: bookworm bookworm-updates$' "$SOURCES"; then
        sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' "$SOURCES"
        need_update=1
    else
        echo "install_peers.sh: cannot find the 'Suites: bookworm bookworm-updates' line in $SOURCES;" >&2
        echo "  add bookworm-backports to your apt sources by hand" >&2
        exit 1
    fi
fi

missing=""
command -v tshark >/dev/null 2>&1 || missing="$missing tshark"
[ -x /usr/bin/time ] || missing="$missing time"
command -v suricata >/dev/null 2>&1 || missing="$missing suricata"

if [ -z "$missing" ] && [ "$need_update" -eq 0 ]; then
    echo "install_peers.sh: tshark, suricata and GNU time already installed"
    exit 0
fi

# apt-cache/apt-get need fresh lists after the suite was added (or on a new machine).
if [ "$need_update" -eq 1 ] || [ -n "$missing" ]; then
    apt-get update -q
fi

# wireshark-common asks whether non-root users may capture; answer "no" up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections

case "$missing" in *tshark*|*time*)
    apt-get install -y -q --no-install-recommends tshark time ;;
esac
case "$missing" in *suricata*)
    apt-get install -y -q -t bookworm-backports suricata ;;
esac

# The package may start a suricata service; the benchmark only runs it on files.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet suricata 2>/dev/null; then
    systemctl stop suricata || true
fi

tshark --version | head -n 1
suricata -V
