"""Each dependency enters through one module (STYLE.md rule 4), and data flows one way (rule 1): no import cycle
between egress's packages, and the pure stages (detect, decide, correlate) do no I/O."""

from __future__ import annotations

import ast
import functools
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterable

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "egress"

# library -> the modules allowed to import it (a folder ending in "/" allows every module below it)
GATES = {
    "dpkt": {"egress/capture/reader.py"},
    # one package, one concern per module (layers, addon, server, ca), as mitmproxy's own tree is cut
    "mitmproxy": {"egress/proxy/mitm/"},
    "redis": {"egress/record/redis_facade.py"},
    "yaml": {"egress/policy/yamlnodes.py"},
    # HTTP content codings mitmproxy also decodes (br, zstd): one bounded decoder shared by the proxy and the scanner
    "brotli": {"egress/detect/codings.py"},
    "backports": {"egress/detect/codings.py", "egress/capture/opener.py"},  # and zstd-compressed captures
    # running programs: nft, the proxy workers, and the lab's namespaces and servers
    "subprocess": {"egress/nft/runner.py", "egress/gateway/supervisor.py", "egress/gateway/workers.py", "egress/lab/"},
    # network I/O: the gateway's components, and the lab; the scanner only formats addresses with inet_ntop
    "socket": {
        "egress/capture/nflog.py",
        "egress/capture/nfqueue.py",  # the UDP gate's queue (NFQUEUE over netfilter netlink)
        "egress/nft/xtqueue.py",  # the queue rule nft cannot write (nf_tables over netfilter netlink)
        "egress/dnsserver/listen.py",
        "egress/gateway/supervisor.py",
        "egress/proxy/front.py",
        "egress/proxy/connect.py",  # the front's dial in callbacks
        "egress/proxy/httpfast.py",  # the front's plain-HTTP relay, and its socket waiting
        "egress/proxy/httpio.py",
        "egress/proxy/httpupstream.py",  # the fast path's server side
        "egress/proxy/splice.py",  # the front's TLS relay on its two sockets
        "egress/proxy/lastlook.py",  # the front's peek at a client that reset before it was served
        "egress/proxy/firstlook.py",  # the front's peek at first bytes it refuses before a handoff
        "egress/proxy/peeked.py",  # the front's peek at a connection's first bytes (firstlook and lastlook read it)
        "egress/gateway/hostprobe.py",
        "egress/gateway/sdnotify.py",
        "egress/proxy/mitm/server.py",
        "egress/proxy/mitm/linger.py",  # mitmproxy's server connections' SO_LINGER
        "egress/gateway/control.py",
        "egress/gateway/components.py",
        "egress/gateway/qtap.py",
        "egress/gateway/quarantine.py",
        "egress/scanner.py",
        "egress/api/server.py",  # the API's listening socket for several workers (TCP_NODELAY)
        "egress/lab/",
    },
}

PURE = ("egress/detect/", "egress/decide.py", "egress/correlate.py")
"""Bytes and metadata in, verdicts out: none of the gated libraries, no files read by name."""
CODECS = {"brotli": "egress/detect/codings.py", "backports": "egress/detect/codings.py"}
"""Gated libraries that are pure codecs (bytes in, bytes out), each allowed in the one pure module that is its gate."""


@functools.cache  # each module is read by several tests and by the package graph: parsed once per process
def _imports(path: pathlib.Path) -> frozenset[str]:
    """Every module ``path`` imports, at any depth (function-local imports count), as absolute names."""
    names: set[str] = set()
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(names)


MODULES = sorted(PACKAGE.rglob("*.py"))


def _relative(path: pathlib.Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def _allowed(relative: str, allowed: Iterable[str]) -> bool:
    return any(relative == rule or (rule.endswith("/") and relative.startswith(rule)) for rule in allowed)


def _uses(names: frozenset[str], library: str) -> bool:
    return any(name == library or name.startswith(library + ".") for name in names)


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_dependencies_enter_through_their_gate(path: pathlib.Path) -> None:
    relative = _relative(path)
    names = _imports(path)
    for library, allowed in GATES.items():
        assert not _uses(names, library) or _allowed(relative, allowed), (
            f"{relative} imports {library}; only {sorted(allowed)} may"
        )


@pytest.mark.parametrize("path", [p for p in MODULES if _allowed(_relative(p), PURE)], ids=_relative)
def test_the_pure_stages_do_no_io(path: pathlib.Path) -> None:
    names = _imports(path)
    for library in (*GATES, "os", "pathlib", "io", "logging", "threading", "asyncio"):
        if CODECS.get(library) == _relative(path):
            continue
        assert not _uses(names, library), f"{_relative(path)} imports {library}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "detect").glob("*.py")), ids=lambda p: p.name)
def test_detectors_import_only_detectors(path: pathlib.Path) -> None:
    """Name lists and limits reach detect as data; detect knows nothing later in the flow (policy, decide, ...)."""
    for name in _imports(path):
        if name == "egress" or name.startswith("egress."):
            assert name.startswith("egress.detect"), f"{path.name} imports {name}"


def _unit(module: str) -> str:
    """The node of the package graph a module belongs to: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    units = {_unit(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in MODULES}
    for path in MODULES:
        source = _unit(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        edges = graph.setdefault(source, set())
        for name in _imports(path):
            if name.startswith("egress."):
                target = _unit(name)
                if target in units and target != source:
                    edges.add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_package_imports_itself_through_another() -> None:
    assert cycles(package_graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_resolves_relative_and_local_imports(tmp_path: pathlib.Path) -> None:
    module = PACKAGE / "detect" / "base.py"
    assert any(name.startswith("egress.detect") or name == "enum" for name in _imports(module))
    assert _unit("egress.proxy.gate") == "egress.proxy" and _unit("egress.decide") == "egress.decide"


def test_the_command_line_does_not_import_mitmproxy() -> None:
    """Every `egress` command imports `egress.cli` (and through it the gateway's settings): `egress scan` must not
    pay mitmproxy's import (about 15 MB of peak RSS and a tenth of a second; a settings default once pulled it in)."""
    program = "import sys, egress.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mitmproxy'))"
    loaded = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_scan_of_a_classic_pcap_imports_nothing_of_the_gateway_nor_dpkt() -> None:
    """`egress scan` pays only for what a scan runs: the gateway's commands and settings (`egress.cli_gateway`,
    `egress.cli_wiring`, `egress.gateway`, the nftables renderer, the records' store) and dpkt (read for pcapng
    headers only) are imported lazily; together about 400 M instructions of start-up, 1.7 % of a 110 MB scan. So
    are the ``email`` package (multipart bodies only) and ``multiprocessing`` (``--jobs`` above 1): 65 M more;
    `importlib.resources` is not needed to find the shipped lists (`egress.shipped`): 25 M."""
    capture = PACKAGE.parent / "pcaps" / "stratum_3333.pcap"
    program = (
        "import sys\nfrom egress.cli import main\nsys.argv = ['egress', 'scan', '--json', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dpkt', 'msgspec', 'redis', 'mitmproxy',\n"
        "    'email', 'multiprocessing')\n"
        "    or m.split('.')[:2] in (['egress', 'gateway'], ['egress', 'nft'], ['egress', 'record'])\n"
        "    or m in ('egress.cli_gateway', 'egress.cli_wiring', 'egress.cli_rules', 'importlib.resources')),\n"
        "    file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", program, str(capture)], capture_output=True, text=True, check=True)
    assert '"mining"' in done.stdout  # the scan ran
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_a_scan_with_its_name_lists_cached_does_not_compose_yaml(tmp_path: pathlib.Path) -> None:
    """The second `egress scan` reads the lists the first kept (`egress.policy.listcache`): neither PyYAML nor the
    lists' loader is imported (with both, about 500 M instructions of a one-flow scan's 1,170 M)."""
    capture = PACKAGE.parent / "pcaps" / "stratum_3333.pcap"
    program = (
        "import sys\nfrom egress.cli import main\nsys.argv = ['egress', 'scan', '--json', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'yaml'\n"
        "    or m in ('egress.policy.lists', 'egress.policy.yamlnodes')), file=sys.stderr)\n"
    )
    environment = {**os.environ, "EGRESS_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        subprocess.run([sys.executable, "-c", program, str(capture)], capture_output=True, text=True, check=True,
                       env=environment)
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0].stdout == runs[1].stdout and '"mining"' in runs[1].stdout
    assert "'yaml'" in runs[0].stderr.strip().splitlines()[-1]  # the first composed the files
    assert runs[1].stderr.strip().splitlines()[-1] == "[]"
