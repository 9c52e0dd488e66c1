"""The lab's DNS codec: queries and answers round-trip; hostile compression cannot loop."""

from __future__ import annotations

import pytest

from egress.lab import dnswire
from egress.lab.dnswire import Record


def test_query_round_trip() -> None:
    message = dnswire.parse(dnswire.build_query(0x1234, "Allowed.LAB.", dnswire.AAAA))
    assert message.id == 0x1234 and not message.is_response
    assert message.questions == (("allowed.lab", dnswire.AAAA),)
    assert message.flags & 0x0100  # recursion desired


def test_response_round_trip() -> None:
    query = dnswire.parse(dnswire.build_query(7, "a.lab", dnswire.A))
    answer = Record("a.lab", dnswire.A, 60, bytes([198, 18, 10, 1]))
    message = dnswire.parse(dnswire.build_response(query, dnswire.NOERROR, (answer,)))
    assert message.is_response and message.rcode == dnswire.NOERROR and message.id == 7
    assert message.answers == (answer,)
    assert dnswire.address_of(message.answers[0]) == "198.18.10.1"
    assert message.flags & 0x0400  # authoritative


def test_compressed_names_are_followed() -> None:
    query = dnswire.build_query(1, "x.lab", dnswire.A)
    # answer name = pointer to the question name at offset 12
    data = bytearray(query)
    data[2:4] = b"\x81\x80"
    data[6:8] = b"\x00\x01"
    data += b"\xc0\x0c" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 0, 0, 1])
    message = dnswire.parse(bytes(data))
    assert message.answers[0].name == "x.lab"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 11,
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c",  # points at itself
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x05ab",  # label runs past the end
        b"\x00\x01\x81\x00\x00\x00\x00\x01\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x09ab",
    ],
)
def test_broken_messages_raise_dns_error(data: bytes) -> None:
    with pytest.raises(dnswire.DnsError):
        dnswire.parse(data)


@pytest.mark.parametrize("name", ["a" * 64 + ".lab", ".".join(["a" * 60] * 5), "a..lab"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        dnswire.encode_name(name)


def test_txt_and_tcp_framing() -> None:
    assert dnswire.txt_data([b"ab", b""]) == b"\x02ab\x00"
    assert dnswire.tcp_frame(b"abc") == b"\x00\x03abc"
