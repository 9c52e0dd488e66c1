"""The ``egress`` command line: argument parsing and exit codes; the work is done by the modules it calls."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

import click

from egress.capture.reader import CHUNK
from egress.detect.base import Category
from egress.detect.registry import default_detectors
from egress.report import TableWriter, summary, write_json
from egress.rules.lists import RulesError
from egress.scanner import FileStats, Scanner

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def scan(files: tuple[str, ...], as_json: bool, fail_on: frozenset[Category], progress: bool | None) -> None:
    """Classify the traffic in pcap/pcapng FILES: mining pools, crypto nodes, tunnels.

    Exit status: 0 when the scan ran, 1 with --fail-on and such findings, 2 on usage errors or unreadable input.
    """
    try:
        detectors = default_detectors()
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
