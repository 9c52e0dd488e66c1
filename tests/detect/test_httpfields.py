"""egress.detect.httpfields: the readings of a message's fields joined as a server joins them."""

from __future__ import annotations

from urllib.parse import quote

from egress.detect.httpfields import COOKIE_VALUES, JOINED_MIN, OWN, by_name, joined, opens

CALL = '{"id":1,"method":"mining.subscribe","params":[]}'


def test_a_repeated_name_is_joined_with_a_comma_and_without() -> None:
    fields = [("Host", "allowed.test"), ("X-A", '{"id":1'), ("x-a", '"method":"mining.subscribe"'), ("X-A", "}")]
    readings = joined(fields)
    assert b'{"id":1, "method":"mining.subscribe", }' in readings
    assert b'{"id":1"method":"mining.subscribe"}' in readings


def test_every_value_in_order_and_the_application_s_own_fields_alone() -> None:
    pieces = [CALL[at : at + 4] for at in range(0, len(CALL), 4)]
    fields = [(f"X-{n}", piece) for n, piece in enumerate(pieces)]
    fields.insert(6, ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) " * 3))
    readings = joined([("Host", "allowed.test"), *fields])
    assert CALL.encode() in readings  # the x- fields without Host and the User-Agent between them
    assert b"allowed.test" + b"".join(piece.encode() for piece in pieces[:6]) in b"".join(readings)


def test_nothing_short_or_single_is_given() -> None:
    assert joined([("Host", "allowed.test")]) == []
    assert joined([("A", "x"), ("B", "y")]) == []  # shorter than JOINED_MIN
    assert all(len(reading) >= JOINED_MIN for reading in joined([("A", "{2345678"), ("A", "12345678")]))
    assert joined([("Via", "1.1 proxy1.example"), ("Via", "1.1 proxy2.example")]) == []  # text: nothing to read


def test_a_reading_with_a_bracket_markup_or_binary_bytes_is_given() -> None:
    for opening in ("{", "[", "<", "\x81"):
        assert joined([("X-A", f"{opening}1234567"), ("X-A", "abcdefgh")]) != [], opening


def test_each_reading_is_given_once() -> None:
    readings = joined([("X-A", "{123456789"), ("X-A", "abcdefghij")])
    assert len(readings) == len(set(readings)) == 2  # the name's and every value's readings are the same


def test_by_name_concatenates_each_name_s_values_in_order() -> None:
    fields = [("Host", "h"), ("X-A", "ab"), ("Accept", "*/*"), ("x-a", "cd")]
    assert by_name(fields) == (
        ("host", b"h"), ("x-a", b"abcd"), ("accept", b"*/*"), (OWN, b"abcd"), (COOKIE_VALUES, b"")
    )  # fmt: skip
    cookies = [("Cookie", "a=%7B%22i; b=d"), ("Cookie", "c=%22")]
    assert by_name(cookies)[-1] == (COOKIE_VALUES, b'{"id"')


def test_opens_says_whether_any_value_could_open_a_reading() -> None:
    assert not opens([("Host", "allowed.test"), ("Accept", "*/*"), ("Via", "1.1 a, 1.1 b")])
    assert opens([("Host", "allowed.test"), ("X-A", '"x":{')])
    assert opens([("X-A", "caf\u00e9")])  # not ASCII: a binary encoding's bytes


def test_the_application_s_own_fields_sorted_by_name() -> None:
    """Round 13b: a site behind Go's net/http reads its fields sorted by name; they were sent shuffled."""
    pieces = [CALL[at : at + 4] for at in range(0, len(CALL), 4)]
    fields = [(f"X-{n:02d}", piece) for n, piece in enumerate(pieces)]
    shuffled = fields[1::2] + fields[::2]
    assert CALL.encode() in joined([("Host", "allowed.test"), *shuffled])


def test_cookie_values_concatenated_as_sent_and_percent_decoded() -> None:
    """Round 13b: a site concatenating its cookies' values (in one field, or HTTP/2's crumbs), PHP's and Rack's
    parsers percent-decoding them (an escape cut across two values is decoded after the join)."""
    pieces = [CALL[at : at + 6] for at in range(0, len(CALL), 6)]
    assert CALL.encode() in joined([("Cookie", "; ".join(f"c{n}={piece}" for n, piece in enumerate(pieces)))])
    assert CALL.encode() in joined([("Cookie", f"c{n}={piece}") for n, piece in enumerate(pieces)])
    encoded = quote(CALL, safe="")
    cut = [encoded[at : at + 7] for at in range(0, len(encoded), 7)]
    fields = [("Cookie", "; ".join(f"c{n}={piece}" for n, piece in enumerate(cut)))]
    assert opens(fields)
    assert CALL.encode() in joined(fields)
    assert CALL.encode() in joined([("Cookie", f"job={encoded}")])


def test_ordinary_cookies_give_no_reading() -> None:
    assert joined([("Cookie", "; ".join(f"session{n}=abcdef{n}" for n in range(12)))]) == []
    assert joined([("Cookie", "consent=%7B%22ads%22%3Afalse%7D; theme=dark")]) == [b'{"ads":false}dark']
