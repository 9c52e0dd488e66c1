# Where deploy/install.sh puts things and deploy/uninstall.sh takes them from (sourced after `prefix` and
# `destdir` are set). Paths are as on the target host; $D prefixes them when staging into a directory.
# shellcheck disable=SC2034  # used by the scripts that source this file
D=$destdir
etc_dir=/etc/egress
state_dir=/var/lib/egress
unit_dir=/etc/systemd/system
nftables_dropin=/etc/systemd/system/nftables.service.d/egress.conf
nftables_conf=/etc/nftables.conf
boot_nft=/etc/nftables.d/egress-boot.nft
include_line="include \"$boot_nft\"  # egress boot table (deploy/install.sh)"
sysctl_conf=/etc/sysctl.d/60-egress.conf
modules_conf=/etc/modules-load.d/egress.conf
sysusers_conf=/etc/sysusers.d/egress.conf
# The local Redis (Debian's redis-server): a password of its own, in a file its redis.conf includes.
redis_conf=/etc/redis/redis.conf
redis_auth_conf=/etc/redis/egress-auth.conf
redis_comment="# egress: the password (deploy/install.sh)"
redis_include_line="include $redis_auth_conf"
