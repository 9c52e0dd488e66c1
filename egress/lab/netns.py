"""Build and remove the lab's network namespaces: the only module that runs ``ip``.

`up` makes what `egress.lab.topology` describes (idempotent: a complete lab is left alone, a half-built one is
removed and rebuilt), `down` removes it (ending the processes still running inside its namespaces first, by
pid), `status` says what is there. `exec_in` and `popen_in` run a command inside one namespace. Links are
created directly inside their namespaces, so the host's own namespace never sees a lab interface.

Run by hand: ``python -m egress.lab.netns up|down|status [--prefix P]`` (as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from egress.lab import certs
from egress.lab.topology import (
    DEFAULT_PREFIX,
    GATEWAY_SBX_V4,
    GATEWAY_SBX_V6,
    GATEWAY_UP_V4,
    GATEWAY_UP_V6,
    INTERNET_V4,
    INTERNET_V6,
    SANDBOX_NET_V4,
    SANDBOX_NET_V6,
    SANDBOX_V4,
    SANDBOX_V6,
    SERVERS,
    TUNNEL_V4,
    TUNNEL_V6,
    Lab,
)

IP = "ip"
COMMAND_TIMEOUT = 15.0
BUILD_TRIES = 2
_FORWARDING = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


class LabError(RuntimeError):
    """An ``ip`` command failed; the message carries the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [IP, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LabError(f"{' '.join(argv)}: {error}") from error
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def exec_in(
    ns: str, argv: Sequence[str], *, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` and wait (at most ``timeout`` seconds); never raises on exit status."""
    return subprocess.run(
        [IP, "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, input=input, check=False
    )


def popen_in(ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside namespace ``ns``; the caller owns the process (``ip netns exec`` execs into it)."""
    return subprocess.Popen([IP, "netns", "exec", ns, *argv], **kwargs)


def namespaces() -> set[str]:
    """Names of the network namespaces that exist now."""
    done = _ip("netns", "list", check=False)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


def _addresses(ns: str) -> set[str]:
    done = _ip("-n", ns, "-j", "addr", "show", check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return set()
    found: set[str] = set()
    for link in json.loads(done.stdout):
        for info in link.get("addr_info", []):
            if "local" in info:
                found.add(f"{link['ifname']}:{info['local']}")
    return found


def _expected(lab: Lab) -> dict[str, set[str]]:
    lo = {f"lo:{a}" for s in SERVERS for a in (s.v4, s.v6)} | {f"lo:{TUNNEL_V4}", f"lo:{TUNNEL_V6}"}
    return {
        lab.sandbox_ns: {f"{lab.sandbox_if}:{SANDBOX_V4}", f"{lab.sandbox_if}:{SANDBOX_V6}"},
        lab.gateway_ns: {
            f"{lab.gateway_sandbox_if}:{GATEWAY_SBX_V4}",
            f"{lab.gateway_sandbox_if}:{GATEWAY_SBX_V6}",
            f"{lab.gateway_uplink_if}:{GATEWAY_UP_V4}",
            f"{lab.gateway_uplink_if}:{GATEWAY_UP_V6}",
        },
        lab.internet_ns: {f"{lab.internet_if}:{INTERNET_V4}", f"{lab.internet_if}:{INTERNET_V6}", *lo},
    }


def problems(lab: Lab) -> list[str]:
    """What is missing from a complete lab (empty when it is complete)."""
    present = namespaces()
    found: list[str] = []
    for ns, wanted in _expected(lab).items():
        if ns not in present:
            found.append(f"namespace {ns} missing")
            continue
        missing = wanted - _addresses(ns)
        found += [f"{ns}: address {m} missing" for m in sorted(missing)]
    if lab.gateway_ns in present:
        for key in _FORWARDING:
            value = exec_in(lab.gateway_ns, ["cat", f"/proc/sys/{key}"], timeout=COMMAND_TIMEOUT).stdout.strip()
            if value != "1":
                found.append(f"{lab.gateway_ns}: {key} is {value or '?'}")
    if not lab.resolv_conf.exists():
        found.append(f"{lab.resolv_conf} missing")
    return found


def _sysctl(ns: str, keys: Sequence[str], value: str) -> None:
    """Set /proc/sys keys inside ``ns`` (writing /proc/sys from here would change the host's own)."""
    script = " && ".join(f"echo {value} > /proc/sys/{key}" for key in keys)
    done = exec_in(ns, ["sh", "-c", script], timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise LabError(f"setting {', '.join(keys)} in {ns}: {done.stderr.strip()}")


def _build(lab: Lab) -> None:
    sbx, gw, net = lab.namespaces
    for ns in lab.namespaces:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        # no duplicate address detection on links made from now on: addresses (link-local ones too, which
        # neighbour discovery needs) are usable at once instead of after about 2 s
        _sysctl(ns, ("net/ipv6/conf/default/accept_dad", "net/ipv6/conf/all/accept_dad"), "0")
    _ip(
        "link", "add", lab.sandbox_if, "netns", sbx, "type", "veth", "peer", "name", lab.gateway_sandbox_if, "netns", gw
    )
    _ip(
        "link", "add", lab.gateway_uplink_if, "netns", gw, "type", "veth", "peer", "name", lab.internet_if, "netns", net
    )
    for ns, dev, v4, v6 in (
        (sbx, lab.sandbox_if, SANDBOX_V4, SANDBOX_V6),
        (gw, lab.gateway_sandbox_if, GATEWAY_SBX_V4, GATEWAY_SBX_V6),
        (gw, lab.gateway_uplink_if, GATEWAY_UP_V4, GATEWAY_UP_V6),
        (net, lab.internet_if, INTERNET_V4, INTERNET_V6),
    ):
        _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        # nodad: usable at once instead of after duplicate address detection (about 2 s)
        _ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        _ip("-n", ns, "link", "set", dev, "up")
    for server_v4, server_v6 in [(s.v4, s.v6) for s in SERVERS] + [(TUNNEL_V4, TUNNEL_V6)]:
        _ip("-n", net, "addr", "add", f"{server_v4}/32", "dev", "lo")
        _ip("-n", net, "addr", "add", f"{server_v6}/128", "dev", "lo", "nodad")
    _ip("-n", sbx, "route", "add", "default", "via", GATEWAY_SBX_V4)
    _ip("-n", sbx, "-6", "route", "add", "default", "via", GATEWAY_SBX_V6)
    _ip("-n", gw, "route", "add", "default", "via", INTERNET_V4)
    _ip("-n", gw, "-6", "route", "add", "default", "via", INTERNET_V6)
    _ip("-n", net, "route", "add", SANDBOX_NET_V4, "via", GATEWAY_UP_V4)
    _ip("-n", net, "-6", "route", "add", SANDBOX_NET_V6, "via", GATEWAY_UP_V6)
    _sysctl(gw, _FORWARDING, "1")
    lab.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
    lab.resolv_conf.write_text(f"# egress lab {lab.prefix}\nnameserver {GATEWAY_SBX_V4}\nnameserver {GATEWAY_SBX_V6}\n")
    certs.ensure(lab.state_dir)


def up(prefix: str = DEFAULT_PREFIX) -> Lab:
    """Make the lab (or leave a complete one as it is) and return its names."""
    lab = Lab(prefix)
    if not problems(lab):
        certs.ensure(lab.state_dir)
        return lab
    for attempt in range(BUILD_TRIES):
        down(prefix)
        try:
            _build(lab)
        except LabError as error:
            # another process running `ip netns` at the same moment can make one step fail: start over once
            print(
                f"lab {prefix}: build failed ({error}), {'retrying' if attempt + 1 < BUILD_TRIES else 'giving up'}",
                file=sys.stderr,
            )
            if attempt + 1 == BUILD_TRIES:
                down(prefix)
                raise
        except BaseException:
            down(prefix)
            raise
        else:
            return lab
    raise AssertionError("unreachable")


def _pids(ns: str) -> list[int]:
    done = _ip("netns", "pids", ns, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit() and int(word) != os.getpid()]


def _stop_processes(ns: str, grace: float = 2.0) -> None:
    """End what still runs inside ``ns`` (processes the lab's users started there): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pids(ns):
            time.sleep(0.05)


def down(prefix: str = DEFAULT_PREFIX) -> None:
    """Remove the lab: its processes, namespaces (and so its links), resolv.conf and state directory."""
    lab = Lab(prefix)
    present = namespaces()
    for ns in reversed(lab.namespaces):
        if ns in present:
            _stop_processes(ns)
            _ip("netns", "del", ns)
    # a link left in the host namespace by an interrupted build elsewhere would block the next one
    for name in (lab.sandbox_if, lab.gateway_sandbox_if, lab.gateway_uplink_if, lab.internet_if):
        if _ip("link", "show", name, check=False).returncode == 0:
            _ip("link", "del", name, check=False)
    shutil.rmtree(lab.resolv_conf.parent, ignore_errors=True)
    shutil.rmtree(lab.state_dir, ignore_errors=True)


def status(prefix: str = DEFAULT_PREFIX) -> str:
    """A few lines for a person: namespaces, their addresses and processes, and what is missing."""
    lab = Lab(prefix)
    present = namespaces()
    lines = [f"lab {prefix!r}:"]
    for ns in lab.namespaces:
        if ns not in present:
            lines.append(f"  {ns}: absent")
            continue
        addresses = sorted(a for a in _addresses(ns) if not a.startswith("lo:127.") and a != "lo:::1")
        lines.append(f"  {ns}: {len(addresses)} addresses, processes {_pids(ns) or 'none'}")
        lines += [f"    {a}" for a in addresses]
    missing = problems(lab)
    lines.append("  complete" if not missing else "  incomplete: " + "; ".join(missing))
    return "\n".join(lines)


@contextlib.contextmanager
def running(prefix: str = DEFAULT_PREFIX) -> Iterator[Lab]:
    """``with running("egt-x-") as lab:`` brings the lab up and always takes it down again."""
    try:
        yield up(prefix)
    finally:
        down(prefix)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress.lab.netns", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            up(args.prefix)
        elif args.action == "down":
            down(args.prefix)
        print(status(args.prefix))
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
