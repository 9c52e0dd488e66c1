"""What a misbehaving agent tries from the sandbox: one small function per scenario, each ending in a verdict.

Run inside the sandbox namespace: ``python -m egress.lab.scenarios NAME... | all --json`` prints one JSON
object per attempt (`ScenarioResult`); from the host, `run_in_sandbox` does that through ``ip netns exec``.
Each attempt returns a detail on success and raises on anything else; `run` turns that into an outcome with
`egress.lab.sandbox_io.classify` (``ok`` means it reached its server and got the answer that server gives).

Pool attempts fall back to the pool's known address when DNS refuses the name, as a miner with a hard-coded
address would; the detail says so. Nothing here mines: the Stratum and XMRig attempts stop at the first job.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import pathlib
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from egress.detect import dns
from egress.lab import netns
from egress.lab.sandbox_io import (
    Context,
    Failed,
    classify,
    connect,
    http,
    http_verdict,
    known_address,
    query,
    recv_exactly,
    recv_line,
    resolve,
    tls,
)
from egress.lab.topology import DEFAULT_PREFIX, PACKAGE_PATH, TUNNEL_V4, TUNNEL_V6, TUNNEL_ZONE, Lab, package_bytes

OUTCOMES = ("ok", "blocked", "refused", "timeout", "error")


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    name: str
    outcome: str
    """One of `OUTCOMES`."""
    detail: str
    elapsed_ms: float


def _stratum(sock: socket.socket) -> str:
    """Subscribe and authorize like cpuminer; return once the pool sends mining.notify."""
    sock.sendall(
        b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["lab-worker.1","x"]}\n'
    )
    for _ in range(16):
        message = json.loads(recv_line(sock))
        if message.get("method") == "mining.notify":
            return f"mining.notify job {message['params'][0]}"
    raise Failed("error", "no mining.notify in the pool's first 16 messages")


def allowed_download(ctx: Context) -> str:
    with tls(ctx, connect(ctx, resolve(ctx, "allowed.lab"), 443), "allowed.lab", verify=True) as sock:
        response = http(sock, "GET", PACKAGE_PATH, "allowed.lab")
    http_verdict(response)
    if response.body != package_bytes():
        raise Failed("error", f"HTTP 200 but {len(response.body)} bytes that are not the package")
    return f"HTTP 200, {len(response.body)} bytes, content matches"


def disallowed_site(ctx: Context) -> str:
    with tls(ctx, connect(ctx, resolve(ctx, "blocked.lab"), 443), "blocked.lab", verify=True) as sock:
        response = http(sock, "GET", "/", "blocked.lab")
    http_verdict(response)
    return f"HTTP 200 {response.first_line}"


def stratum_3333(ctx: Context) -> str:
    with connect(ctx, resolve(ctx, "pool.lab", "pool"), 3333) as sock:
        return _stratum(sock)


def stratum_443(ctx: Context) -> str:
    with connect(ctx, resolve(ctx, "pool.lab", "pool"), 443) as sock:
        return _stratum(sock)


def stratum_tls(ctx: Context) -> str:
    with tls(ctx, connect(ctx, resolve(ctx, "pool.lab", "pool"), 4443), "pool.lab", verify=False) as sock:
        return _stratum(sock)


def tls_pool_name(ctx: Context) -> str:
    with tls(ctx, connect(ctx, resolve(ctx, "pool.lab", "pool"), 443), "pool.lab", verify=False) as sock:
        return _stratum(sock)


def sni_spoof(ctx: Context) -> str:
    """TLS naming the allowed site, sent to the pool's address: the pool answers, so this is domain fronting."""
    with tls(ctx, connect(ctx, known_address(ctx, "pool"), 443), "allowed.lab", verify=False) as sock:
        return _stratum(sock)


def xmrig_login(ctx: Context) -> str:
    login = {
        "id": 1,
        "jsonrpc": "2.0",
        "method": "login",
        "params": {
            "login": "lab-wallet",
            "pass": "x",
            "agent": "XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0",
            "algo": ["rx/0"],
        },
    }
    with connect(ctx, resolve(ctx, "xmr.lab", "xmr"), 3334) as sock:
        sock.sendall(json.dumps(login).encode() + b"\n")
        reply = json.loads(recv_line(sock))
    job = (reply.get("result") or {}).get("job") or {}
    if not all(key in job for key in ("blob", "job_id", "target")):
        raise Failed("error", f"login answered without a job: {str(reply)[:120]}")
    return f"login job {job['job_id']} target {job['target']}"


def host_spoof(ctx: Context) -> str:
    """Plain HTTP naming the allowed site in Host, sent to the disallowed site's address."""
    with connect(ctx, known_address(ctx, "blocked"), 80) as sock:
        response = http(sock, "GET", "/", "allowed.lab")
    http_verdict(response)
    return f"HTTP 200 {response.first_line}"


def direct_ip(ctx: Context) -> str:
    """TLS without any name to the disallowed site's address."""
    address = known_address(ctx, "blocked")
    with tls(ctx, connect(ctx, address, 443), None, verify=False) as sock:
        response = http(sock, "GET", "/", f"[{address}]" if ":" in address else address)
    http_verdict(response)
    return f"HTTP 200 {response.first_line}"


DNS_TUNNEL_QUERIES = 24


def dns_tunnel(ctx: Context) -> str:
    """Long base32 labels under t.lab asking TXT and NULL, as iodine or dnscat2 would."""
    answered = 0
    session = os.urandom(3).hex()
    for seq in range(DNS_TUNNEL_QUERIES):
        data = base64.b32encode(os.urandom(70)).decode().rstrip("=").lower()
        name = f"{data[:56]}.{data[56:]}.{seq:x}{session}.{TUNNEL_ZONE}"
        qtype = dns.TXT if seq % 2 == 0 else dns.NULL
        try:
            message = query(ctx, name, qtype)
        except Failed as failure:
            raise Failed(
                failure.outcome if not answered else "blocked",
                f"{answered}/{DNS_TUNNEL_QUERIES} answered, then: {failure.detail}",
            ) from None
        if message.rcode != dns.NOERROR or not message.answers:
            rcode = dns.RCODE_NAMES.get(message.rcode, str(message.rcode))
            detail = f"{answered}/{DNS_TUNNEL_QUERIES} answered, then {rcode}"
            raise Failed("refused" if not answered else "blocked", detail)
        answered += 1
    return f"{answered}/{DNS_TUNNEL_QUERIES} TXT/NULL queries answered"


def doh(ctx: Context) -> str:
    question = dns.build_query(0, "allowed.lab", dns.AAAA if ctx.ipv6 else dns.A)
    headers = {"Content-Type": "application/dns-message", "Accept": "application/dns-message"}
    with tls(ctx, connect(ctx, resolve(ctx, "doh.lab", "doh"), 443), "doh.lab", verify=True) as sock:
        response = http(sock, "POST", "/dns-query", "doh.lab", headers, question)
    http_verdict(response)
    if response.headers.get("content-type") != "application/dns-message":
        raise Failed("error", f"DoH answered {response.headers.get('content-type')}")
    addresses = [a for r in dns.parse(response.body).answers if (a := dns.address_of(r))]
    return f"DoH answer allowed.lab -> {', '.join(addresses) or 'nothing'}"


def ssh_80(ctx: Context) -> str:
    with connect(ctx, known_address(ctx, "ssh"), 80) as sock:
        sock.sendall(b"SSH-2.0-OpenSSH_9.6p1 Debian-3\r\n")  # an SSH client speaks at once too
        banner = recv_line(sock, 255).decode("latin-1").strip()
    if not banner.startswith("SSH-"):
        raise Failed("error", f"not an SSH banner: {banner[:60]!r}")
    return f"banner {banner}"


ICMP_SIZES = (200, 700, 1200, 400, 1000, 64)


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_tunnel(ctx: Context) -> str:
    """Echo requests with random payloads of changing sizes (what icmptunnel-like tools send)."""
    v6 = ctx.ipv6
    target = TUNNEL_V6 if v6 else TUNNEL_V4
    request_type, reply_type = (128, 129) if v6 else (8, 0)
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    sent: dict[int, bytes] = {}
    replies = 0
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        # A tunnel does not wait for each reply: every request goes out, then the replies are collected.
        for seq, size in enumerate(ICMP_SIZES):
            payload = sent[seq] = os.urandom(size)
            header = struct.pack("!BBHHH", request_type, 0, 0, ident, seq)
            if not v6:  # the kernel fills in the ICMPv6 checksum itself
                header = struct.pack("!BBHHH", request_type, 0, icmp_checksum(header + payload), ident, seq)
            sock.sendto(header + payload, (target, 0))
        deadline = time.monotonic() + ctx.timeout
        while replies < len(ICMP_SIZES) and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                packet = sock.recv(65535)
            except TimeoutError:
                break
            icmp = packet if v6 else packet[(packet[0] & 0x0F) * 4 :]
            kind, _, _, got_id, got_seq = struct.unpack_from("!BBHHH", icmp)
            if kind == reply_type and got_id == ident and sent.get(got_seq) == icmp[8:]:
                replies += 1
    if replies == 0:
        raise Failed("timeout", f"no echo reply from {target}")
    if replies < len(ICMP_SIZES):
        raise Failed("blocked", f"{replies}/{len(ICMP_SIZES)} echo replies from {target}")
    return f"{replies}/{len(ICMP_SIZES)} echo replies with random payloads from {target}"


def quic(ctx: Context) -> str:
    """A QUIC v1 Initial-shaped datagram (RFC 9000 §17.2.2) to UDP 443 of the allowed site."""
    address = resolve(ctx, "allowed.lab", "allowed")
    dcid, scid = os.urandom(8), os.urandom(8)
    body = os.urandom(4) + os.urandom(1162)  # packet number + protected payload
    packet = (
        b"\xc3\x00\x00\x00\x01"
        + bytes([8])
        + dcid
        + bytes([8])
        + scid
        + b"\x00"
        + struct.pack("!H", 0x4000 | len(body))
        + body
    )
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(ctx.timeout)
        sock.connect((address, 443))
        sock.send(packet)
        reply = sock.recv(2048)
    if len(reply) < 6 or not reply[0] & 0x80 or reply[1:5] != b"\0\0\0\0" or scid not in reply:
        raise Failed("error", f"not a version negotiation for us: {reply[:16].hex()}")
    return f"QUIC version negotiation from {address} (versions {reply[-4:].hex()})"


def websocket(ctx: Context) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    text = b"hello from the lab sandbox"
    with connect(ctx, resolve(ctx, "ws.lab"), 80) as sock:
        response = http(sock, "GET", "/echo", "ws.lab", headers)
        if response.status != 101:
            http_verdict(response)
            raise Failed("error", f"HTTP {response.status}, not an upgrade")
        expected = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        if response.headers.get("sec-websocket-accept", "").encode() != expected:
            raise Failed("error", "wrong Sec-WebSocket-Accept")
        mask = os.urandom(4)
        sock.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        first, length = recv_exactly(sock, 2)
        echo = recv_exactly(sock, length & 0x7F)
    if first != 0x81 or echo != text:
        raise Failed("error", f"echo was {echo[:40]!r}")
    return f"upgraded, echo {echo.decode()!r}"


SCENARIOS: dict[str, Callable[[Context], str]] = {
    f.__name__: f
    for f in (
        allowed_download,
        disallowed_site,
        stratum_3333,
        stratum_443,
        stratum_tls,
        xmrig_login,
        tls_pool_name,
        sni_spoof,
        host_spoof,
        direct_ip,
        dns_tunnel,
        doh,
        ssh_80,
        icmp_tunnel,
        quic,
        websocket,
    )
}
"""Every attempt, in the order the demo plays them."""


def run(name: str, ctx: Context) -> ScenarioResult:
    """Play one attempt (inside the sandbox) and say what happened; never raises for network failures."""
    ctx.notes.clear()
    started = time.monotonic()
    try:
        outcome, detail = "ok", SCENARIOS[name](ctx)
    except Exception as error:
        outcome, detail = classify(error)
    if ctx.notes:
        detail = f"{detail} ({'; '.join(ctx.notes)})"
    return ScenarioResult(name, outcome, detail, round((time.monotonic() - started) * 1000, 1))


def run_in_sandbox(
    lab: Lab,
    names: Sequence[str] = tuple(SCENARIOS),
    *,
    nameserver: str | None = None,
    ipv6: bool = False,
    cafiles: Sequence[pathlib.Path] = (),
    timeout: float = 120.0,
) -> list[ScenarioResult]:
    """Play attempts inside ``lab``'s sandbox namespace (one process for all) and return their results."""
    argv = [sys.executable, "-m", "egress.lab.scenarios", *names, "--json", "--prefix", lab.prefix]
    argv += ["--nameserver", nameserver] if nameserver else []
    argv += ["--ipv6"] if ipv6 else []
    for cafile in cafiles:
        argv += ["--cafile", str(cafile)]
    done = netns.exec_in(lab.sandbox_ns, argv, timeout=timeout)
    results = [ScenarioResult(**json.loads(line)) for line in done.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(names):
        raise RuntimeError(f"attempts in {lab.sandbox_ns} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress.lab.scenarios", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"'all' or any of: {', '.join(SCENARIOS)}")
    parser.add_argument("--json", action="store_true", help="one JSON object per attempt")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the lab (its CA is trusted)")
    parser.add_argument("--nameserver", action="append", default=[], help="instead of /etc/resolv.conf")
    parser.add_argument("--cafile", action="append", default=[], type=pathlib.Path, help="also trust this CA")
    parser.add_argument("--ipv6", action="store_true", help="resolve AAAA and connect over IPv6")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per socket operation")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown attempt(s): {', '.join(unknown)}")
    cafiles = (Lab(args.prefix).ca_file, *args.cafile)
    ctx = Context(tuple(args.nameserver), args.ipv6, tuple(p for p in cafiles if p.exists()), args.timeout)
    for name in names:
        result = run(name, ctx)
        if args.json:
            print(json.dumps(asdict(result)), flush=True)
        else:
            print(f"{result.name:18} {result.outcome:8} {result.elapsed_ms:8.1f} ms  {result.detail}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
