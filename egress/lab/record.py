"""``egress lab record NAME... [--out pcaps/]``: each attempt as a small capture at the gateway's sandbox side.

Brings a lab up with the gateway running under the lab's policy (as ``egress lab demo`` does), then for each named
attempt (`egress.lab.scenarios`) runs tcpdump in the gateway namespace on the sandbox-side interface, plays the
attempt from the sandbox and stops the capture: the file holds what the agent sent and what it got back, which is
what ``egress scan`` is tested against (pcaps/MANIFEST.tsv). Files stay small: link chatter (ARP, neighbour
discovery) is filtered out and each frame is cut at `SNAPLEN` bytes (detectors look at a flow's first bytes).
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from egress.lab import netns
from egress.lab.demo import LAB_POLICY, GatewayRun, running_gateway
from egress.lab.scenarios import SCENARIOS, ScenarioResult

SNAPLEN = 2048
"""Bytes kept per frame: a ClientHello, an HTTP request or a Stratum login whole; a bulk download cut short."""
FILTER = "not arp and not (icmp6 and (ip6[40] >= 133 and ip6[40] <= 137))"
"""Leave out link chatter (ARP, IPv6 neighbour and router discovery): it says nothing about the attempt."""
LISTEN_TIMEOUT = 20.0
READY_TIMEOUT = 120.0
"""Seconds the lab's parts may take to listen: more than the demo's 30, since `make pcaps` runs on a machine the
suite keeps busy (the harness allows 90 s, scaled, for the same reason)."""


class RecordError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Recorded:
    name: str
    path: pathlib.Path
    result: ScenarioResult


def start_tcpdump(
    run: GatewayRun,
    path: pathlib.Path,
    snaplen: int = SNAPLEN,
    count: int | None = None,
    bpf: str = FILTER,
) -> subprocess.Popen[bytes]:
    """tcpdump on the gateway's sandbox-facing interface into ``path`` (frames matching ``bpf``), returned once it
    is live; frames cut at ``snaplen`` bytes (0: whole), at most ``count`` packets when given (a flood then cannot
    fill the disk). Also used by the security suite (tests/security/recording.py) to record each technique."""
    log = path.with_suffix(".log")
    argv = ["tcpdump", "-i", run.lab.gateway_sandbox_if, "-n", "-s", str(snaplen), "--immediate-mode", "-U"]
    argv += [] if count is None else ["-c", str(count)]
    argv += ["-Z", "root", "-w", str(path), bpf]
    with log.open("wb") as handle:
        process = netns.popen_in(run.lab.gateway_ns, argv, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while "listening on" not in log.read_text(errors="replace"):  # printed once the capture is live
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RecordError(f"tcpdump did not start: {log.read_text(errors='replace').strip()}")
        time.sleep(0.05)
    return process


def stop_tcpdump(process: subprocess.Popen[bytes]) -> None:
    """Stop a `start_tcpdump` capture; the file is complete when this returns."""
    if process.poll() is not None:
        return  # ended by itself (its ``count`` reached)
    process.send_signal(signal.SIGINT)  # flushes and closes the file
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def record_in(run: GatewayRun, names: Sequence[str], out: pathlib.Path) -> list[Recorded]:
    """Record each attempt of ``names`` into ``out/<name>.pcap`` through the running gateway ``run``."""
    out.mkdir(parents=True, exist_ok=True)
    recorded: list[Recorded] = []
    for name in names:
        path = out / f"{name}.pcap"
        process = start_tcpdump(run, path)
        try:
            [result] = run.attempts([name])
        finally:
            stop_tcpdump(process)
        path.with_suffix(".log").unlink(missing_ok=True)
        recorded.append(Recorded(name, path, result))
    return recorded


def record(
    names: Sequence[str], out: pathlib.Path, prefix: str = "egress-", policy: pathlib.Path = LAB_POLICY
) -> list[Recorded]:
    """A lab of its own (removed afterwards) with the gateway under ``policy``; each attempt recorded."""
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise RecordError(f"unknown attempt(s): {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    with running_gateway(prefix, policy, ready_timeout=READY_TIMEOUT) as run:
        return record_in(run, names, out)
