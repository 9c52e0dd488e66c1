#!/bin/sh
# egress-lockdown: the gateway unit's ExecStopPost (deploy/systemd/egress-gateway.service), run however the
# gateway ended: a clean stop, a crash, a kill by the watchdog, a refusal at pre-flight.
#
# It applies the policy's lockdown table (`egress nft render --lockdown`: all traffic from and to the sandbox
# interfaces dropped and logged, the gateway's own services unreachable) with one more rule, a final drop in its
# forward chain, so nothing is forwarded on any interface either; one transaction. If that cannot be rendered
# (the policy does not load, the settings are wrong) or applied, the boot table is applied instead: it names no
# interface and needs no Python. Either way the host ends forwarding nothing.
set -u
prefix=@PREFIX@
boot=@BOOT_NFT@
table=egress

if script=$("$prefix/venv/bin/egress" nft render --lockdown --policy "${EGRESS_POLICY:-}" \
    --sandbox-if "${EGRESS_SANDBOX_IF:-}" --uplink-if "${EGRESS_UPLINK_IF:-}" --workers 1) &&
    printf '%s\nadd rule inet %s forward counter drop\n' "$script" "$table" | nft -f -; then
    echo "egress-lockdown: the policy's lockdown table is in place (nothing from or to the sandboxes passes)" >&2
    exit 0
fi
echo "egress-lockdown: the policy's lockdown did not apply; applying the boot table (nothing is forwarded)" >&2
exec nft -f "$boot"
