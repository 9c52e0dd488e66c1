"""The protocol fakes' replies, without sockets: Stratum v1, XMRig login, QUIC version negotiation."""

from __future__ import annotations

import os

from egress.lab import pools


def test_stratum_subscribe_then_authorize_pushes_a_job() -> None:
    subscribe = pools._stratum_reply({"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]})
    assert subscribe[0]["id"] == 1 and subscribe[0]["result"][1] == pools.EXTRANONCE1
    authorize = pools._stratum_reply({"id": 2, "method": "mining.authorize", "params": ["w", "x"]})
    assert [m.get("method") for m in authorize] == [None, "mining.set_difficulty", "mining.notify"]
    assert authorize[0]["result"] is True
    assert len(authorize[2]["params"]) == 9  # job_id prevhash coinb1 coinb2 branches version nbits ntime clean


def test_stratum_unknown_method_is_an_error() -> None:
    (reply,) = pools._stratum_reply({"id": 5, "method": "mining.nonsense"})
    assert reply["error"][0] == 20 and reply["result"] is None


def test_xmrig_login_gives_a_job() -> None:
    reply = pools._xmrig_reply({"id": 1, "jsonrpc": "2.0", "method": "login", "params": {"login": "w"}})
    job = reply["result"]["job"]
    assert {"blob", "job_id", "target"} <= set(job) and reply["error"] is None
    assert bytes.fromhex(job["blob"]) and len(job["target"]) == 8
    assert pools._xmrig_reply({"id": 2, "method": "keepalived"})["result"]["status"] == "KEEPALIVED"
    assert "error" in pools._xmrig_reply({"id": 3, "method": "other"})


def test_quic_version_negotiation_swaps_connection_ids() -> None:
    dcid, scid = os.urandom(8), os.urandom(5)
    initial = b"\xc3\x00\x00\x00\x01" + bytes([8]) + dcid + bytes([5]) + scid + b"\x00" * 1180
    reply = pools.version_negotiation(initial)
    assert reply is not None
    assert reply[0] & 0x80 and reply[1:5] == b"\0\0\0\0"
    assert reply[5] == 5 and reply[6:11] == scid and reply[11] == 8 and reply[12:20] == dcid
    assert reply[20:] == b"\x00\x00\x00\x01"


def test_quic_ignores_short_headers_and_junk() -> None:
    assert pools.version_negotiation(b"\x40" + os.urandom(30)) is None
    assert pools.version_negotiation(b"\xc3\x00\x00\x00\x01\x30") is None
    assert pools.version_negotiation(b"") is None
