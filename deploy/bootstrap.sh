#!/usr/bin/env bash
# Install what egress needs on a Debian/Ubuntu machine, then keep .venv in step with pyproject.toml.
#
#   deploy/bootstrap.sh test    # what `make test` needs (unit: what `make unit` needs)
#   deploy/bootstrap.sh demo    # what `make demo` needs
#   deploy/bootstrap.sh security    # what `make security` needs (the tools the security suite plays)
#
# Idempotent: a second run installs nothing and takes about a second. Set PYTHON to choose the interpreter.
set -euo pipefail

purpose=${1:-test}
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"

# Debian packages the tests and the demo use: the kernel filter, namespaces, the record store, and nDPI for
# the side-by-side benchmark.
debian_packages=(make nftables iproute2 redis-server procps)
# the dashboard test renders the page in a real headless browser
case "$purpose" in test | unit) debian_packages+=(chromium) ;; esac
# /metrics is checked by promtool (tests/api/test_metrics.py; Debian has no package of promtool alone)
case "$purpose" in test | unit) debian_packages+=(prometheus) ;; esac
# the security suite (tests/security/, `make security`; `make test` runs it too) plays real tools from the sandbox
# and captures on the internet side
security_packages=(iodine dns2tcp ptunnel-ng openssh-server openssh-client stunnel4 socat openvpn tcpdump dnsutils)
case "$purpose" in test | security) debian_packages+=("${security_packages[@]}") ;; esac
[ "$purpose" = bench ] && debian_packages+=(libndpi-bin squid-openssl wrk)

say() { printf 'bootstrap: %s\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        say "missing Debian packages: ${missing[*]} (run as root on Debian/Ubuntu to install them)"
        return 0
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.14 python3.13 python3.12 python3 \
        "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python /root/.pyenv/versions/3.1[2-9]*/bin/python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
        if python_ok "$candidate"; then
            command -v "$candidate" 2>/dev/null || echo "$candidate"
            return 0
        fi
    done
    return 1
}

apt_install "${debian_packages[@]}"

if ! python=$(find_python); then
    say "no Python >= 3.12 with venv found; installing Debian's python3"
    apt_install python3 python3-venv python3-pip
    python=$(find_python) || { say "Python >= 3.12 is required (Debian 13 / Ubuntu 24.04 ship one; or set PYTHON=...)"; exit 1; }
fi

stamp="$venv/.egress-stamp"
want="$("$python" -c 'import sys; print(sys.version)' | head -1) $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -m pip install -q -e "$root[dev]" 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -c 'import egress, mitmproxy, dpkt, redis, yaml, click' || { say "Python environment is incomplete"; exit 1; }
    echo "$want" > "$stamp"
fi
