"""Tests for documents inside string values (red team 6): a pool's call as a JSON string's value (a message encoded
twice, three times, as a queue's or a webhook's envelope holds it), an XML-RPC call as a JSON string (Go's
``\\u003c`` escaping: no ``<`` in the bytes) and as an XML element's escaped text or attribute value; each read by
`egress.detect.jsonrpc.wrap` and `egress.detect.xmlscan.items` at every split, alone and in HTTP bodies."""

from __future__ import annotations

import json
from xml.sax.saxutils import escape, quoteattr
from xmlrpc import client as rpc

import pytest

from egress.detect import jsonrpc, stratum, xmlrpc, xmlscan
from egress.detect.base import Detector, Finding
from egress.detect.registry import MINING
from tests.detect.feeding import feed_every_split, feed_stream

CALL = {"id": 3, "method": "mining.submit", "params": ["wallet.w", "job1", "00000001", "5f5e1000", "deadbeef"]}
XML_CALL = rpc.dumps(("wallet.w", "job1", "00000001", "5f5e1000", "deadbeef"), "mining.submit")


def _go(text: str) -> str:
    """Go's ``json.Marshal``: ``<``, ``>`` and ``&`` as ``\\u003c``, ``\\u003e``, ``\\u0026``."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _post(body: bytes, kind: bytes = b"application/json") -> bytes:
    return b"POST /q HTTP/1.1\r\nHost: queue\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        kind,
        len(body),
        body,
    )


TWICE = json.dumps({"payload": json.dumps(CALL)}).encode()
THRICE = json.dumps({"envelope": json.dumps({"payload": json.dumps(CALL)})}).encode()
QUOTE_ESCAPED = TWICE.replace(b'\\"', b"\\u0022").replace(b'"{', b'"\\u007b')
JSON_SHAPES = {
    "json-string": TWICE + b"\n",
    "json-string-http": _post(TWICE),
    "json-in-array": json.dumps({"messages": [json.dumps(CALL)]}).encode() + b"\n",
    "three-levels": _post(THRICE),
    "quote-and-brace-as-u-escapes": _post(QUOTE_ESCAPED),
    "cut-across-keepalive-bodies": _post(TWICE[:40]) + _post(TWICE[40:]),
}
XML_SHAPES = {
    "xmlrpc-as-go-json-string": _post(_go(json.dumps({"xmlrpc": XML_CALL})).encode()),
    "xmlrpc-as-json-string": json.dumps({"xmlrpc": XML_CALL}).encode() + b"\n",
    "xmlrpc-as-xml-text": _post(f"<rpc><payload>{escape(XML_CALL)}</payload></rpc>".encode(), b"text/xml"),
    "xmlrpc-as-xml-cdata": _post(f"<rpc><payload><![CDATA[{XML_CALL}]]></payload></rpc>".encode(), b"text/xml"),
    "xmlrpc-as-xml-attribute": _post(f"<rpc payload={quoteattr(XML_CALL)}/>".encode(), b"text/xml"),
    "xmlrpc-as-json-in-xml-text": _post(
        f"<rpc><payload>{escape(json.dumps({'xmlrpc': XML_CALL}))}</payload></rpc>".encode(), b"text/xml"
    ),
}


def _mining(found: Finding | None) -> bool:
    return found is not None and found.category.value == "mining"


def _any(data: bytes) -> Finding | None:
    for detector in MINING:
        if _mining(found := feed_stream(detector, data)):
            return found
    return None


@pytest.mark.parametrize("shape", sorted(JSON_SHAPES))
def test_a_json_call_inside_a_string_is_mining(shape: str) -> None:
    assert _mining(_any(JSON_SHAPES[shape])), shape


@pytest.mark.parametrize("shape", sorted(XML_SHAPES))
def test_an_xmlrpc_call_inside_a_string_is_mining(shape: str) -> None:
    assert _mining(feed_stream(xmlrpc.detect, XML_SHAPES[shape])), shape


@pytest.mark.parametrize(
    ("detector", "data"),
    [(stratum.detect, JSON_SHAPES["json-string-http"]), (xmlrpc.detect, XML_SHAPES["xmlrpc-as-go-json-string"])],
)
def test_every_split_reads_the_same(detector: Detector, data: bytes) -> None:
    assert all(_mining(found) for found in feed_every_split(detector, data))


@pytest.mark.parametrize(
    "document",
    [
        f"<rpc><payload>{escape(json.dumps(CALL))}</payload></rpc>",
        f"<rpc payload={quoteattr(json.dumps(CALL))}/>",
        f'<rpc payload="{escape(json.dumps(CALL), {chr(34): "&quot;"})}"/>',
    ],
)
def test_xmlscan_reads_json_in_text_and_attributes(document: str) -> None:
    """A JSON call as an element's text or attribute value is read for its methods (the XML detector judges them
    once the direction shows XML-RPC or SOAP markup: a bare ``<rpc>`` wrapper is left to the gateway's readers)."""
    assert ("method", "mining.submit") in {(item.kind, item.name) for item in xmlscan.items(document.encode())}


def test_strings_that_are_not_documents_are_not_read_again() -> None:
    text = json.dumps({"note": "{not json} mining.submit", "html": "<b>mining.submit</b>", "n": 1}).encode() + b"\n"
    assert jsonrpc.payload(text).calls == ()
    assert _any(_post(text)) is None


def test_a_text_without_string_documents_is_returned_as_is() -> None:
    text = b'{"id": 1, "method": "eth_blockNumber", "params": []}\n'
    assert jsonrpc.wrap(text) == (text, ())


def test_depth_is_bounded() -> None:
    text = json.dumps(CALL)
    for _ in range(jsonrpc.WRAP_DEPTH + 1):
        text = json.dumps({"p": text})
    assert "mining.submit" not in str(jsonrpc.payload(text.encode() + b"\n").calls)


LONG = _post(b'{"note": "it\'s <b>long</b>", "a": "x"}' * 40 + TWICE) + _post(THRICE) + _post(QUOTE_ESCAPED)


@pytest.mark.parametrize("shape", ["long", *sorted(JSON_SHAPES), *sorted(XML_SHAPES)])
@pytest.mark.parametrize("step", [1, 7, 64])
def test_a_reading_grown_step_by_step_reads_as_at_once(shape: str, step: int) -> None:
    """`jsonrpc.Reading` settles the wrapped strings of a stable text (`jsonscan.read_wrapped`): each prefix reads
    the same grown as read whole."""
    data = LONG if shape == "long" else {**JSON_SHAPES, **XML_SHAPES}[shape]
    reading = jsonrpc.Reading()
    for end in [*range(step, len(data), step), len(data)]:
        grown, whole = reading.read(data[:end], False), jsonrpc.payload(data[:end])
        assert (grown.text, grown.calls, grown.markup) == (whole.text, whole.calls, whole.markup), end
