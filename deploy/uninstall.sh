#!/usr/bin/env bash
# Take away what deploy/install.sh added, as root:
#
#   deploy/uninstall.sh [--purge] [--prefix DIR] [--destdir DIR]
#
# Stops and disables the units, removes them, the nftables.service drop-in, the boot table and its include line,
# the sysctl file, the venv and the lockdown script. Keeps /etc/egress (policy, tokens, settings), /var/lib/egress
# (the CA, spooled records not yet written to Redis), the user `egress` and the local Redis's password
# (/etc/redis/egress-auth.conf and its include line), unless --purge. Records already in Redis are Redis's: never
# touched. The kernel's table is left as the last stop left it (the lockdown: nothing
# forwarded); `nft delete table inet egress` opens forwarding again. --destdir DIR works on a staged tree, as
# deploy/install.sh --destdir made it, and leaves the host alone.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
me=uninstall
# shellcheck source=deploy/lib.sh
. "$root/deploy/lib.sh"

prefix=${PREFIX:-/opt/egress}
destdir=${DESTDIR:-}
purge=0
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --purge) purge=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown option $1 (see --help)"; exit 2 ;;
    esac
done
[ -z "$destdir" ] || destdir=$(cd "$destdir" && pwd)
# shellcheck source=deploy/paths.sh
. "$root/deploy/paths.sh"
staging() { [ -n "$destdir" ]; }
if ! staging && [ "$(id -u)" -ne 0 ]; then
    say "run as root (or work on a staged tree with --destdir DIR)"
    exit 2
fi

remove() {
    local path
    for path in "$@"; do
        [ -e "$D$path" ] || [ -L "$D$path" ] || continue
        rm -rf -- "${D:?}$path" 2>/dev/null || rm -rf -- "$D$path"
        say "removed $path"
    done
}
# rmdir_empty DIR...: directories install created, if nothing else was put in them
rmdir_empty() { local dir; for dir in "$@"; do rmdir -- "$D$dir" 2>/dev/null || true; done; }

if ! staging; then
    # Stopping the gateway runs its ExecStopPost: the lockdown stays in the kernel.
    systemctl disable -q --now egress-gateway.service egress-api.service 2>/dev/null || true
fi
remove "$unit_dir/egress-gateway.service" "$unit_dir/egress-api.service" "$nftables_dropin"
rmdir_empty "$(dirname "$nftables_dropin")"
staging || systemctl daemon-reload

if [ -f "$D$nftables_conf" ]; then
    if [ "$(cat "$D$nftables_conf")" = "$(printf '#!/usr/sbin/nft -f\n\nflush ruleset\n\n%s' "$include_line")" ]; then
        remove "$nftables_conf"  # install created it: nothing of the administrator's in it
    elif grep -qxF "$include_line" "$D$nftables_conf"; then
        # drop our line and the blank line install put before it
        awk -v ours="$include_line" '
            $0 == ours { if (blank) blank = 0; next }
            { if (blank) print ""; blank = ($0 == ""); if (!blank) print }
            END { if (blank) print "" }' "$D$nftables_conf" >"$D$nftables_conf.egress-tmp"
        chmod --reference="$D$nftables_conf" "$D$nftables_conf.egress-tmp"
        mv "$D$nftables_conf.egress-tmp" "$D$nftables_conf"
        say "$nftables_conf no longer includes $boot_nft"
    fi
fi
remove "$boot_nft" "$sysctl_conf" "$modules_conf" "$prefix/venv" "$prefix/libexec/egress-lockdown"
rmdir_empty "$(dirname "$boot_nft")" "$prefix/libexec" "$prefix"

if [ "$purge" = 1 ]; then
    remove "$etc_dir" "$state_dir"
    remove "$sysusers_conf"
    if [ -f "$D$redis_conf" ] && grep -qxF "$redis_include_line" "$D$redis_conf"; then
        # our two lines and the blank line install put before them
        awk -v ours="$redis_include_line" -v note="$redis_comment" '
            $0 == ours || $0 == note { if (blank) blank = 0; next }
            { if (blank) print ""; blank = ($0 == ""); if (!blank) print }
            END { if (blank) print "" }' "$D$redis_conf" >"$D$redis_conf.egress-tmp"
        chmod --reference="$D$redis_conf" "$D$redis_conf.egress-tmp"
        chown --reference="$D$redis_conf" "$D$redis_conf.egress-tmp"
        mv "$D$redis_conf.egress-tmp" "$D$redis_conf"
        say "$redis_conf no longer includes $redis_auth_conf"
        remove "$redis_auth_conf"
        staging || systemctl try-restart redis-server.service
    else
        remove "$redis_auth_conf"
    fi
    if staging; then
        userdel --prefix "$destdir" egress 2>/dev/null || true
        groupdel --prefix "$destdir" egress 2>/dev/null || true
    else
        userdel egress 2>/dev/null || true
        groupdel egress 2>/dev/null || true
    fi
    say "purged: settings, policy, tokens, the CA and spooled records are gone"
else
    say "kept $etc_dir (policy, tokens, settings), $state_dir (CA, spool) and the user egress (--purge removes them)"
fi
staging || say "the kernel's table inet egress stays as the lockdown left it; 'nft delete table inet egress' removes it"
