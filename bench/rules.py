"""Policy apply benchmark (issue 12): a policy with 100,000 allowlist entries applied to a running lab gateway
with ``egress rules apply``, while a client in the sandbox keeps downloading from an allowed site and asking the
gateway's resolver for it.

Reports, from the gateway's own log lines and the fleet's store (`egress.record.policy_store`):

- ``cli``: ``egress rules apply`` validating and storing the text (before any gateway sees it);
- ``validate``: the gateway's follower reading the text from Redis and validating it (parse, in a thread);
- ``prepare``: render + ``nft -c`` + every worker receiving it; ``commit``: the nftables transaction and the swap
  in the resolver, the drop logger, the allow sets and each proxy worker (the Reloader's own figures), each also
  as the supervisor's CPU seconds (``*_cpu_s``), and the CPU seconds of the whole gateway (supervisor, workers and
  the ``nft`` they ran) from the apply to the report (``gateway_cpu_s``);
- ``calibration_s``: the CPU seconds of a fixed pure-Python loop on this machine now, to compare CPU figures
  across machines and loads;
- ``stored → reported``: from the version being stored to the gateway reporting it runs it (includes the poll);
- the gateway's memory (supervisor and workers, RSS) before and with the large policy;
- during the whole window (stored → reported): allowed downloads and how many failed, DNS answers and the slowest;
  each answer over the goal with when its query was sent, in seconds after the version was stored, beside when
  the gateway had validated it (``validated_at_s``) and had it in force (``in_force_at_s``): which phase it was.

Goals: prepare + commit under 2 s, no allowed request failing, no DNS answer later than 50 ms. The machine's load is
printed too: on a shared machine every wall-clock figure measures the machine as well.

    python bench/rules.py                      # 100,000 entries
    python bench/rules.py --entries 10000 --json /tmp/rules.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from egress.lab import netns  # noqa: E402
from egress.lab.demo import GatewayRun, running_gateway  # noqa: E402
from egress.lab.topology import GATEWAY_SBX_V4  # noqa: E402

LAB_POLICY = HERE.parent / "rules" / "lab-policy.yaml"
GOAL_SWAP_S = 2.0
GOAL_DNS_MS = 50.0
DNS_EVERY = 0.02
"""Seconds between two DNS probes."""

PROBE = """
import dataclasses, json, pathlib, sys, threading, time
from egress.lab.sandbox_io import Context, query
from egress.lab.scenarios import run
from egress.lab.topology import Lab
prefix, nameserver, ca, stop, every = sys.argv[1:]
ctx = Context((nameserver,), False, (Lab(prefix).ca_file, pathlib.Path(ca)), 5.0)
lock = threading.Lock()
def emit(kind, started, ms, ok, detail=""):
    with lock:
        print(json.dumps({"kind": kind, "t": started, "ms": ms, "ok": ok, "detail": detail}), flush=True)
def dns():
    while not pathlib.Path(stop).exists():
        started, t0 = time.time(), time.perf_counter()
        try:
            ok, detail = bool(query(ctx, "allowed.lab", 1).answers), ""
        except Exception as error:
            ok, detail = False, repr(error)
        emit("dns", started, (time.perf_counter() - t0) * 1000, ok, detail)
        time.sleep(float(every))
def http():
    while not pathlib.Path(stop).exists():
        started = time.time()
        result = run("allowed_download", ctx)
        emit("http", started, result.elapsed_ms, result.outcome == "ok", result.detail)
threads = [threading.Thread(target=dns), threading.Thread(target=http)]
for thread in threads: thread.start()
for thread in threads: thread.join()
"""


def big_policy(entries: int) -> str:
    """The lab's policy with ``entries`` more allowed hosts (allowed.lab and the rest unchanged)."""
    lines = "".join(f"        - h{index}.bench.example.org:443\n" for index in range(entries))
    return LAB_POLICY.read_text().replace("      hosts:\n", "      hosts:\n" + lines, 1)


def _egress(run: GatewayRun, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "egress", *args, "--redis-url", run.redis_url]
    return netns.exec_in(run.lab.gateway_ns, argv, timeout=timeout)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in pathlib.Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total / 1024


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and of their children already reaped (``nft``, ``ip netns exec``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / tick


def calibration_s() -> float:
    """CPU seconds of a fixed loop of ten million additions (a gauge of this machine's speed right now)."""
    started = time.process_time()
    total = 0
    for value in range(10_000_000):
        total += value
    return round(time.process_time() - started, 3)


def _warm_up(samples: pathlib.Path, probe: subprocess.Popen[bytes], deadline: float = 600.0) -> None:
    """Wait until the probes have answered (DNS a few times, one download): on a loaded machine their start alone
    can take longer than a fixed pause, and a window without samples measures nothing. Then 5 s of baseline."""
    until = time.monotonic() + deadline
    while time.monotonic() < until and probe.poll() is None:
        kinds = [line.split('"kind": "')[1][:3] for line in samples.read_text().splitlines() if '"kind": "' in line]
        if kinds.count("dns") >= 5 and kinds.count("htt") >= 1:
            break
        time.sleep(0.5)
    time.sleep(5.0)


def _logged_at(log: str, pattern: str) -> float | None:
    """The epoch time of the last log line matching ``pattern`` (the log's own local-time stamp, to the ms)."""
    found = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*" + pattern, log, re.MULTILINE)
    if not found:
        return None
    stamp, millis = found[-1]
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def _log_seconds(log: str, pattern: str) -> float | None:
    found = re.findall(pattern, log)
    return float(found[-1]) if found else None


def _since(at: float | None, stored: float) -> float | None:
    return None if at is None else round(at - stored, 3)


def measure(run: GatewayRun, entries: int, work: pathlib.Path) -> dict[str, Any]:
    assert run.gateway is not None
    pids = _tree(run.gateway.pid)
    rss_before = _rss_mib(pids)
    policy = work / "big.yaml"
    policy.write_text(big_policy(entries))
    stop = work / "stop"
    stop.unlink(missing_ok=True)  # a previous run's: the probes would stop before they start
    samples_file = work / "samples.jsonl"
    probe = netns.popen_in(
        run.lab.sandbox_ns,
        [sys.executable, "-c", PROBE, run.lab.prefix, GATEWAY_SBX_V4, str(run.gateway_ca), str(stop), str(DNS_EVERY)],
        stdout=samples_file.open("wb"),  # a file, not a pipe: a full pipe would stop the probes
        stderr=subprocess.PIPE,
    )
    try:
        _warm_up(samples_file, probe)  # the probes answer before the apply, and measure the baseline
        cli_started = time.time()
        started = time.perf_counter()
        cpu_before = _cpu_s(_tree(run.gateway.pid))
        done = _egress(run, "rules", "apply", str(policy), "--wait", "900")
        cli_total = time.perf_counter() - started
        cpu_after = _cpu_s(_tree(run.gateway.pid))
        time.sleep(3.0)  # and keep going after it
    finally:
        stop.touch()
        _, err = probe.communicate(timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"rules apply failed: {done.stdout} {done.stderr}")
    status = json.loads(_egress(run, "rules", "status", "--json").stdout)
    stored = float(status["applied"]["time"])
    [report] = status["gateways"]
    reported = float(report["time"])
    rss_after = _rss_mib(_tree(run.gateway.pid))
    log = (run.lab.state_dir / "logs" / "gateway.log").read_text()
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line.startswith("{")]
    window = [s for s in samples if stored - 0.1 <= s["t"] <= reported + 0.1]
    dns = [s for s in window if s["kind"] == "dns"]
    http = [s for s in window if s["kind"] == "http"]
    quiet = [s["ms"] for s in samples if s["kind"] == "dns" and s["t"] < cli_started]  # before: the baseline
    return {
        "entries": entries,
        "policy_bytes": policy.stat().st_size,
        "state": report["state"],
        "cli_apply_s": round(cli_total, 3),
        "stored_to_reported_s": round(reported - stored, 3),
        "validate_s": _log_seconds(log, r"read and validated in ([0-9.]+) s"),
        "validate_cpu_s": _log_seconds(log, r"read and validated in [0-9.]+ s \(cpu ([0-9.]+) s\)"),
        "prepare_s": _log_seconds(log, r"from fleet version \d+ in force in .* \(prepare ([0-9.]+) s"),
        "commit_s": _log_seconds(log, r"from fleet version \d+ in force in .*, commit ([0-9.]+) s;"),
        "prepare_cpu_s": _log_seconds(log, r"from fleet version \d+ in force in .*; supervisor cpu ([0-9.]+) s,"),
        "commit_cpu_s": _log_seconds(
            log, r"from fleet version \d+ in force in .*; supervisor cpu [0-9.]+ s, ([0-9.]+) s"
        ),
        "gateway_cpu_s": round(cpu_after - cpu_before, 2),
        "calibration_s": calibration_s(),
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_after": round(rss_after, 1),
        "processes": len(pids),
        "http_in_window": len(http),
        "http_failed": [s["detail"] for s in http if not s["ok"]],
        "http_failed_all": sum(1 for s in samples if s["kind"] == "http" and not s["ok"]),
        "dns_in_window": len(dns),
        "dns_failed": sum(1 for s in dns if not s["ok"]),
        "dns_max_ms": round(max((s["ms"] for s in dns), default=float("nan")), 1),
        "dns_p50_ms": round(statistics.median(s["ms"] for s in dns), 1) if dns else None,
        "dns_over_goal": sum(1 for s in dns if s["ms"] > GOAL_DNS_MS),
        "dns_before_p50_ms": round(statistics.median(quiet), 1) if quiet else None,
        "dns_before_max_ms": round(max(quiet), 1) if quiet else None,
        "dns_before_over_goal": f"{sum(1 for ms in quiet if ms > GOAL_DNS_MS)} of {len(quiet)}",
        "validated_at_s": _since(_logged_at(log, r"read and validated in"), stored),
        "in_force_at_s": _since(_logged_at(log, r"from fleet version \d+ in force in"), stored),
        "dns_slow_at_s_ms": [(round(s["t"] - stored, 3), round(s["ms"], 1)) for s in dns if s["ms"] > GOAL_DNS_MS],
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "probe_errors": err.decode()[-500:],
    }


def report(result: dict[str, Any]) -> list[str]:
    prepare, commit = result["prepare_s"], result["commit_s"]
    swap = None if prepare is None or commit is None else prepare + commit
    lines = [f"{key:>22}  {value}" for key, value in result.items() if key != "probe_errors"]
    lines.append("")
    met = swap is not None and swap < GOAL_SWAP_S
    lines.append(f"goal swap (prepare + commit) < {GOAL_SWAP_S} s: {'met' if met else 'MISSED'} ({swap} s)")
    lines.append(f"goal no allowed request failing: {'met' if not result['http_failed'] else 'MISSED'}")
    lines.append(
        f"goal no DNS answer > {GOAL_DNS_MS:g} ms: {'met' if not result['dns_over_goal'] else 'MISSED'}"
        f" ({result['dns_over_goal']} of {result['dns_in_window']})"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="allowlist entries added to the lab policy")
    parser.add_argument("--prefix", default="egt-rules-", help="the lab's namespace prefix")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/rules.py needs root (the lab's namespaces and nftables)", file=sys.stderr)
        return 2
    work = pathlib.Path(f"/tmp/{args.prefix}work")
    work.mkdir(parents=True, exist_ok=True)
    boot = work / "boot.yaml"
    boot.write_text(LAB_POLICY.read_text())
    with running_gateway(args.prefix, boot, ready_timeout=180) as run:
        result = measure(run, args.entries, work)
    print("\n".join(report(result)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
