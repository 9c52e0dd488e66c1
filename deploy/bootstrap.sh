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
# the dashboard's browser tests (marker browser, `make test`) drive Debian's chromium through playwright (a dev
# extra, which downloads no browser of its own)
case "$purpose" in test | unit) debian_packages+=(chromium) ;; esac
# /metrics is checked by promtool (tests/api/test_metrics.py; Debian has no package of promtool alone)
case "$purpose" in test | unit) debian_packages+=(prometheus) ;; esac
# the security suite (tests/security/, `make security`; `make test` runs it too) plays real tools from the sandbox
# and captures on the internet side
security_packages=(iodine dns2tcp ptunnel-ng openssh-server openssh-client stunnel4 socat openvpn tcpdump dnsutils)
case "$purpose" in test | security) debian_packages+=("${security_packages[@]}") ;; esac
[ "$purpose" = bench ] && debian_packages+=(libndpi-bin squid-openssl wrk)
# the compiled hot paths (setup.py, egress/capture/_hot.c, egress/detect/_tlsfast.c, _jsonfast.c, _packed.c, _binfast.c); where they cannot be built egress runs their pure twins
debian_packages+=(gcc)

me=bootstrap
# shellcheck source=deploy/lib.sh
. "$root/deploy/lib.sh"

apt_install "${debian_packages[@]}"

python=$(need_python) || exit 1

stamp="$venv/.egress-stamp"
want="$("$python" -c 'import sys; print(sys.version)' | head -1) $(sha256sum "$root/pyproject.toml" | cut -c1-16)"
# the compiled hot path is built by the editable install: built again when its source changes
want="$want $(cat "$root/setup.py" "$root/egress/capture/_hot.c" "$root/egress/detect/_tlsfast.c" "$root/egress/detect/_jsonfast.c" "$root/egress/detect/_packed.c" "$root/egress/detect/_binfast.c" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -m pip install -q -e "$root[dev]" 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -c 'import egress, mitmproxy, dpkt, redis, yaml, click, playwright, atheris' || { say "Python environment is incomplete"; exit 1; }
    echo "$want" > "$stamp"
fi
