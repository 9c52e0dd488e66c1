"""The authorities an HTTP target names to lenient servers (egress.proxy.authority), against the readings of the
lab's forwarder (tests/security/redteam_authority_kit.py: WHATWG's, `urlsplit`'s, a server that decodes first)."""

from __future__ import annotations

import pytest

from egress.proxy.authority import is_authority_target, normal_host, port_differs, split_host_port, target_authorities
from tests.security.redteam_authority_kit import destinations

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
