"""What the addon does with each HTTP flow once its Host is judged: bodies, upgrades and WebSocket messages.

- every request and response body is read as the other side reads it (`egress.proxy.mitm.inspect`) and goes
  through the stream detectors, paired (request, then request and response) so HTTP-aware detectors see both;
  a body egress cannot read as the server would is blocked as ``tunnel``/``unidentified``; each body also joins
  the bodies before it on its client connection, per direction (`BodyStreams`: a message cut across keep-alive
  exchanges is seen whole);
- an ``Upgrade`` other than ``websocket`` (or one the sandbox's ``upgrades:`` allows) is refused before it is
  forwarded, and a ``101`` that would switch to anything else is killed before the client sees it (after a ``101``
  mitmproxy would relay the rest raw, uninspected; an allowed one is relayed through the detectors instead);
- every WebSocket message of the connection is inspected (`WebSocketInspection`), and every ping and pong
  payload (`control`, called by `egress.proxy.mitm.upgrades.InspectedWebsocketLayer`); a blocking finding drops
  the message and severs both sides (`Sever`: mitmproxy 12's ``flow.kill()`` does not close a live WebSocket).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Final

from mitmproxy import connection, http

from egress.decide import Enforcement, Reason, Verdict, decide_finding
from egress.detect import upgrade
from egress.detect.base import Category, Finding, FlowMeta, Transport, evidence
from egress.policy.model import Sandbox
from egress.proxy.gate import Gate
from egress.proxy.mitm.inspect import (
    BodyStreams,
    Message,
    Read,
    WebSocketInspection,
    inspect_exchange,
    read,
    unidentified,
)

Sever = Callable[[connection.Client], None]
"""Closes both sides of a client's connection at once (`egress.proxy.mitm.server` closes its transports)."""
Report = Callable[[http.HTTPFlow, Sandbox, Verdict], None]

_READ: Final = "egress-read"
_WEBSOCKET: Final = "egress-websocket"
_SEVERED: Final = "egress-severed"
_ANSWERED: Final = "egress-answered"
_RECORD: Final = "egress-record"
_JUDGED: Final = "egress-judged"
"""The request came whole to the ``request`` hook (judged there; forwarded unless blocked)."""
HTTP_PROTOCOL: Final = "http-protocol"
"""The rule label of a request mitmproxy refused before it was whole (`unforwarded_error`)."""
FRAMING_REFUSALS: Final = (
    "HTTP/1 protocol error",
    "HTTP/2 protocol error",
    "Invalid HTTP/2 request headers",
    "Received HTTP/2 data frame, expected",
)
"""How mitmproxy 12.3's HTTP layers word the end of a flow whose client broke the protocol (the error messages of
their ``ReceiveProtocolError``); its HTTP/1 head validation says ``Received ... from client, refusing to prevent
request smuggling attacks`` (`refused_by_framing`). Any other error is no refusal of the client's request: the
client reset the stream or went away, the server failed or closed, or egress killed it (recorded then)."""


def refused_by_framing(message: str) -> bool:
    """Whether mitmproxy ended a flow with ``message`` because its client broke HTTP's framing."""
    return message.startswith(FRAMING_REFUSALS) or (message.startswith("Received ") and " from client, " in message)


_UPGRADE: Final = "egress-upgrade"
"""The protocols a request allowed to upgrade asked for (set by `FlowHooks.requestheaders`)."""


def flow_meta(flow: http.HTTPFlow) -> FlowMeta:
    src = flow.client_conn.peername
    dst = flow.server_conn.address or (flow.request.host, flow.request.port)
    return FlowMeta(Transport.TCP, str(src[0]), int(src[1]), str(dst[0]), int(dst[1]))


def blocked_response(verdict: Verdict, echo: bool = True, record_id: str = "") -> http.Response:
    """The 403 that answers a blocked request (or replaces a blocked response). ``echo``: say the evidence too;
    never for a blocked response, whose evidence is the server's bytes (a job would reach the client inside the
    very answer that blocked it). ``record_id``: the record of the block (``GET /v1/attempts/{id}``), named in a
    line of its own and in ``X-Egress-Record``."""
    reason = verdict.reason.value if verdict.reason is not None else "blocked"
    line = f"egress blocked this request: {reason} ({verdict.rule})"
    if echo:
        line += f": {verdict.evidence}"
    headers = {"Content-Type": "text/plain; charset=utf-8", "X-Egress-Blocked": line[:400]}
    body = line + "\n"
    if record_id:
        headers["X-Egress-Record"] = record_id
        body += f"record: {record_id}\n"
    return http.Response.make(403, body, headers)


def note_record(flow: http.HTTPFlow, record_id: str) -> None:
    """Keep the id of the record of the flow's latest decision, for the 403 that may follow (`answer_blocked`)."""
    flow.metadata[_RECORD] = record_id


def answer_blocked(flow: http.HTTPFlow, verdict: Verdict) -> None:
    """Answer (or re-answer) the flow with egress's 403, naming the record of the decision just reported for it;
    the response hook then leaves that answer alone (a mark in the flow's metadata, never a header, which the
    server could send too)."""
    record_id = flow.metadata.get(_RECORD, "")
    flow.response = blocked_response(verdict, flow.response is None, record_id if isinstance(record_id, str) else "")
    flow.metadata[_ANSWERED] = True


def mark_judged(flow: http.HTTPFlow) -> None:
    """Note that the flow's request came whole to the ``request`` hook (see `unforwarded_error`)."""
    flow.metadata[_JUDGED] = True


def request_line(request: http.Request) -> str:
    """What a record says of a request: its method, authority (HTTP/2) or Host, path and version."""
    authority = request.authority or request.host_header or request.pretty_host
    return f"{request.method} {authority} {request.path} {request.http_version}"[:300]


def unforwarded_error(flow: http.HTTPFlow) -> Verdict | None:
    """The block to record for a flow mitmproxy ended on an error before its request was whole (an HTTP/2 stream
    whose DATA broke its Content-Length or came out of place, a protocol error that closed the connection with the
    stream open, an HTTP/1 body that does not parse): never judged by the detectors, never forwarded, refused by
    mitmproxy's framing (`FRAMING_REFUSALS`). None when it was judged (recorded then), answered, or ended for any
    other reason (a stream the client reset, a connection it closed, a server that failed: no refusal happened).
    Always a block, in report mode too: mitmproxy refused it whatever the mode."""
    if flow.metadata.get(_JUDGED) or flow.metadata.get(_ANSWERED) or flow.websocket is not None:
        return None
    message = flow.error.msg if flow.error is not None else ""
    if not refused_by_framing(message):
        return None
    return protocol_refusal(f"{request_line(flow.request)}: refused before it was whole, never forwarded: {message}")


def protocol_refusal(why: str) -> Verdict:
    """The block of a request (or an HTTP/2 connection) that mitmproxy's framing refused (always a block:
    ``tunnel``/``http-protocol-error``)."""
    finding = Finding(Category.TUNNEL, "http-protocol-error", "proxy", evidence(why))
    return Verdict(Enforcement.BLOCK, Reason.TUNNEL, HTTP_PROTOCOL, evidence(f"http-protocol-error: {why}"), finding)


def _fields(headers: http.Headers | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.fields)


def request_message(request: http.Request) -> Message:
    path = request.path
    return Message(
        f"{request.method} {path} HTTP/1.1",
        _fields(request.headers),
        request.raw_content or b"",
        _fields(request.trailers),
        path.partition("?")[2].encode("latin-1", "replace"),
    )


def response_message(response: http.Response) -> Message:
    return Message(
        f"HTTP/1.1 {response.status_code} {response.reason}",
        _fields(response.headers),
        response.raw_content or b"",
        _fields(response.trailers),
    )


def upgrade_refused(request: http.Request, allowed: tuple[str, ...] = ()) -> Finding | None:
    """A finding when the request asks to switch to a protocol that is neither a WebSocket (on a ``GET``) nor one
    the sandbox's ``upgrades:`` allows (`egress.detect.upgrade.refused`, the scanner's judgement too)."""
    return upgrade.refused(request.method, request.headers.get("upgrade"), allowed)


class FlowHooks:
    """The body, upgrade and WebSocket checks of one worker (see the module docstring)."""

    def __init__(self, gate: Gate, report: Report, sever: Sever) -> None:
        self.gate = gate
        self.report = report
        self.sever = sever
        self.bodies: weakref.WeakKeyDictionary[connection.Client, BodyStreams] = weakref.WeakKeyDictionary()
        """Each client connection's request and response bodies, joined per direction (`BodyStreams`)."""

    def _joined(self, flow: http.HTTPFlow, message: Read, from_client: bool) -> Finding | None:
        """``message``'s body and fields joined to those before it on the flow's client connection, in its
        direction (`BodyStreams.message`)."""
        streams = self.bodies.get(flow.client_conn)
        if streams is None:
            streams = self.bodies[flow.client_conn] = BodyStreams(flow_meta(flow), self.gate.stream)
        return streams.message(message, from_client)

    def _judge(self, flow: http.HTTPFlow, sandbox: Sandbox, finding: Finding | None) -> Verdict | None:
        """Report a finding's verdict; the verdict when it blocks."""
        if finding is None:
            return None
        verdict = decide_finding(sandbox, finding)
        self.report(flow, sandbox, verdict)
        return verdict if verdict.action is Enforcement.BLOCK else None

    def requestheaders(self, flow: http.HTTPFlow, sandbox: Sandbox) -> None:
        refused = upgrade_refused(flow.request, sandbox.upgrades)
        blocked = self._judge(flow, sandbox, refused)
        if blocked is not None:
            answer_blocked(flow, blocked)
        elif refused is None and "upgrade" in flow.request.headers:
            flow.metadata[_UPGRADE] = upgrade.tokens(flow.request.headers["upgrade"])

    @staticmethod
    def upgrade_allowed(flow: http.HTTPFlow) -> bool:
        """The flow's ``101`` switches to a protocol its request asked for and the policy allows (not a WebSocket,
        which mitmproxy parses)."""
        asked = flow.metadata.get(_UPGRADE)
        response = flow.response
        if not isinstance(asked, frozenset) or response is None or response.status_code != 101:
            return False
        switched = upgrade.tokens(response.headers.get("upgrade", ""))
        return bool(switched) and switched <= asked and "websocket" not in switched

    def request(self, flow: http.HTTPFlow, sandbox: Sandbox) -> None:
        request = read(request_message(flow.request))
        flow.metadata[_READ] = request
        finding = inspect_exchange(flow_meta(flow), self.gate.stream, request)
        if finding is None and request.problem is not None:
            finding = unidentified(f"request body: {request.problem.why}")
        if finding is None:
            finding = self._joined(flow, request, True)
        blocked = self._judge(flow, sandbox, finding)
        if blocked is not None:
            answer_blocked(flow, blocked)

    def response(self, flow: http.HTTPFlow, sandbox: Sandbox) -> None:
        response = flow.response
        if response is None or flow.metadata.get(_ANSWERED):
            return
        if response.status_code == 101 and flow.websocket is None and not self.upgrade_allowed(flow):
            # mitmproxy would relay the switched connection raw: only a WebSocket it parses, or a protocol the
            # policy allows (then relayed through the detectors, `egress.proxy.mitm.upgrades`), may follow a 101.
            refused = upgrade.switched(response.headers.get("upgrade", ""))
            if self._judge(flow, sandbox, refused) is not None:
                flow.kill()
            return
        request = flow.metadata.get(_READ)
        if not isinstance(request, Read):
            request = read(request_message(flow.request))
        answer = read(response_message(response))
        finding = inspect_exchange(flow_meta(flow), self.gate.stream, request, answer)
        if finding is None and answer.problem is not None:
            finding = unidentified(f"response body: {answer.problem.why}")
        if finding is None:
            finding = self._joined(flow, answer, False)
        blocked = self._judge(flow, sandbox, finding)
        if blocked is not None:
            answer_blocked(flow, blocked)

    def websocket_message(self, flow: http.HTTPFlow, sandbox: Sandbox) -> None:
        if flow.websocket is None or not flow.websocket.messages:
            return
        message = flow.websocket.messages[-1]
        if flow.metadata.get(_SEVERED):
            message.drop()
            return
        finding = self._websocket(flow).message(message.content, message.is_text, message.from_client)
        if self._judge(flow, sandbox, finding) is not None:
            self.cut(flow)

    def control(self, flow: http.HTTPFlow, sandbox: Sandbox, payload: bytes, from_client: bool) -> bool:
        """A ping or pong payload, judged like a message of the same direction (alone and in its rolling
        stream): True when it is blocked."""
        if flow.metadata.get(_SEVERED):
            return True
        if not payload:
            return False
        finding = self._websocket(flow).message(payload, True, from_client)
        if self._judge(flow, sandbox, finding) is None:
            return False
        flow.metadata[_SEVERED] = True
        return True

    def _websocket(self, flow: http.HTTPFlow) -> WebSocketInspection:
        inspection = flow.metadata.get(_WEBSOCKET)
        if not isinstance(inspection, WebSocketInspection):
            inspection = flow.metadata[_WEBSOCKET] = WebSocketInspection(flow_meta(flow), self.gate.stream)
        return inspection

    def cut(self, flow: http.HTTPFlow) -> None:
        """Stop a flow where it is: its current WebSocket message dropped and both sides closed, or its request
        or response replaced or killed."""
        if flow.websocket is not None and flow.websocket.messages:
            flow.metadata[_SEVERED] = True
            flow.websocket.messages[-1].drop()
        if flow.killable:
            flow.kill()
        self.sever(flow.client_conn)
