"""What the gateway resolver answers without an upstream answer: whether a query is one standard question for a
hostname (`problem_of`) and the rcode of one that is not, an answer with no records (`empty`), and a refusal that
tells an EDNS client why (`refusal`: an Extended DNS Error naming the reason, the rule and the record)."""

from __future__ import annotations

from egress.decide import Verdict
from egress.detect import dns
from egress.dnsserver import forward


def problem_of(message: dns.Message) -> str:
    """Why a query is not one standard question for a hostname (``""``: it is)."""
    if message.problem:
        return f"malformed ({message.problem})"
    if message.is_response:
        return "a response, not a query"
    if message.opcode != 0:
        return f"opcode {message.opcode}"
    if message.qdcount != 1:
        return f"{message.qdcount} questions"
    question = message.questions[0]
    if question.qclass != dns.IN:
        return f"class {question.qclass}"
    if question.hostname is None or not question.labels:
        return "not a hostname"
    return ""


def rcode_of(problem: str) -> int:
    """The rcode that answers a query with this `problem_of`."""
    if problem.startswith("opcode"):
        return dns.NOTIMP
    if problem.startswith(("malformed", "a response")) or problem.endswith("questions"):
        return dns.FORMERR
    return dns.REFUSED


def empty(query: dns.Message, rcode: int) -> bytes:
    """The resolver's answer without records: the questions that could be read echoed, recursion available."""
    return dns.build_response(query, rcode, recursion_available=True)


def refusal(query: dns.Message, verdict: Verdict, info_code: int, record_id: str = "") -> bytes:
    """REFUSED, with an Extended DNS Error naming the reason, the rule and the record (``GET /v1/attempts/{id}``)
    for a client that sent EDNS."""
    reason = verdict.reason.value if verdict.reason is not None else "refused"
    head, tail = f"egress: {reason} by ", f"; record {record_id}" if record_id else ""
    rule = verdict.rule.encode("utf-8")[: forward.EDE_TEXT_MAX - len(head) - len(tail)]  # cut the rule, not the id
    text = head + rule.decode("utf-8", "ignore") + tail
    return forward.refusal(query, dns.REFUSED, info_code, text)
