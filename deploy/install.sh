#!/usr/bin/env bash
# Install egress as a VLAN gateway on Debian or Ubuntu, as root (docs/deploy.md):
#
#   deploy/install.sh [--sandbox-if eth0.42] [--uplink-if eth0] [--upstream-dns 192.0.2.53] [--name gw1]
#
# Puts in place: Debian packages (nftables, iproute2, redis-server unless --no-redis, Python >= 3.12 as
# deploy/bootstrap.sh finds it), the service user `egress` (systemd-sysusers), /etc/egress (an example policy,
# API tokens, the units' settings; created only when absent, secrets 0600), a password for the local Redis on a
# new install (/etc/redis/egress-auth.conf, included from /etc/redis/redis.conf; the settings' URL carries it), /var/lib/egress (state and spool,
# 0700 root), a venv under PREFIX (default /opt/egress) with egress installed from this tree, the units
# egress-gateway.service and egress-api.service (enabled, not started: edit /etc/egress first), the boot table
# (/etc/nftables.d/egress-boot.nft, included from /etc/nftables.conf, loaded by nftables.service) and the sysctl
# settings. Running it again changes nothing that is already right; an upgrade keeps the settings, the policy,
# the CA and the spooled records. deploy/uninstall.sh takes it away again.
#
# Staging: with --destdir DIR (or DESTDIR=DIR) everything is written under DIR, as on the target host, and the
# host is left alone: no packages, no systemctl, no sysctl, no nft, no user created on the host (the user goes
# into DIR/etc/passwd). --no-venv skips the venv (tests; or a venv built elsewhere: a venv is not relocatable, so
# one staged under DIR runs only at DIR's path).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
me=install
# shellcheck source=deploy/lib.sh
. "$root/deploy/lib.sh"

prefix=${PREFIX:-/opt/egress}
destdir=${DESTDIR:-}
packages=1 venv=1 redis=1
sandbox_if=eth0.42 uplink_if=eth0 upstream_dns=192.0.2.53 name=$(hostname -s 2>/dev/null || echo gateway)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --sandbox-if) sandbox_if=$2; shift 2 ;;
    --uplink-if) uplink_if=$2; shift 2 ;;
    --upstream-dns) upstream_dns=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --no-packages) packages=0; shift ;;
    --no-venv) venv=0; shift ;;
    --no-redis) redis=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) say "unknown option $1 (see --help)"; exit 2 ;;
    esac
done
case "$prefix" in /*) ;; *) say "--prefix must be an absolute path: $prefix"; exit 2 ;; esac
[ -z "$destdir" ] || destdir=$(mkdir -p "$destdir" && cd "$destdir" && pwd)
# shellcheck source=deploy/paths.sh
. "$root/deploy/paths.sh"

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    say "run as root (or stage into a directory with --destdir DIR)"
    exit 2
fi
staging() { [ -n "$destdir" ]; }

# --- files -------------------------------------------------------------------------------------------------
# put MODE SOURCE TARGET: install a file only when its content or mode differs (a second run touches nothing).
put() {
    local mode=$1 source=$2 target=$3
    mkdir -p "$(dirname "$target")"
    if [ -f "$target" ] && cmp -s "$source" "$target"; then
        [ "$(stat -c %a "$target")" = "${mode#0}" ] || chmod "$mode" "$target"
        return 0
    fi
    install -m "$mode" "$source" "$target"
    say "wrote ${target#"$destdir"}"
}
# keep MODE SOURCE TARGET: a setting the administrator owns: created when absent, never overwritten.
keep() {
    local mode=$1 source=$2 target=$3
    if [ -e "$target" ]; then
        chmod "$mode" "$target"
        return 0
    fi
    mkdir -p "$(dirname "$target")"
    install -m "$mode" "$source" "$target"
    say "created ${target#"$destdir"}"
}
# render TEMPLATE: the template with this install's paths and settings filled in, as a temporary file.
render() {
    local out
    out=$(mktemp)
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@BOOT_NFT@|$boot_nft|g" -e "s|@SANDBOX_IF@|$sandbox_if|g" \
        -e "s|@UPLINK_IF@|$uplink_if|g" -e "s|@UPSTREAM_DNS@|$upstream_dns|g" -e "s|@NAME@|$name|g" \
        -e "s|@REDIS_URL@|$redis_url|g" "$1" >"$out"
    echo "$out"
}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
templ() { local out; out=$(render "$1"); mv "$out" "$scratch/$(basename "$1")"; echo "$scratch/$(basename "$1")"; }

# --- packages and Python -----------------------------------------------------------------------------------
python=
if ! staging && [ "$packages" = 1 ]; then
    wanted=(nftables iproute2 ca-certificates)
    [ "$redis" = 1 ] && wanted+=(redis-server)
    apt_install "${wanted[@]}"
fi
if [ "$venv" = 1 ]; then
    python=$(need_python) || exit 1
fi

# --- the service user ----------------------------------------------------------------------------------------
put 0644 "$root/deploy/systemd/egress.sysusers" "$D$sysusers_conf"
if staging; then
    systemd-sysusers --root="$destdir" "$D$sysusers_conf"
elif command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$sysusers_conf"
elif ! getent passwd egress >/dev/null; then
    useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin --user-group egress
fi
egress_gid=$(awk -F: '$1 == "egress" { print $3 }' "$D/etc/group")
[ -n "$egress_gid" ] || { say "the group egress was not created"; exit 1; }

# --- the local Redis's password -----------------------------------------------------------------------------------
# A new install (no settings yet) with the local Redis gets a password for it, in a file redis.conf includes, and
# both settings files a URL carrying it: whatever reaches Redis's port (a sandbox did, through the gateway's
# loopback, before red team 10b's guard) cannot read, erase or replace the records or the policy. An upgrade keeps
# the settings and Redis as they are (docs/deploy.md, "Redis", says how to add a password by hand).
redis_url=redis://127.0.0.1:6379/0
restart_redis=0
if [ "$redis" = 1 ] && [ ! -e "$D$etc_dir/gateway.env" ] && [ ! -e "$D$etc_dir/api.env" ] && [ -f "$D$redis_conf" ]; then
    redis_gid=$(awk -F: '$1 == "redis" { print $3 }' "$D/etc/group")
    if [ -z "$redis_gid" ] && ! staging; then
        say "no group redis: the local Redis gets no password (docs/deploy.md, \"Redis\")"
    else
        password=
        [ ! -f "$D$redis_auth_conf" ] || password=$(awk '$1 == "requirepass" { print $2; exit }' "$D$redis_auth_conf")
        if [ -z "$password" ]; then
            password=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
            (
                umask 077
                printf '# the local Redis'"'"'s password, for egress (deploy/install.sh); /etc/egress/*.env carry it\n' \
                    >"$D$redis_auth_conf"
                printf 'requirepass %s\n' "$password" >>"$D$redis_auth_conf"
            )
            say "created $redis_auth_conf (a password for the local Redis)"
        fi
        [ -z "$redis_gid" ] || chgrp "$redis_gid" "$D$redis_auth_conf"
        chmod 0640 "$D$redis_auth_conf"
        if ! grep -qxF "$redis_include_line" "$D$redis_conf"; then
            printf '\n%s\n%s\n' "$redis_comment" "$redis_include_line" >>"$D$redis_conf"
            say "$redis_conf now includes $redis_auth_conf"
        fi
        redis_url="redis://:$password@127.0.0.1:6379/0"
        restart_redis=1
    fi
fi

# --- /etc/egress: settings, policy, tokens ---------------------------------------------------------------------
install -d -m 0750 "$D$etc_dir"
chgrp "$egress_gid" "$D$etc_dir"
keep 0640 "$root/rules/policy.example.yaml" "$D$etc_dir/policy.yaml"
chgrp "$egress_gid" "$D$etc_dir/policy.yaml"
keep 0600 "$(templ "$root/deploy/systemd/gateway.env")" "$D$etc_dir/gateway.env"
keep 0600 "$(templ "$root/deploy/systemd/api.env")" "$D$etc_dir/api.env"
if [ ! -e "$D$etc_dir/api-tokens.yaml" ]; then
    # One admin token. The tokens file holds only its digest; the token itself goes to a file of its own (0600
    # root) for the administrator to hand out. umask first: no moment where either is readable by others.
    (
        umask 077
        token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        printf '%s\n' "$token" >"$D$etc_dir/api-token.admin"
        printf 'tokens:\n  - name: admin\n    token_sha256: %s\n    roles: [admin]\n' \
            "$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)" >"$D$etc_dir/api-tokens.yaml"
    )
    say "created $etc_dir/api-tokens.yaml (the admin token is in $etc_dir/api-token.admin)"
fi
chmod 0600 "$D$etc_dir/api-tokens.yaml"
[ ! -e "$D$etc_dir/api-token.admin" ] || chmod 0600 "$D$etc_dir/api-token.admin"

# --- state and spool: the CA key, bindings, records waiting for Redis ------------------------------------------
install -d -m 0700 "$D$state_dir" "$D$state_dir/spool"
chmod 0700 "$D$state_dir" "$D$state_dir/spool"

# --- the program ---------------------------------------------------------------------------------------------
install -d -m 0755 "$D$prefix" "$D$prefix/libexec"
put 0755 "$(templ "$root/deploy/nftables/egress-lockdown.sh")" "$D$prefix/libexec/egress-lockdown"
if [ "$venv" = 1 ]; then
    # Rebuilt when the interpreter or the source changed, upgraded in place (records and state are elsewhere).
    stamp="$D$prefix/venv/.egress-stamp"
    want="$("$python" -c 'import sys; print(sys.version)' | head -1) $(cd "$root" &&
        find pyproject.toml egress rules -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
    if [ ! -x "$D$prefix/venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing egress into $prefix/venv with $python"
        [ -x "$D$prefix/venv/bin/python" ] || "$python" -m venv "$D$prefix/venv"
        # built from a copy: setuptools writes build/ and *.egg-info next to the source it builds
        mkdir "$scratch/src"
        tar -C "$root" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' --exclude='*_cache' \
            -cf - . | tar -C "$scratch/src" -xf -
        if ! out=$("$D$prefix/venv/bin/python" -m pip install -q --upgrade "$scratch/src" 2>&1); then
            printf '%s\n' "$out" >&2
            say "pip failed: egress was not installed or upgraded (a running gateway keeps its version)"
            exit 1
        fi
        printf '%s\n' "$out" | grep -v -e '^WARNING: Location' -e '^$' >&2 || true
        "$D$prefix/venv/bin/egress" --version >/dev/null || { say "the installed egress does not run"; exit 1; }
        echo "$want" >"$stamp"
    fi
fi

# --- kernel: boot table, sysctl --------------------------------------------------------------------------------
put 0644 "$(templ "$root/deploy/nftables/egress-boot.nft")" "$D$boot_nft"
if [ ! -e "$D$nftables_conf" ]; then
    printf '#!/usr/sbin/nft -f\n\nflush ruleset\n' >"$D$nftables_conf"
    chmod 0755 "$D$nftables_conf"
fi
# Last in the file: after the `flush ruleset` Debian's file starts with, and after the administrator's tables.
grep -qxF "$include_line" "$D$nftables_conf" || {
    printf '\n%s\n' "$include_line" >>"$D$nftables_conf"
    say "$nftables_conf now includes $boot_nft"
}
put 0644 "$root/deploy/sysctl/60-egress.conf" "$D$sysctl_conf"
put 0644 "$root/deploy/modules-load/egress.conf" "$D$modules_conf"

# --- units -----------------------------------------------------------------------------------------------------
for unit in egress-gateway.service egress-api.service; do
    put 0644 "$(templ "$root/deploy/systemd/$unit")" "$D$unit_dir/$unit"
done
put 0644 "$(templ "$root/deploy/systemd/nftables-egress.conf")" "$D$nftables_dropin"

if staging; then
    say "staged into $destdir (nothing on this host was changed)"
    exit 0
fi

# --- activation on this host -----------------------------------------------------------------------------------
sysctl -q -p "$sysctl_conf" >/dev/null
# The UDP gate's NFQUEUE modules now (at boot systemd-modules-load.service reads $modules_conf); built in, modprobe
# says nothing; missing, the gateway refuses to start and names the one it lacks (docs/deploy.md, "Kernel").
grep -v '^#' "$modules_conf" | xargs modprobe -a 2>/dev/null ||
    say "warning: could not load $(grep -v '^#' "$modules_conf" | xargs): the gateway needs NFQUEUE (docs/deploy.md)"
if [ "$restart_redis" = 1 ]; then
    systemctl try-restart redis-server.service
    say "restarted redis-server: it now asks for the password in $etc_dir/gateway.env and api.env"
fi
# The boot table now, unless a gateway is running (its table must not be replaced under it).
systemctl is-active -q egress-gateway.service || nft -f "$boot_nft"
systemctl daemon-reload
# Enabled, not started: nftables.service at next boot (starting it now would flush this host's other rules).
systemctl enable -q nftables.service egress-gateway.service egress-api.service
if systemctl is-active -q egress-gateway.service; then
    systemctl try-restart egress-gateway.service egress-api.service
    say "restarted the running services"
else
    say "next: edit $etc_dir/gateway.env and $etc_dir/policy.yaml, check with 'egress doctor' (see gateway.env),"
    say "then: systemctl start egress-gateway egress-api"
fi
