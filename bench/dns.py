"""DNS benchmark: the gateway's resolver beside unbound in the same place, with dnsperf from the sandbox (issue 15).

Brings up a lab (``egt-dns-`` by default) with its fake internet (the lab's authority answers every lab name), then
for each configuration, in the same lab, with the sandbox asking the gateway's sandbox-side address on port 53:

- ``egress``: the real gateway (`bench.gateway.egress_gateway`: rules/lab-policy.yaml, its Redis beside it);
- ``unbound``: Debian's unbound as a caching forwarder to the lab's authority, in the gateway namespace, one
  thread per core (the peer the issue names).

Each configuration starts from a clean gateway namespace (no nftables table left by the one before: the gateway
leaves its lockdown and its closed guard table when it stops, which drop every sandbox packet) and must answer one
query from the sandbox (a positive control: NOERROR with an address) before anything is measured; a configuration
that does not is reported as failed for that round, never measured as zero. Then, in each round:

- saturated: dnsperf with many outstanding queries (queries/s, average latency, lost queries, gateway CPU per
  1,000 answers: the stable figure on a shared machine);
- the goal load: dnsperf at 0.125x the queries/s unbound reached saturated (the issue's "p99 < 5 ms at half that
  load", where "that load" is the throughput goal, 0.25x unbound's queries/s), the same absolute rate for both
  configurations, with a probe in the sandbox that sends one query every `PROBE_INTERVAL` and times each answer
  (p50/p99; dnsperf 2.10 prints no percentiles): the goal row;
- half of unbound's saturated rate, the same probe: information only (above the throughput goal, it measures how
  a server queues once it is past its own saturation).

Both loads take unbound's saturated queries/s of the first round (unbound runs first in each round). The queries are
the allowed names of the lab policy, A and AAAA (what an agent's connections ask).

    python bench/dns.py                     # both configurations, 3 interleaved rounds
    python bench/dns.py --only egress --seconds 5 --goal-rate 8000
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import json
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench import gateway as gw  # noqa: E402
from egress.detect import dns  # noqa: E402
from egress.lab import netns, servers  # noqa: E402
from egress.lab.topology import GATEWAY_SBX_V4, Lab, server  # noqa: E402

NAMES = ("allowed.lab", "ws.lab")
PROBE_INTERVAL = 0.01
"""Seconds between the latency probe's queries (100 a second: part of the load, a small part)."""
Result = dict[str, Any]


def probe(argv: list[str]) -> int:
    """Inside the sandbox: one query every `PROBE_INTERVAL` for ``seconds``; prints the answer times (ms) as JSON."""
    nameserver, seconds = argv[0], float(argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    times: list[float] = []
    lost = 0
    end = time.monotonic() + seconds
    ident = 0
    while time.monotonic() < end:
        ident = (ident + 1) & 0xFFFF
        query = dns.build_query(ident, NAMES[ident % len(NAMES)], dns.A if ident % 4 < 2 else dns.AAAA)
        sent = time.monotonic()
        sock.sendto(query, (nameserver, 53))
        try:
            while True:
                data = sock.recv(4096)
                if data[:2] == query[:2]:
                    break
            times.append(1000.0 * (time.monotonic() - sent))
        except TimeoutError:
            lost += 1
        time.sleep(max(0.0, sent + PROBE_INTERVAL - time.monotonic()))
    print(json.dumps({"times": times, "lost": lost}))
    return 0


def _query_file(lab: Lab) -> pathlib.Path:
    path = lab.state_dir / "dnsperf-queries.txt"
    path.write_text("".join(f"{name} {kind}\n" for name in NAMES for kind in ("A", "AAAA")))
    return path


SOURCES: list[str | None] = [None]
"""The sandbox addresses dnsperf sends from, one dnsperf each (``--sandboxes 2``: the lab's and `SECOND_V4`);
None: the sandbox's own address."""
SECOND_V4 = "10.203.1.130"
"""``--sandboxes 2``: the second sandbox's address on the lab's sandbox link (its sources: the link's upper half)."""


def _perfs(lab: Lab, argv: list[str], seconds: float) -> list[subprocess.Popen[bytes]]:
    """One dnsperf per source in `SOURCES`, side by side (``argv`` without ``-a``)."""
    return [
        netns.popen_in(
            lab.sandbox_ns, [*argv, *(["-a", source] if source else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for source in SOURCES
    ]


def _outputs(perfs: list[subprocess.Popen[bytes]], seconds: float) -> list[tuple[str, str]]:
    out = []
    for perf in perfs:
        try:
            stdout, stderr = perf.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            perf.kill()
            stdout, stderr = perf.communicate()
        out.append((stdout.decode(errors="replace"), stderr.decode(errors="replace")))
    return out


def dnsperf(lab: Lab, nameserver: str, seconds: float, rate: float | None = None) -> Result:
    """dnsperf from the sandbox (one per source, their figures summed); saturated (many outstanding, two threads
    in all) or at ``rate`` queries/s in all."""
    share = len(SOURCES)
    argv = ["dnsperf", "-s", nameserver, "-p", "53", "-d", str(_query_file(lab)), "-l", str(seconds)]
    argv += ["-c", str(16 // share), "-T", str(max(1, 2 // share)), "-q", str(500 // share), "-t", "2"]
    if rate is not None:
        argv += ["-Q", str(int(rate / share))]
    gateway0 = gw._ns_cpu(lab.gateway_ns)
    outputs = _outputs(_perfs(lab, argv, seconds), seconds)
    cpu = gw._ns_cpu(lab.gateway_ns) - gateway0
    qps_sum, completed_sum, lost_sum, latency_sum = 0.0, 0, 0, 0.0
    for text, error in outputs:
        qps = re.search(r"Queries per second:\s+([\d.]+)", text)
        latency = re.search(r"Average Latency \(s\):\s+([\d.]+)", text)
        completed = re.search(r"Queries completed:\s+(\d+)", text)
        lost = re.search(r"Queries lost:\s+(\d+)", text)
        if qps is None or completed is None:
            return {"failed": (error.strip() or text.strip() or "dnsperf failed").splitlines()[-1][:200]}
        qps_sum += float(qps.group(1))
        completed_sum += int(completed.group(1))
        lost_sum += int(lost.group(1)) if lost else 0
        latency_sum += float(latency.group(1)) * int(completed.group(1)) if latency else float("nan")
    if completed_sum == 0:  # a server that answered nothing is no figure to take a median of
        return {"failed": f"no query answered ({lost_sum} lost)"}
    return {
        "qps": qps_sum,
        "avg_ms": 1000.0 * latency_sum / completed_sum,
        "lost": lost_sum,
        "gw_cpu_ms_per_1k": 1000.0 * cpu / max(completed_sum / 1000.0, 1e-9),
        "load": os.getloadavg()[0],  # the machine is shared: the 1-minute load average as the run ended
    }


def loaded_probe(lab: Lab, nameserver: str, seconds: float, rate: float) -> Result:
    """dnsperf at ``rate`` queries/s with the latency probe beside it: the probe's p50/p99 and losses, and the
    gateway's CPU per 1,000 answers at that load (dnsperf's and the probe's answers)."""
    load = ["dnsperf", "-s", nameserver, "-d", str(_query_file(lab)), "-l", str(seconds + 1)]
    load += ["-Q", str(int(rate / len(SOURCES))), "-c", "8", "-q", "200"]
    gateway0 = gw._ns_cpu(lab.gateway_ns)
    perfs = _perfs(lab, load, seconds)
    try:
        argv = [sys.executable, str(pathlib.Path(__file__).resolve()), "probe", nameserver, str(seconds)]
        done = netns.exec_in(lab.sandbox_ns, argv, timeout=seconds + 60)
    finally:
        perf_outs = [text for text, _error in _outputs(perfs, seconds)]
    cpu = gw._ns_cpu(lab.gateway_ns) - gateway0
    if done.returncode != 0:
        return {"failed": (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1][:200]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    times = sorted(out["times"])
    if not times:
        return {"failed": "the probe got no answer", "lost": out["lost"]}
    counts = [re.search(r"Queries completed:\s+(\d+)", text) for text in perf_outs]
    completed = all(counts)
    answered = len(times) + sum(int(found.group(1)) for found in counts if found)
    return {
        "rate": rate,
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
        "probe_lost": out["lost"],
        "gw_cpu_ms_per_1k": 1000.0 * cpu / max(answered / 1000.0, 1e-9) if completed else float("nan"),
    }


@contextlib.contextmanager
def unbound(lab: Lab, workers: int) -> Iterator[str]:
    """Debian's unbound on the gateway's sandbox-side address, forwarding to the lab's authority, caching."""
    binary = shutil.which("unbound") or "/usr/sbin/unbound"
    if not pathlib.Path(binary).exists():
        raise gw.Unavailable("unbound is not installed (apt-get install unbound)")
    state = lab.state_dir / "unbound"
    state.mkdir(parents=True, exist_ok=True)
    config = state / "unbound.conf"
    config.write_text(
        "server:\n"
        f"  interface: {GATEWAY_SBX_V4}\n  port: 53\n  access-control: 10.203.1.0/24 allow\n"
        f'  do-daemonize: no\n  username: ""\n  chroot: ""\n  directory: "{state}"\n  pidfile: ""\n'
        f"  num-threads: {workers}\n  so-reuseport: yes\n  do-ip6: no\n  use-syslog: no\n  verbosity: 0\n"
        '  module-config: "iterator"\n  do-not-query-localhost: no\n  domain-insecure: "lab"\n'
        "  msg-cache-size: 64m\n  rrset-cache-size: 128m\n"
        f'forward-zone:\n  name: "."\n  forward-addr: {server("ns").v4}\n'
    )
    log = (state / "unbound.log").open("wb")
    process = netns.popen_in(lab.gateway_ns, [binary, "-d", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while _answer_of(lab, GATEWAY_SBX_V4) is None:
            if time.monotonic() > deadline or process.poll() is not None:
                raise gw.Unavailable(f"unbound did not start: {(state / 'unbound.log').read_text()[-300:]}")
            time.sleep(0.1)
        yield GATEWAY_SBX_V4
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _answer_of(lab: Lab, nameserver: str) -> str | None:
    """The address ``nameserver`` answers for the first name, asked from the sandbox (None: no address came back;
    dig prints its "connection timed out" on stdout, so only an address counts)."""
    argv = ["dig", "+short", "+time=1", "+tries=1", f"@{nameserver}", NAMES[0], "A"]
    done = netns.exec_in(lab.sandbox_ns, argv, timeout=10)
    for line in done.stdout.split():
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(line))
    return None


def control(lab: Lab, nameserver: str, wait: float = 20.0) -> str | None:
    """The positive control before a configuration is measured: one query from the sandbox answered with an
    address within ``wait`` seconds. None when it was; else why not."""
    deadline = time.monotonic() + wait
    while _answer_of(lab, nameserver) is None:
        if time.monotonic() > deadline:
            return f"positive control: no address for {NAMES[0]} from {nameserver} within {wait:.0f} s"
        time.sleep(0.2)
    return None


def clean_gateway(lab: Lab) -> None:
    """No nftables table left in the gateway namespace (ours: the lab's own) by the configuration before: a stopped
    gateway leaves its lockdown and its closed guard, which drop every sandbox packet."""
    netns.exec_in(lab.gateway_ns, ["nft", "flush", "ruleset"], timeout=30)


CONFIGS: dict[str, Callable[[Lab, int], contextlib.AbstractContextManager[str]]] = {
    "egress": gw.egress_gateway,
    "unbound": unbound,
}


def report(results: dict[str, dict[str, Result]]) -> list[str]:
    rows = (
        ("saturated", "qps", "queries/s (dnsperf, saturated)"),
        ("saturated", "avg_ms", "  average latency (ms)"),
        ("saturated", "lost", "  queries lost"),
        ("saturated", "gw_cpu_ms_per_1k", "gateway CPU ms per 1,000 answers"),
        ("saturated", "load", "  load average (1 min) at its end"),
        ("goal", "rate", "goal load, 0.125x unbound (q/s)"),
        ("goal", "p50_ms", "  probe p50 (ms)"),
        ("goal", "p99_ms", "  probe p99 (ms)"),
        ("goal", "probe_lost", "  probe lost"),
        ("goal", "gw_cpu_ms_per_1k", "  gateway CPU ms per 1,000 answers"),
        ("half", "rate", "half unbound's rate (q/s; info)"),
        ("half", "p50_ms", "  probe p50 (ms)"),
        ("half", "p99_ms", "  probe p99 (ms)"),
        ("half", "gw_cpu_ms_per_1k", "  gateway CPU ms per 1,000 answers"),
    )
    configs = [c for c in CONFIGS if c in results]
    lines = [f"{'metric':<34}" + "".join(f"{c:>10}" for c in configs) + f"{'eg/unbound':>12}"]
    for key, field, label in rows:
        values = [gw._value(results, c, key, field) for c in configs]
        ratio = gw._ratio(gw._value(results, "egress", key, field), gw._value(results, "unbound", key, field))
        lines.append(f"{label:<34}" + "".join(f"{gw._fmt(v):>10}" for v in values) + f"{ratio:>12}")
    egress_qps, unbound_qps = (gw._value(results, c, "saturated", "qps") for c in ("egress", "unbound"))
    p99 = gw._value(results, "egress", "goal", "p99_ms")
    rate = gw._value(results, "egress", "goal", "rate")
    lines.append("goals:")
    ok = None if egress_qps is None or unbound_qps is None else egress_qps >= 0.25 * unbound_qps
    lines.append(f"  {'n/a ' if ok is None else 'PASS' if ok else 'FAIL'} queries/s >= 0.25x unbound's "
                 f"({gw._ratio(egress_qps, unbound_qps)})")  # fmt: skip
    ok = None if p99 is None else p99 < 5.0
    lines.append(f"  {'n/a ' if ok is None else 'PASS' if ok else 'FAIL'} p99 < 5 ms at half the throughput goal "
                 f"({gw._fmt(rate)} q/s: {gw._fmt(p99)} ms)")  # fmt: skip
    for config in configs:
        for key, result in results[config].items():
            if "failed" in result:
                lines.append(f"{config} {key} failed: {result['failed']}")
    return lines


def measure(lab: Lab, name: str, workers: int, seconds: float, rates: dict[str, float | None]) -> dict[str, Result]:
    """One configuration, started in a clean gateway namespace and checked before it is measured. ``rates``: the
    goal and half loads (None until unbound's saturated run sets them; the first unbound run does)."""
    clean_gateway(lab)
    try:
        with CONFIGS[name](lab, workers) as nameserver:
            failed = control(lab, nameserver)
            if failed is not None:
                return {"control": {"failed": failed}}
            saturated = dnsperf(lab, nameserver, seconds)
            if name == "unbound" and "qps" in saturated:
                rates["goal"] = rates["goal"] or saturated["qps"] / 8
                rates["half"] = rates["half"] or saturated["qps"] / 2
            measured = {"saturated": saturated}
            for key in ("goal", "half"):
                rate = rates[key]
                measured[key] = (
                    {"failed": "no rate (unbound not measured)"}
                    if rate is None
                    else loaded_probe(lab, nameserver, seconds, rate)
                )
            return measured
    except gw.Unavailable as error:
        return {"saturated": {"failed": str(error)}}
    finally:
        clean_gateway(lab)


def _split_policy(path: pathlib.Path) -> pathlib.Path:
    """The lab's policy with its sandbox link split between ``agent`` (the lower half) and ``second``."""
    import yaml

    from egress.lab import demo

    policy = yaml.safe_load(demo.LAB_POLICY.read_text())
    agent = policy["sandboxes"]["agent"]
    agent["link_pins_sources"] = True
    second = json.loads(json.dumps(agent))
    agent["sources"] = ["10.203.1.0/25", "fd00:203:1::/64"]
    second["sources"] = ["10.203.1.128/25"]
    policy["sandboxes"]["second"] = second
    path.write_text(yaml.safe_dump(policy))
    return path


def _configure_egress(lab: Lab, sandboxes: int, processes: int) -> None:
    """``--sandboxes 2``: the second address on the sandbox's link, dnsperf from both, the split policy;
    ``--dns-processes``: passed to the gateway."""
    policy = None
    if sandboxes == 2:
        netns.exec_in(lab.sandbox_ns, ["ip", "addr", "add", f"{SECOND_V4}/24", "dev", lab.sandbox_if], timeout=10)
        SOURCES[:] = [None, SECOND_V4]
        policy = _split_policy(lab.state_dir / "split-policy.yaml")
    CONFIGS["egress"] = functools.partial(gw.egress_gateway, policy=policy,
                                          extra_args=("--dns-processes", str(processes)))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return probe(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="egt-dns-", help="lab prefix (namespaces <prefix>sbx/gw/net)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations, comma-separated, in run order")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="proxy workers / unbound threads")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations; medians reported")
    parser.add_argument("--goal-rate", type=float, help="queries/s of the goal-load run (default: unbound's / 8)")
    parser.add_argument("--half-rate", type=float, help="queries/s of the half-load run (default: unbound's / 2)")
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure here")
    parser.add_argument("--dns-processes", type=int, default=1, help="the gateway's resolver processes")
    parser.add_argument("--sandboxes", type=int, choices=(1, 2), default=1,
                        help="2: the lab's link split into two sandboxes (agent, second), a dnsperf from each; "
                        "the probe asks from agent's address")  # fmt: skip
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the DNS benchmark needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if shutil.which("dnsperf") is None:
        print("dnsperf is not installed (apt-get install dnsperf)", file=sys.stderr)
        return 2
    order = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in order if name not in CONFIGS]:
        parser.error(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in gw.machine().items() if k != "wrk"), flush=True)
    rounds: dict[str, list[dict[str, Result]]] = {}
    rates: dict[str, float | None] = {"goal": args.goal_rate, "half": args.half_rate}
    started = time.monotonic()
    lab = netns.up(args.prefix)
    fake_internet: subprocess.Popen[bytes] | None = None
    try:
        (lab.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        _configure_egress(lab, args.sandboxes, args.dns_processes)
        fake_internet = servers.start(lab, workers=os.cpu_count() or 1, log=lab.state_dir / "logs" / "servers.log")
        for round_index in range(args.rounds):
            for name in sorted(order, key=lambda n: n != "unbound"):  # unbound first: it sets the half load
                print(f"== {name}, round {round_index + 1} of {args.rounds}", flush=True)
                measured = measure(lab, name, args.workers, args.seconds, rates)
                rounds.setdefault(name, []).append(measured)
                print(f"  {name}: {json.dumps(measured)}", flush=True)
    finally:
        if fake_internet is not None:
            servers.stop(fake_internet)
        netns.down(args.prefix)
    results = {name: gw._medians(each) for name, each in rounds.items()}
    print(f"\nmedians over {args.rounds} round(s)")
    print("\n".join(report(results)))
    print(f"\nwhole run {time.monotonic() - started:.0f} s; lab {args.prefix} removed")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rates": rates, "rounds": rounds}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
