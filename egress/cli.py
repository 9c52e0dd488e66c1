"""The ``egress`` command line: argument parsing and exit codes; the work is done by the modules it calls."""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import time
from collections import Counter
from typing import Any

import click

from egress.capture.reader import CHUNK
from egress.cli_gateway import (
    dns_port_option,
    doctor,
    gateway,
    nflog_group_option,
    proxy_port_option,
    workers_option,
)
from egress.detect.base import Category
from egress.detect.registry import build_detectors
from egress.gateway import config as defaults
from egress.policy.lists import RulesError, load_name_lists
from egress.report import TableWriter, summary, write_json
from egress.scanner import FileStats, Scanner

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


class LazyGroup(click.Group):
    """A group whose listed subcommands are imported only when used, so ``egress scan`` does not pay for
    FastAPI or redis at start-up."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    lazy={
        "events": "egress.cli_query:events",
        "timeline": "egress.cli_query:timeline_command",
        "stats": "egress.cli_query:stats",
        "actions": "egress.cli_query:actions",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="egress")
def main() -> None:
    """egress: egress firewall and mining/tunnel detector for agent sandboxes."""


def _categories(_ctx: click.Context, _param: click.Parameter, value: str | None) -> frozenset[Category]:
    if not value:
        return frozenset()
    chosen = set()
    for name in (part.strip() for part in value.split(",")):
        try:
            chosen.add(Category(name))
        except ValueError:
            choices = ", ".join(item.value for item in Category)
            raise click.BadParameter(f"unknown category {name!r} (choose from {choices})") from None
    return frozenset(chosen)


class _Progress:
    """A one-line progress bar on stderr, redrawn at most a few times a second."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.total = max(os.path.getsize(path), 1)
        self.done = 0
        self.packets = 0
        self.last = 0.0

    def __call__(self, packets: int) -> None:
        self.done += CHUNK
        self.packets += packets
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        name = os.path.basename(self.path)[-30:]
        click.echo(f"\r{name} [{bar:<30}] {share:4.0%} {self.packets} packets", nl=False, err=True)

    def clear(self) -> None:
        if self.last:
            click.echo("\r" + " " * 79 + "\r", nl=False, err=True)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per finding per flow, one per line.")
@click.option(
    "--fail-on",
    callback=_categories,
    metavar="CATEGORY,...",
    help="Exit 1 when a finding of one of these categories (mining, tunnel, crypto-node) is made.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
@click.option(
    "--lists",
    "lists_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Directory of name lists (*.yaml) to use instead of the ones shipped with egress.",
)
def scan(
    files: tuple[str, ...], as_json: bool, fail_on: frozenset[Category], progress: bool | None, lists_dir: str | None
) -> None:
    """Classify the traffic in pcap/pcapng FILES: mining pools, crypto nodes, tunnels.

    Exit status: 0 when the scan ran, 1 with --fail-on and such findings, 2 on usage errors or unreadable input.
    """
    try:
        detectors = build_detectors(load_name_lists(lists_dir))
    except RulesError as exc:
        click.echo(f"egress: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    scanner = Scanner(detectors)
    show_progress = sys.stderr.isatty() if progress is None else progress
    table = TableWriter(sys.stdout, colour=sys.stdout.isatty(), show_file=len(files) > 1)
    by_category: Counter[str] = Counter()
    all_stats: list[FileStats] = []
    for path in files:
        stats = FileStats(path)
        all_stats.append(stats)
        bar = _Progress(path) if show_progress and os.path.isfile(path) else None
        for found in scanner.scan(path, stats, bar):
            by_category[found.finding.category.value] += 1
            if as_json:
                write_json(found, sys.stdout)
            else:
                table.write(found)
        if bar is not None:
            bar.clear()
        if stats.error:
            click.echo(f"egress: {stats.error}", err=True)
        if stats.skipped:
            where = ", ".join(str(index) for index in stats.skipped_at)
            click.echo(f"egress: {path}: skipped {stats.skipped} malformed packet(s) (first at {where})", err=True)
    sys.stdout.flush()
    click.echo(summary(all_stats, by_category), err=True)
    if any(stats.error for stats in all_stats):
        sys.exit(EXIT_USAGE)
    if fail_on and any(by_category[category.value] for category in fail_on):
        sys.exit(EXIT_FINDINGS)
    sys.exit(EXIT_OK)


@main.group(
    cls=LazyGroup, lazy={n: f"egress.cli_policy:{n}_command" for n in ("apply", "history", "rollback", "status")}
)
def rules() -> None:
    """Policy and name-list files."""


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def rules_check(files: tuple[str, ...]) -> None:
    """Validate policy FILES without touching anything: every error, with file, line and field; then warnings
    (a wildcard over a public suffix where anyone can create names), which do not fail the check.

    Exit status 0 when every file is valid, 1 when one is not, 2 on usage errors.
    """
    from egress import shipped
    from egress.policy.loader import format_problems, load_policy
    from egress.policy.suffixes import format_warnings, load_suffixes, policy_warnings

    bad = False
    try:
        suffixes = load_suffixes(shipped.public_suffixes())
    except OSError as error:  # the checks still run; only the wildcard warnings need the list
        click.echo(f"warning: no public suffix list ({error}): wildcards not checked against it", err=True)
        suffixes = frozenset()
    for path in files:
        try:
            policy = load_policy(path)
        except RulesError as error:
            bad = True
            click.echo(format_problems(error.problems), err=True)
            continue
        warnings = policy_warnings(policy, suffixes)
        if warnings:
            click.echo(format_warnings(warnings), err=True)
        click.echo(f"{path}: ok" + (f" ({len(warnings)} warning{'s' * (len(warnings) != 1)})" if warnings else ""))
    sys.exit(EXIT_FINDINGS if bad else EXIT_OK)


@main.group()
def lab() -> None:
    """The lab: network namespaces (sandbox, gateway, internet) with a fake internet, on this machine."""


@lab.command("up")
@click.option("--prefix", default="egress-", show_default=True, help="Names of the lab's namespaces start so.")
def lab_up(prefix: str) -> None:
    """Build the lab's namespaces (idempotent)."""
    from egress.lab import netns

    built = netns.up(prefix)
    click.echo(f"lab up: {', '.join(built.namespaces)}")


@lab.command("down")
@click.option("--prefix", default="egress-", show_default=True)
def lab_down(prefix: str) -> None:
    """Remove the lab: its processes, namespaces and state."""
    from egress.lab import netns

    netns.down(prefix)
    click.echo("lab down")


@lab.command("status")
@click.option("--prefix", default="egress-", show_default=True)
def lab_status(prefix: str) -> None:
    """What of the lab exists."""
    from egress.lab import netns

    click.echo(netns.status(prefix))


@lab.command("demo")
@click.option("--prefix", default="egress-", show_default=True)
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (the gateway is stopped).")
def lab_demo(prefix: str, keep: bool) -> None:
    """Start the gateway in the lab and play what a misbehaving agent would try; show what happened."""
    from egress.lab.demo import demo

    sys.exit(demo(prefix, keep))


@lab.command("record")
@click.argument("names", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), default="pcaps", show_default=True)
@click.option("--prefix", default="egress-", show_default=True)
def lab_record(names: tuple[str, ...], out: pathlib.Path, prefix: str) -> None:
    """Play each attempt NAME ('all': every one) through the gateway and keep it as OUT/NAME.pcap, captured at the
    gateway's sandbox side."""
    from egress.lab.record import RecordError, record
    from egress.lab.scenarios import SCENARIOS

    if os.geteuid() != 0:
        click.echo("egress lab record needs root (network namespaces, nftables)", err=True)
        sys.exit(EXIT_USAGE)
    try:
        done = record(list(SCENARIOS) if names == ("all",) else list(names), out, prefix)
    except RecordError as error:
        click.echo(f"egress: {error}", err=True)
        sys.exit(EXIT_USAGE)
    for item in done:
        size = item.path.stat().st_size
        click.echo(f"{item.path}  {size:>7} bytes  {item.result.outcome:<8} {item.result.detail[:80]}")


@main.group()
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


@main.group()
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


main.add_command(
    LazyGroup("api", lazy={"serve": "egress.api.server:api_serve"}, help="The query API (HTTP, OpenAPI, dashboard).")
)
main.add_command(gateway)
main.add_command(doctor)
