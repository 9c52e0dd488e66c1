"""``egress ca`` and ``egress nft``: the gateway's CA certificate and its nftables ruleset, from the command line.

Kept apart from `egress.cli` so that every other command (``egress scan`` above all) does not import the gateway's
settings and the nftables renderer at start-up; `egress.cli.main` imports this module when one of them is used.
"""

from __future__ import annotations

import os
import sys

import click

from egress.cli_gateway import check_ports, dns_port_option, nflog_group_option, proxy_port_option, workers_option
from egress.gateway import config as defaults
from egress.policy.lists import RulesError

EXIT_USAGE = 2
"""As `egress.cli.EXIT_USAGE` (this module is imported by it, so it does not import it back)."""


@click.group()
def ca() -> None:
    """The gateway's CA (for hosts on a sandbox's decrypt list)."""


@ca.command("export")
@click.option("--state-dir", default=defaults.STATE_DIR, show_default=True)
def ca_export(state_dir: str) -> None:
    """Print the gateway CA certificate (PEM) for sandboxes to trust."""
    path = os.path.join(state_dir, "ca", "mitmproxy-ca-cert.pem")
    try:
        with open(path) as handle:
            click.echo(handle.read(), nl=False)
    except OSError as exc:
        click.echo(f"egress: {path}: {exc.strerror} (has the gateway run with this --state-dir?)", err=True)
        sys.exit(EXIT_USAGE)


@click.group()
def nft() -> None:
    """The nftables ruleset the gateway applies."""


@nft.command("render")
@click.option("--policy", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--sandbox-if", required=True)
@click.option("--uplink-if", required=True)
@workers_option
@proxy_port_option
@dns_port_option
@nflog_group_option
@click.option("--lockdown", is_flag=True, help="The fail-closed table instead (all sandbox traffic dropped).")
def nft_render(
    policy: str,
    sandbox_if: str,
    uplink_if: str,
    workers: int,
    proxy_port: int,
    dns_port: int,
    nflog_group: int,
    lockdown: bool,
) -> None:
    """Print the nftables script for POLICY (a pure function of it; nothing is applied)."""
    from egress.nft.render import render, render_lockdown
    from egress.policy.loader import load_policy

    check_ports(workers, proxy_port, dns_port)
    try:
        loaded = load_policy(policy)
    except RulesError as exc:
        click.echo(f"egress: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    wiring = defaults.GatewayConfig(
        policy, sandbox_if, uplink_if, "", workers=workers, proxy_port=proxy_port, dns_port=dns_port,
        nflog_group=nflog_group,
    )  # fmt: skip
    settings = wiring.nft_settings()
    click.echo(render_lockdown(settings, loaded) if lockdown else render(loaded, settings), nl=False)
