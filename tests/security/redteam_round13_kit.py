"""Programs of test_redteam_round13: a pool call cut across an HTTP message's header (or trailer) fields, to the
attacker's site on allowed.lab, which joins them. Fake both ends: no mining software.

`site_main ADDRESS PLAIN_PORT TLS_PORT CHAIN KEY` (internet side, on allowed.lab's address) serves HTTP/1.1 on the
plain port and TLS on the other (ALPN ``h2`` or ``http/1.1``, the lab's allowed.lab certificate). For every request
it reads the fields as a site that joins them would (`readings`: each repeated name's values joined with ``", "``
and ``""``, the ``x-`` fields in order joined the same two ways, and, per connection, each name's values across its
requests joined, and all its ``x-`` fields' values; round 13b's: its ``x-`` fields sorted by name, its cookies'
values concatenated and percent-decoded (and kept across its requests), ``x-a`` base64-decoded), and when one
reading holds a pool call (JSON from its first ``{``, escapes decoded) it prints ``pool got METHOD via READING`` and
answers the call's result; anything else is answered ``hello``. ``GET /cookies`` answers `COOKIES` ``Set-Cookie``
fields (the control of long lists in a response).

`client_main PORT MODE VARIANT CAFILE` (sandbox) resolves allowed.lab through the gateway, opens one connection
(``plain``: HTTP/1.1 to PORT; ``tls``: HTTP/1.1 in TLS; ``h2``: HTTP/2 in TLS, trusting the gateway's CA), sends a
plain ``GET /`` first (its answer first, the control), then the variant's requests (`VARIANTS`), and prints
``answer STATUS BODY`` for each.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
import socket
import ssl
import sys
from urllib.parse import quote, unquote_plus

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.security.mitm_client import resolve

Fields = list[tuple[str, str]]
Request = tuple[Fields, Fields]
"""One request's header fields (beyond the method, path and host) and its trailer fields."""

STRATUM = '{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}'
XMRIG = '{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"wallet","pass":"x","agent":"XMRig/6.21.0"}}'
ETH = '{"id":1,"jsonrpc":"2.0","method":"eth_submitLogin","params":["0xwallet"]}'
ESCAPED = STRATUM.replace('"mining.', '"\\u006dining\\u002e')
"""The method name with two JSON escapes (what a JSON parser reads as ``mining.subscribe``)."""
POOL_METHODS = frozenset({"mining.subscribe", "login", "eth_submitLogin"})
COOKIES = 40
LONG_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36 " * 2


def cut(text: str, size: int) -> list[str]:
    return [text[at : at + size] for at in range(0, len(text), size)]


def _commas(text: str) -> list[str]:
    """``text`` cut before each comma outside a string, the comma dropped: joined with ``", "`` it is ``text``
    again (whitespace between JSON tokens is insignificant)."""
    pieces, start, quoted, depth = [], 0, False, 0
    for at, char in enumerate(text):
        if char == '"' and text[at - 1] != "\\":
            quoted = not quoted
        elif not quoted and char in "{[":
            depth += 1
        elif not quoted and char in "}]":
            depth -= 1
        elif not quoted and char == "," and depth == 1:
            pieces.append(text[start:at])
            start = at + 1
    return [*pieces, text[start:]]


def _named(name: str, values: list[str]) -> Fields:
    return [(name, value) for value in values]


def _numbered(values: list[str]) -> Fields:
    return [(f"x-{index:02d}", value) for index, value in enumerate(values, 1)]


def _escape_cut() -> list[str]:
    at = ESCAPED.index("\\u006d") + 4  # inside the escape: ``\u00`` | ``6d``
    return [*cut(ESCAPED[:at], 10), *cut(ESCAPED[at:], 10)]


def _padded() -> Fields:
    pieces = [f"{piece}{' ' * 3}" for piece in cut(STRATUM, 8)]
    return _named("x-a", [" " * 40 + pieces[0], *pieces[1:]])


def _innocent_between() -> Fields:
    numbered = _numbered(cut(STRATUM, 4))
    return [*numbered[:8], ("user-agent", LONG_AGENT), *numbered[8:]]


def _shuffled() -> Fields:
    """`_numbered` pieces sent in a shuffled order (a site that sorts its fields by name reads them in order)."""
    fields = _numbered(cut(STRATUM, 4))
    random.Random(13).shuffle(fields)
    return fields


def _cookies(values: list[str], crumbs: bool) -> Fields:
    pairs = [f"c{index:02d}={value}" for index, value in enumerate(values)]
    return [("cookie", pair) for pair in pairs] if crumbs else [("cookie", "; ".join(pairs))]


MANY_NAMES = 40
"""Names opening JSON on one connection before the call's pieces (`egress.proxy.mitm.inspect.FIELD_STREAMS` is 32)."""
PADDED = '{"id":1,"params":["' + "a" * 32 + '"],"method":"mining.subscribe"}'
"""A call whose 4-byte pieces repeat before its method (``aaaa`` seven times): the same request bytes, which the
front's memo knows."""


VARIANTS: dict[str, list[Request]] = {
    "repeated-name": [(_named("x-a", cut(STRATUM, 10)), [])],
    "repeated-name-at-commas": [(_named("x-a", _commas(STRATUM)), [])],
    "distinct-short-fields": [(_numbered(cut(STRATUM, 4)), [])],
    "cut-in-method-name": [(_named("x-a", [STRATUM[:28], STRATUM[28:]]), [])],
    "cut-in-escape": [(_named("x-a", _escape_cut()), [])],
    "padded-pieces": [(_padded(), [])],
    "trailers": [([("x-a", STRATUM[:12])], _named("x-a", cut(STRATUM[12:], 10)))],
    "innocent-between": [(_innocent_between(), [])],
    "xmrig-login": [(_named("x-a", cut(XMRIG, 12)), [])],
    "eth-submit-login": [(_named("x-a", cut(ETH, 12)), [])],
    "per-request-pieces": [(_named("x-a", [piece]), []) for piece in cut(STRATUM, 4)],
    "per-request-names": [([(f"x-{n:02d}", piece)], []) for n, piece in enumerate(cut(STRATUM, 4))],
    # round 13b: variants that try to slip past the joined reading
    "bypass-sorted-names": [(_shuffled(), [])],
    "bypass-cookie-values": [(_cookies(cut(STRATUM, 6), crumbs=False), [])],
    "bypass-cookie-crumbs": [(_cookies(cut(STRATUM, 6), crumbs=True), [])],
    "bypass-cookie-percent": [(_cookies(cut(quote(STRATUM, safe=""), 7), crumbs=False), [])],
    "bypass-cookie-per-request": [(_cookies([quote(piece, safe="")], crumbs=False), []) for piece in cut(STRATUM, 4)],
    "bypass-continuation": [([("x-pad", "p" * 17000), *_named("x-a", cut(STRATUM, 10))], [])],
    "bypass-base64": [(_named("x-a", cut(base64.b64encode(STRATUM.encode()).decode(), 10)), [])],
    "bypass-many-names-first": [
        *[([(f"x-n{n:02d}", f'{{"n":{n}}}')], []) for n in range(MANY_NAMES)],
        *[(_named("x-a", [piece]), []) for piece in cut(STRATUM, 4)],
    ],
    "bypass-memo-repeats": [(_named("x-a", [piece]), []) for piece in cut(PADDED, 4)],
    # controls: fields that repeat in ordinary traffic
    "benign-repeats": [
        (
            [
                *_named("cookie", [f"session{n}=abcdef{n}" for n in range(12)]),
                *_named("accept", ["text/html", "application/json;q=0.9", "*/*;q=0.8"]),
                *_named("via", [f"1.1 proxy{n}.example" for n in range(6)]),
                *_named("x-forwarded-for", ["203.0.113.7", "198.51.100.2, 192.0.2.44", "10.0.0.9"]),
                *_named("x-trace", ['{"span":1}', '{"span":2}', '["a","b"]']),
                ("user-agent", LONG_AGENT),
            ],
            [],
        )
    ],
    "benign-set-cookies": [],
}
"""Each variant's requests after the control ``GET /`` (``benign-set-cookies``: ``GET /cookies`` only)."""


# --- the site -------------------------------------------------------------------------------------------------


def readings(fields: Fields, before: dict[str, str]) -> dict[str, str]:
    """What a site that joins fields reads (see the module's docstring); ``before``: each name's values on the
    connection so far, joined (updated)."""
    found: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for name, value in fields:
        groups.setdefault(name.lower(), []).append(value.strip())
    own = [value.strip() for name, value in fields if name.lower().startswith("x-")]
    for joiner, label in ((", ", "comma"), ("", "concat")):
        for name, values in groups.items():
            found[f"{name}-{label}"] = joiner.join(values)
        found[f"own-{label}"] = joiner.join(own)
    found.update(_13b_readings(fields, groups))
    before[";cookie"] = before.get(";cookie", "") + found["cookie-values-decoded"]  # a session keeping them
    found["cookie-values-connection"] = before[";cookie"]
    for name, values in [*groups.items(), ("own", own)]:
        before[name] = before.get(name, "") + "".join(values)
        found[f"{name}-connection"] = before[name]
    return found


def _13b_readings(fields: Fields, groups: dict[str, list[str]]) -> dict[str, str]:
    """Round 13b's site: its own fields sorted by name (Go's ``Header``), its cookies' values concatenated (and
    percent-decoded, as PHP and Rack do), an ``x-a`` value base64-decoded after the join."""
    own = sorted((name.lower(), value.strip()) for name, value in fields if name.lower().startswith("x-"))
    cookies = "".join(pair.partition("=")[2].strip() for value in groups.get("cookie", []) for pair in value.split(";"))
    found = {"own-sorted": "".join(value for _, value in own), "cookie-values": cookies}
    found["cookie-values-decoded"] = unquote_plus(cookies)
    with contextlib.suppress(binascii.Error, ValueError):
        found["x-a-base64"] = base64.b64decode("".join(groups.get("x-a", []))).decode("latin-1")
    return found


def pool_call(text: str) -> dict[str, object] | None:
    at = text.find("{")
    with contextlib.suppress(ValueError):
        call, _ = json.JSONDecoder().raw_decode(text[at:]) if at >= 0 else (None, 0)
        if isinstance(call, dict) and call.get("method") in POOL_METHODS:
            return call
    return None


def answer(path: str, fields: Fields, before: dict[str, str]) -> tuple[int, Fields, bytes]:
    if path == "/cookies":
        return 200, [("set-cookie", f"c{n}=v{n}; Path=/; HttpOnly") for n in range(COOKIES)], b"cookies"
    for label, text in readings(fields, before).items():
        call = pool_call(text)
        if call is not None:
            print(f"pool got {call['method']} via {label}", flush=True)
            result = {"id": call.get("id"), "result": {"job": "job1", "extranonce1": "08000002"}, "error": None}
            return 200, [("content-type", "application/json")], json.dumps(result).encode()
    return 200, [("content-type", "text/plain")], b"hello"


async def _h1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    before: dict[str, str] = {}
    while head := await reader.readuntil(b"\r\n\r\n"):
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        fields = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:] if line)]
        kinds = {name.lower(): value.lower() for name, value in fields}
        if kinds.get("transfer-encoding") == "chunked":
            while size := int((await reader.readline()).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                fields.append((name.strip(), value.strip()))
        else:
            await reader.readexactly(int(kinds.get("content-length", "0")))
        status, extra, body = answer(path, fields, before)
        out = f"HTTP/1.1 {status} OK\r\nContent-Length: {len(body)}\r\n"
        writer.write((out + "".join(f"{n}: {v}\r\n" for n, v in extra) + "\r\n").encode() + body)
        await writer.drain()


async def _h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="latin-1"))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    before: dict[str, str] = {}
    streams: dict[int, Fields] = {}
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived | h2.events.TrailersReceived):
                streams.setdefault(event.stream_id, []).extend((str(n), str(v)) for n, v in event.headers)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if isinstance(event, h2.events.StreamEnded):
                fields = streams.pop(event.stream_id)
                path = dict(fields).get(":path", "/")
                status, extra, body = answer(path, [f for f in fields if not f[0].startswith(":")], before)
                conn.send_headers(event.stream_id, [(":status", str(status)), *extra])
                conn.send_data(event.stream_id, body, end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        tls = writer.get_extra_info("ssl_object")
        chosen = tls.selected_alpn_protocol() if tls is not None else None
        await (_h2 if chosen == "h2" else _h1)(reader, writer)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


async def _site(address: str, plain: int, tls: int, chain: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    servers = [
        await asyncio.start_server(_serve, address, plain),
        await asyncio.start_server(_serve, address, tls, ssl=context),
    ]
    print("listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def site_main() -> None:
    """``python -c '...site_main()' ADDRESS PLAIN_PORT TLS_PORT CHAIN KEY``"""
    address, plain, tls, chain, key = sys.argv[1:6]
    asyncio.run(_site(address, int(plain), int(tls), chain, key))


# --- the agent ------------------------------------------------------------------------------------------------


def _h1_request(path: str, request: Request) -> bytes:
    fields, trailers = request
    head = f"GET {path} HTTP/1.1\r\nHost: allowed.lab\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
    if not trailers:
        return (head + "\r\n").encode()
    body = "4\r\nping\r\n0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in trailers) + "\r\n"
    return (head.replace("GET ", "POST ", 1) + "Transfer-Encoding: chunked\r\n\r\n" + body).encode()


def _h1_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return f"closed {data[:60]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    size = int(lengths[0]) if lengths else 0
    while len(body) < size and (chunk := sock.recv(65536)):
        body += chunk
    cookies = head.lower().count(b"set-cookie:")
    return f"{head.split(b' ')[1].decode()} {body[:size]!r} set-cookies {cookies}"


def _h1_client(sock: socket.socket, requests: list[tuple[str, Request]]) -> None:
    for path, request in requests:
        sock.sendall(_h1_request(path, request))
        print(f"answer {_h1_response(sock)}", flush=True)


def _h2_client(sock: socket.socket, requests: list[tuple[str, Request]]) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    for number, (path, (fields, trailers)) in enumerate(requests):
        stream = 1 + 2 * number
        method = "POST" if trailers else "GET"
        base = [(":method", method), (":scheme", "https"), (":authority", "allowed.lab"), (":path", path)]
        conn.send_headers(stream, [*base, *fields], end_stream=not trailers)
        if trailers:
            conn.send_data(stream, b"ping")
            conn.send_headers(stream, trailers, end_stream=True)
        sock.sendall(conn.data_to_send())
        print(f"answer {_h2_response(conn, sock, stream)}", flush=True)


def _h2_response(conn: h2.connection.H2Connection, sock: socket.socket, stream: int) -> str:
    status, body, cookies = "?", b"", 0
    while True:
        data = sock.recv(65536)
        if not data:
            return f"closed {status} {body!r}"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                headers = [(_text(name), _text(value)) for name, value in event.headers or []]
                status = dict(headers).get(":status", "?")
                cookies = sum(1 for name, _ in headers if name == "set-cookie")
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) and event.stream_id == stream:
                sock.sendall(conn.data_to_send())
                return f"{status} {body!r} set-cookies {cookies}"
            elif isinstance(event, h2.events.ConnectionTerminated):
                return f"closed {status} {body!r}"
        sock.sendall(conn.data_to_send())


def _text(data: str | bytes) -> str:
    """A field's name or value as text (h2 gives text with ``header_encoding``; its types say bytes)."""
    return data.decode("latin-1") if isinstance(data, bytes) else data


def client_main() -> None:
    """``python -c '...client_main()' PORT MODE VARIANT CAFILE``"""
    port, mode, variant, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    address = resolve("allowed.lab")
    requests = [("/", ([], [])), *(("/api", request) for request in VARIANTS[variant])]
    if variant == "benign-set-cookies":
        requests.append(("/cookies", ([], [])))
    try:
        sock = socket.create_connection((address, port), timeout=10)
        if mode != "plain":
            context = ssl.create_default_context(cafile=cafile)
            context.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
            sock = context.wrap_socket(sock, server_hostname="allowed.lab")
        with sock:
            (_h2_client if mode == "h2" else _h1_client)(sock, requests)
    except (OSError, h2.exceptions.ProtocolError) as exc:
        print(f"client ended: {exc!r}", flush=True)
    print("done", flush=True)
