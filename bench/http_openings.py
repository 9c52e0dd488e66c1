"""What red team 9's fixes refuse among capture files' plain HTTP: each TCP flow whose client opening starts like an
HTTP request (`egress.detect.http.looks_like_http_request`, or the gate's `_http_like`: another method or case,
an ``HTTP/`` version word) judged as the gate now judges it. Before the fixes none of these was refused at the
opening (an unreadable one was relayed raw to a rule expecting ``http``); now an opening the gate's reader does not
take is refused (`Gate._unread_http`), a first request whose Host names another port than the flow's is refused
(`egress.proxy.authority.port_differs`), and a target a lenient server reads as an authority (`//host/`) is
judged by the host it names. Every request line in the client stream is also looked at for the last two (the addon
judges every request). Prints each flow it would change and the totals.

    python bench/http_openings.py ../shared/corpus/benign ../shared/corpus-tunnels/benign
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.host_openings import scan_captures
from egress.detect import http
from egress.detect.base import MORE, FlowView, Result
from egress.proxy import authority
from egress.proxy.gate import HEAD_WAIT_LIMIT, _http_like

_LINE = re.compile(rb"(?:^|\r?\n)([A-Za-z]{3,12}) ([^ \r\n]+) HTTP/1\.[01]\r?\n((?:[^\r\n]+\r?\n)*?)\r?\n")


class Judge:
    """A detector that only looks: per TCP flow, its client opening (up to the gate's wait) and request lines."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        """(where, what the fixes do to it: ``ok``, ``refused``, ``port``, ``authority``)."""
        self.path = ""

    def __call__(self, view: FlowView) -> Result:
        data = view.client
        if not view.complete and len(data) < HEAD_WAIT_LIMIT:
            return MORE
        if not data or not (http.looks_like_http_request(data) or _http_like(data)):
            return None
        meta = view.meta
        where = f"{self.path} {meta.src}:{meta.sport} -> {meta.dst}:{meta.dport}"
        request = http.parse_request(data[:HEAD_WAIT_LIMIT])
        if not isinstance(request, http.HttpRequest):
            self.seen.append((where + f": {data[:60]!r}", "refused"))
            return None
        what = "ok"
        for match in _LINE.finditer(data):
            target, head = match[2].decode("latin-1"), match[3].decode("latin-1")
            hosts = [line.partition(":")[2] for line in head.splitlines() if line.lower().startswith("host:")]
            port = authority.split_host_port(hosts[0])[1] if hosts else ""
            if match[1] != b"CONNECT" and authority.port_differs(port, meta.dport):  # CONNECT: a proxy's, refused
                what = "port"
                where += f": Host {hosts[0].strip()}"
            elif authority.target_authorities(target):
                what = "authority"
                where += f": {target[:60]}"
        self.seen.append((where, what))
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    judge = Judge()
    files = scan_captures(judge, args.roots)
    totals = collections.Counter(what for _, what in judge.seen)
    for where, what in judge.seen:
        if what != "ok":
            print(f"{what}: {where}")
    print(f"{files} files, {len(judge.seen)} TCP flows opening like HTTP; before the fixes none refused")
    for key in ("ok", "refused", "port", "authority"):
        print(f"  {key}: {totals[key]}")


if __name__ == "__main__":
    main()
