"""The ``egress`` command line: argument parsing and exit codes; the work is done by the modules it calls."""

from __future__ import annotations

import functools
import importlib
import os
import pathlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from egress.capture.reader import CHUNK
from egress.detect import packedfast
from egress.detect.base import Category
from egress.detect.registry import build_detectors
from egress.policy.listcache import name_lists
from egress.policy.problems import RulesError
from egress.report import TableWriter, summary, write_json
from egress.scan_jobs import scan_files
from egress.scanner import FileStats, Scanner

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def one_line_errors(run: Callable[[], Any]) -> NoReturn:
    """Run a command line (click, not standalone) and exit as click would, but say every error in one line:
    ``egress events: Invalid value for '--since': ...`` rather than a usage block. (A reader that closes the pipe,
    ``egress events | head -1``, ends the command quietly with status 1: click's own handling of EPIPE.)"""
    try:
        result = run()
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else "egress"
        click.echo(f"{where}: {error.format_message()} (see {where} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"egress: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("egress: aborted", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else EXIT_OK)


class LazyGroup(click.Group):
    """A group whose listed subcommands are imported only when used, so ``egress scan`` does not pay for
    FastAPI or redis at start-up."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Every error as one line on stderr, exit status 2 for usage errors; a closed stdout ends quietly."""
        run = super().main
        if not standalone_mode:
            return run(args, prog_name, standalone_mode=False, **extra)
        return one_line_errors(lambda: run(args, prog_name, standalone_mode=False, **extra))

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
        "retention": "egress.cli_query:retention",
        "actions": "egress.cli_query:actions",
        "export": "egress.cli_export:export",
        "quarantine": "egress.cli_quarantine:quarantine",
        "flows": "egress.cli_flows:flows_command",
        # the gateway's commands and settings (nftables, the CA, redis, logging): not imported by `egress scan`
        "gateway": "egress.cli_gateway:gateway",
        "doctor": "egress.cli_gateway:doctor",
        "ca": "egress.cli_wiring:ca",
        "nft": "egress.cli_wiring:nft",
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


def _scan_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    from egress.capture.hot import implementation, pure_asked
    from egress.detect import binfast, jsonfast

    json_reader = "pure" if jsonfast.COMPILED is None or pure_asked() else "compiled"
    binrpc_searches = "pure" if binfast.COMPILED is None or pure_asked() else "compiled"
    click.echo(
        f"egress {version('egress')}, JSON reader: {json_reader}, binrpc searches: {binrpc_searches}, "
        f"scan hot path: {implementation().name}"
    )
    ctx.exit()


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
    help="Directory of name lists (*.yaml) to use instead of the ones shipped with egress. Lists that validated are "
    "kept, keyed by their bytes, in $EGRESS_CACHE_DIR (empty: not kept), else $XDG_CACHE_HOME/egress or "
    "~/.cache/egress.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes: files scanned in parallel, one per worker, and a file of 64 MiB or more split by flow "
    "over the workers; same findings as --jobs 1.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_scan_version,
    help="Show the version and which hot paths run (compiled, or pure Python where not built), and exit.",
)
def scan(
    files: tuple[str, ...],
    as_json: bool,
    fail_on: frozenset[Category],
    progress: bool | None,
    lists_dir: str | None,
    jobs: int,
) -> None:
    """Classify the traffic in pcap/pcapng FILES: mining pools, crypto nodes, tunnels. ``-`` reads a capture from
    standard input; a gzip, bzip2, xz or zstd compressed capture is read as such.

    Exit status: 0 when the scan ran, 1 with --fail-on and such findings, 2 on usage errors, unreadable input or a
    file none of whose packets is of a link type egress decodes.
    """
    try:
        detectors = build_detectors(name_lists(lists_dir))
    except RulesError as exc:
        click.echo(f"egress: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    scanner = Scanner(detectors)
    packedfast.choose(scanner.impl.name == "compiled")  # the packed detector's search with the hot path
    show_progress = sys.stderr.isatty() if progress is None else progress
    table = TableWriter(sys.stdout, colour=sys.stdout.isatty(), show_file=len(files) > 1)
    by_category: Counter[str] = Counter()
    all_stats: list[FileStats] = []
    unscanned: list[str] = []
    bars: dict[str, _Progress] = {}

    def progress_of(path: str) -> _Progress | None:
        if show_progress and os.path.isfile(path):
            bars[path] = _Progress(path)
        return bars.get(path)

    make_scanner = functools.partial(_scanner_for, lists_dir, scanner.impl.name == "compiled")
    for stats, findings in scan_files(scanner, files, jobs, progress_of, make_scanner):
        path = stats.path
        all_stats.append(stats)
        bar = bars.pop(path, None)
        for found in findings:
            by_category[found.finding.category.value] += 1
            if as_json:
                write_json(found, sys.stdout)
            else:
                table.write(found)
        if bar is not None:
            bar.clear()
        if _report_file(path, stats):
            unscanned.append(path)
    sys.stdout.flush()
    click.echo(summary(all_stats, by_category), err=True)
    if unscanned or any(stats.error for stats in all_stats):
        sys.exit(EXIT_USAGE)
    if fail_on and any(by_category[category.value] for category in fail_on):
        sys.exit(EXIT_FINDINGS)
    sys.exit(EXIT_OK)


def _scanner_for(lists_dir: str | None, compiled: bool) -> Scanner:
    """The scanner of an `egress scan --jobs` worker process: the parent's name lists and hot path."""
    from egress.capture.hot import implementation

    packedfast.choose(compiled)
    return Scanner(build_detectors(name_lists(lists_dir)), hot=implementation(compiled))


def _report_file(path: str, stats: FileStats) -> bool:
    """Say on stderr what went wrong with one scanned file; True when none of it could be scanned."""
    if stats.error:
        click.echo(f"egress: {stats.error}", err=True)
    if stats.skipped:
        where = ", ".join(str(index) for index in stats.skipped_at)
        click.echo(f"egress: {path}: skipped {stats.skipped} malformed packet(s) (first at {where})", err=True)
    return _unsupported_link_types(path, stats)


def _unsupported_link_types(path: str, stats: FileStats) -> bool:
    """Say which packets of ``path`` were of a link type egress cannot decode; True when that was all of them
    (nothing of the file was scanned: an error, not a clean result)."""
    from egress.capture.opener import describe_linktype

    if not stats.unsupported:
        return False
    kinds = ", ".join(f"{count} of link type {describe_linktype(kind)}" for kind, count in stats.unsupported.items())
    none = sum(stats.unsupported.values()) >= stats.packets
    what = "none of its packets could be scanned" if none else "these were not scanned"
    click.echo(f"egress: {path}: {kinds}: {what} (egress reads Ethernet, Linux cooked, raw IP, loopback)", err=True)
    return none


@main.group(
    cls=LazyGroup,
    lazy={n: f"egress.cli_policy:{n}_command" for n in ("apply", "history", "rollback", "status")}
    | {"replay": "egress.cli_replay:rules_replay", "diff": "egress.cli_rules:rules_diff"},
)
def rules() -> None:
    """Policy and name-list files."""


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--gateway-address",
    "gateway_addresses",
    multiple=True,
    metavar="ADDRESS",
    help="An address of the gateway (uplink, management) no sandbox source may contain; repeatable. Loopback is "
    "always refused.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Size cap of a policy file, checked before parsing (default: $EGRESS_POLICY_MAX_BYTES, else 4 MiB; the "
    "gateway reads the same variable).",
)
@click.option(
    "--nft/--no-nft",
    "use_nft",
    default=True,
    show_default=True,
    help="Have `nft -c` check the rendered table (skipped, and said, where nft cannot run).",
)
def rules_check(
    files: tuple[str, ...], gateway_addresses: tuple[str, ...], max_bytes: int | None, use_nft: bool
) -> None:
    """Validate policy FILES as applying them would, without changing anything: the file's size and encoding,
    the schema and every rule (each error with file, line and field), the nftables table rendered and checked by
    `nft -c`. Then warnings (a wildcard over a public suffix where anyone can create names, a network rule open
    on every port, report mode), which do not fail the check.

    Exit status 0 when every file is valid, 1 when one is not, 2 on usage errors.
    """
    import ipaddress

    from egress import shipped
    from egress.policy.loader import format_problems
    from egress.policy.suffixes import format_warnings, load_suffixes
    from egress.policycheck import check_file, kernel_check

    try:
        gateway = [ipaddress.ip_address(address) for address in gateway_addresses]
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--gateway-address") from None
    try:
        suffixes = load_suffixes(shipped.public_suffixes())
    except OSError as error:  # the checks still run; only the wildcard warnings need the list
        click.echo(f"warning: no public suffix list ({error}): wildcards not checked against it", err=True)
        suffixes = frozenset()
    kernel, why = kernel_check() if use_nft else (None, "--no-nft")
    bad = False
    for path in files:
        checked = check_file(path, suffixes, kernel, why, gateway, max_size=max_bytes)
        if not checked.ok:
            bad = True
            click.echo(format_problems(checked.errors), err=True)
            continue
        if checked.warnings:
            click.echo(format_warnings(checked.warnings), err=True)
        count = len(checked.warnings)
        notes = [f"{count} warning{'s' * (count != 1)}"] if count else []
        notes.append(f"nft -c: {checked.kernel}")
        click.echo(f"{path}: ok ({'; '.join(notes)})")
    sys.exit(EXIT_FINDINGS if bad else EXIT_OK)


def _lab_prefix(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    from egress.lab.topology import check_prefix

    try:
        return check_prefix(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None


lab_prefix_option = click.option(
    "--prefix",
    default="egress-",
    show_default=True,
    callback=_lab_prefix,
    help="Names of the lab's namespaces start so (1-12 of a-z, 0-9, '-').",
)


@main.group()
def lab() -> None:
    """The lab: network namespaces (sandbox, gateway, internet) with a fake internet, on this machine."""


@lab.command("up")
@lab_prefix_option
def lab_up(prefix: str) -> None:
    """Build the lab's namespaces (idempotent)."""
    from egress.lab import netns

    built = netns.up(prefix)
    click.echo(f"lab up: {', '.join(built.namespaces)}")


@lab.command("down")
@lab_prefix_option
def lab_down(prefix: str) -> None:
    """Remove the lab: its processes, namespaces and state."""
    from egress.lab import netns

    netns.down(prefix)
    click.echo("lab down")


@lab.command("status")
@lab_prefix_option
def lab_status(prefix: str) -> None:
    """What of the lab exists."""
    from egress.lab import netns

    click.echo(netns.status(prefix))


@lab.command("demo")
@lab_prefix_option
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (the gateway is stopped).")
def lab_demo(prefix: str, keep: bool) -> None:
    """Start the gateway in the lab and play what a misbehaving agent would try; show what happened."""
    from egress.lab.demo import demo

    sys.exit(demo(prefix, keep))


@lab.command("record")
@click.argument("names", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), default="pcaps", show_default=True)
@lab_prefix_option
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


main.add_command(
    LazyGroup("api", lazy={"serve": "egress.api.server:api_serve"}, help="The query API (HTTP, OpenAPI, dashboard).")
)
