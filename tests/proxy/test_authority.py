"""The authorities an HTTP target names to lenient servers (egress.proxy.authority), against the readings of the
lab's forwarder (tests/security/redteam_authority_kit.py: WHATWG's, `urlsplit`'s, a server that decodes first)."""

from __future__ import annotations

import pytest

from egress.proxy.authority import (
    is_authority_target,
    normal_host,
    port_differs,
    split_host_port,
    stream_disagreement,
    target_authorities,
)
from tests.security.redteam_authority_kit import _elsewhere, destinations
from tests.security.redteam_h2authority_kit import h2_destinations

NAMED = {
    "//blocked.lab/": [("blocked.lab", "")],
    "/\\blocked.lab/": [("blocked.lab", "")],
    "\\\\blocked.lab/": [("blocked.lab", "")],
    "///blocked.lab/": [("blocked.lab", "")],
    "//allowed.lab@blocked.lab/": [("blocked.lab", "")],
    "//a\\@blocked.lab/": [("a", ""), ("blocked.lab", "")],
    "//3323070978/": [("198.18.10.2", "")],
    "//0xc6120a02/": [("198.18.10.2", "")],
    "//0306.022.012.02/": [("198.18.10.2", "")],
    "//[::ffff:198.18.10.2]/": [("198.18.10.2", "")],
    "//blocked%2elab/": [("blocked.lab", "")],
    "//BLOCKED.LAB./x": [("blocked.lab", "")],
    "//blocked.lab?x=1": [("blocked.lab", "")],
    "//allowed.lab:22/": [("allowed.lab", "22")],
    "/%2f%2fblocked.lab/": [("blocked.lab", "")],
    "/%2F%5Cblocked.lab/": [("blocked.lab", "")],
}


@pytest.mark.parametrize("target", list(NAMED))
def test_a_target_that_names_an_authority(target: str) -> None:
    assert is_authority_target(target)
    assert sorted(target_authorities(target)) == sorted(NAMED[target])


@pytest.mark.parametrize("target", list(NAMED))
def test_every_host_the_forwarder_reads_is_one_we_judge(target: str) -> None:
    judged = {host for host, _ in target_authorities(target)}
    read = {
        normal_host(f"[{host}]" if ":" in host else host)  # as an address is dialled: 3323070978 is 198.18.10.2
        for reading, host, _ in destinations("GET", target, ["allowed.lab"])
        if reading != "host-last"
    }
    assert read <= judged, (read, judged)


@pytest.mark.parametrize("target", ["/", "/a//b", "/x?next=//blocked.lab/", "/api/group%2Fproject", "*", "//", "//@/"])
def test_a_target_that_names_no_other_host(target: str) -> None:
    assert target_authorities(target) == []


@pytest.mark.parametrize(
    ("value", "split"),
    [
        ("a.test", ("a.test", "")),
        ("a.test:22", ("a.test", "22")),
        ("[::1]:8", ("[::1]", "8")),
        ("[::1]", ("[::1]", "")),
    ],
)
def test_split_host_port(value: str, split: tuple[str, str]) -> None:
    assert split_host_port(value) == split


@pytest.mark.parametrize(
    ("port", "differs"),
    [(None, False), ("", False), ("8080", False), ("08080", False), (8080, False), ("22", True), (22, True),
     ("x", True), ("８０８０", True)],
)  # fmt: skip
def test_port_differs(port: str | int | None, differs: bool) -> None:
    assert port_differs(port, 8080) is differs


def test_a_number_too_big_for_an_address_stays_a_name() -> None:
    assert normal_host("4294967296") == "4294967296" and normal_host("1.2.3.256") == "1.2.3.256"


DISAGREEING: dict[str, tuple[str, str, str, list[str]]] = {
    "path-absolute": ("GET", "allowed.lab", "http://blocked.lab/", []),
    "path-absolute-upper": ("GET", "allowed.lab", "HTTPS://BLOCKED.LAB./", []),
    "path-absolute-same-host": ("GET", "allowed.lab", "https://allowed.lab/", []),
    "path-scheme-no-slashes": ("GET", "allowed.lab", "https:blocked.lab/", []),
    "path-no-slash": ("GET", "allowed.lab", "blocked.lab/", []),
    "path-backslashes": ("GET", "allowed.lab", "\\\\blocked.lab\\", []),
    "path-empty": ("GET", "allowed.lab", "", []),
    "path-star-not-options": ("GET", "allowed.lab", "*", []),
    "connect": ("CONNECT", "blocked.lab:443", "", []),
    "authority-userinfo": ("GET", "allowed.lab@blocked.lab", "/", []),
    "authority-userinfo-reverse": ("GET", "blocked.lab@allowed.lab", "/", []),
    "host-blocked": ("GET", "allowed.lab", "/", ["blocked.lab"]),
    "host-allowed-authority-blocked": ("GET", "blocked.lab", "/", ["allowed.lab"]),
    "two-hosts-blocked-first": ("GET", "allowed.lab", "/", ["blocked.lab", "allowed.lab"]),
    "two-hosts-same": ("GET", "allowed.lab", "/", ["allowed.lab", "allowed.lab"]),
    "two-hosts-no-authority": ("GET", "", "/", ["blocked.lab", "allowed.lab"]),
    "host-other-port": ("GET", "allowed.lab", "/", ["allowed.lab:22"]),
    "authority-other-port": ("GET", "allowed.lab:22", "/", ["allowed.lab"]),
}
"""HTTP/2 streams whose fields may name two destinations (red team 10a): each is refused."""


@pytest.mark.parametrize("name", list(DISAGREEING))
def test_an_http2_stream_whose_fields_name_more_than_one_destination(name: str) -> None:
    assert stream_disagreement(*DISAGREEING[name]) is not None


AGREEING: dict[str, tuple[str, str, str, list[str]]] = {
    "authority-only": ("GET", "allowed.lab", "/a?b=//c", []),
    "host-only": ("GET", "", "/", ["allowed.lab"]),
    "same-host": ("GET", "allowed.lab", "/", ["allowed.lab"]),
    "same-host-case-dot": ("GET", "allowed.lab", "/", ["ALLOWED.LAB."]),
    "same-port": ("POST", "allowed.lab:8443", "/", ["allowed.lab:8443"]),
    "options-star": ("OPTIONS", "allowed.lab", "*", []),
}


@pytest.mark.parametrize("name", list(AGREEING))
def test_an_http2_stream_whose_fields_agree_passes(name: str) -> None:
    assert stream_disagreement(*AGREEING[name]) is None


@pytest.mark.parametrize("name", list(DISAGREEING) + list(AGREEING))
def test_every_stream_the_h2_forwarder_reads_elsewhere_is_refused(name: str) -> None:
    """The lab's HTTP/2 forwarder (tests/security/redteam_h2authority_kit.py) goes elsewhere only for a stream
    `stream_disagreement` refuses, or one whose `:authority` (the name the gateway judges) is elsewhere itself."""
    method, authority, path, hosts = DISAGREEING.get(name) or AGREEING[name]
    fields = [(":method", method), (":path", path)] + ([(":authority", authority)] if authority else [])
    fields += [("host", host) for host in hosts]
    judged = split_host_port(authority or hosts[0])
    elsewhere = [read for read in h2_destinations(fields) if _elsewhere(read[1], read[2], 8443)]
    if elsewhere and stream_disagreement(method, authority, path, hosts) is None:
        assert all((host, str(port or "")) == (normal_host(judged[0]), judged[1]) for _, host, port in elsewhere)
