"""Attempt records in the forms other tools read: Suricata's eve.json alerts and Zeek logs (tab-separated with
their header, or Zeek's JSON). Pure: a record in, a line out; ``egress export`` (egress/cli_query.py) streams them.

eve.json: Suricata's documented alert event (docs.suricata.io, "Eve JSON Format"; the field names and types of
its etc/schema.json), with egress's own details in one extra ``egress`` object. The alert's ``action`` is
``blocked`` when egress blocked, ``allowed`` when the traffic passed (would-block, record), as Suricata says of an
alert in IDS mode. Zeek: a log of path ``egress`` shaped like notice.log (``id.orig_h`` ... ``proto``, ``note``,
``msg``, ``sub``) plus the Community ID column that Zeek's community-id package adds to conn.log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

from egress.record import derived
from egress.record.schema import AttemptRecord

FORMATS: Final = ("eve", "zeek", "zeek-json")
EVE_SEVERITY: Final = {"high": 1, "medium": 2, "low": 3}
"""eve.json's alert severity: 1 is the most severe."""
EVE_CATEGORY: Final = {
    "mining": "Crypto Currency Mining Activity Detected",
    "crypto-node": "Crypto Currency Mining Activity Detected",
    "tunnel": "Potentially Bad Traffic",
    "policy": "Potential Corporate Privacy Violation",
}
"""The alert category: the description of Suricata's classtype (classification.config: coin-mining, bad-unknown,
policy-violation) that fits the record's category."""
_EVE_PROTO: Final = {"tcp": "TCP", "udp": "UDP"}


def eve_time(ts: float) -> str:
    """Suricata's timestamp form: local time with microseconds and the offset, here UTC (``...+0000``)."""
    return derived.rfc3339(ts).removesuffix("Z") + "+0000"


def _eve_proto(record: AttemptRecord) -> str:
    if record.transport == "icmp":
        return "IPv6-ICMP" if ":" in record.dst else "ICMP"
    return _EVE_PROTO.get(record.transport) or record.protocol.upper()


def eve(record: AttemptRecord) -> dict[str, Any]:
    """The record as one eve.json alert event."""
    event: dict[str, Any] = {
        "timestamp": eve_time(record.ts),
        "event_type": "alert",
        "src_ip": record.src,
        "dest_ip": record.dst,
        "proto": _eve_proto(record),
    }
    if record.transport in ("tcp", "udp"):
        event["src_port"], event["dest_port"] = record.sport, record.dport
    if record.community_id:
        event["community_id"] = record.community_id
    event["app_proto"] = record.protocol
    event["alert"] = {
        "action": "blocked" if record.action == "block" else "allowed",
        "gid": derived.GENERATOR_ID,
        "signature_id": record.signature_id,
        "rev": 1,
        "signature": f"EGRESS {record.category} {derived.signature(record.detector, record.protocol, record.reason)}",
        "category": EVE_CATEGORY.get(record.category, EVE_CATEGORY["policy"]),
        "severity": EVE_SEVERITY[record.severity],
    }
    if record.evidence:
        event["payload_printable"] = record.evidence
    event["egress"] = {
        "id": record.id,
        "sandbox": record.sandbox,
        "gateway": record.gateway,
        "host": record.host,
        "category": str(record.category),
        "reason": str(record.reason),
        "action": str(record.action),
        "rule": record.rule,
        "detector": record.detector,
        "severity": record.severity,
        "count": record.count,
        "first_ts": record.first_ts,
        "last_ts": record.last_ts,
    }
    return event


ZEEK_FIELDS: Final = (
    ("ts", "time"),
    ("uid", "string"),
    ("id.orig_h", "addr"),
    ("id.orig_p", "port"),
    ("id.resp_h", "addr"),
    ("id.resp_p", "port"),
    ("proto", "enum"),
    ("community_id", "string"),
    ("note", "enum"),
    ("msg", "string"),
    ("sub", "string"),
    ("host", "string"),
    ("sandbox", "string"),
    ("gateway", "string"),
    ("category", "string"),
    ("reason", "string"),
    ("action", "string"),
    ("rule", "string"),
    ("detector", "string"),
    ("severity", "string"),
    ("signature_id", "count"),
    ("n", "count"),
)
"""The columns of the ``egress`` log and their Zeek types; ``uid`` is the record's id, ``n`` its count."""
_ZEEK_PROTO: Final = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}


def zeek(record: AttemptRecord) -> dict[str, Any]:
    """The record as one entry of the Zeek log (what Zeek's JSON writer prints: dotted names, epoch ``ts``)."""
    return {
        "ts": record.ts,
        "uid": record.id,
        "id.orig_h": record.src,
        "id.orig_p": record.sport,
        "id.resp_h": record.dst,
        "id.resp_p": record.dport,
        "proto": _ZEEK_PROTO.get(record.transport, "unknown_transport"),
        "community_id": record.community_id or None,
        "note": f"Egress::{''.join(part.title() for part in str(record.reason).split('-'))}",
        "msg": f"{record.action} {record.category} {record.reason} {record.host or record.dst}",
        "sub": record.evidence or None,
        "host": record.host or None,
        "sandbox": record.sandbox or None,
        "gateway": record.gateway,
        "category": str(record.category),
        "reason": str(record.reason),
        "action": str(record.action),
        "rule": record.rule or None,
        "detector": record.detector,
        "severity": record.severity,
        "signature_id": record.signature_id,
        "n": record.count,
    }


def zeek_json(record: AttemptRecord) -> str:
    """One line of the log as Zeek's JSON writer has it (unset fields left out)."""
    entry = {key: value for key, value in zeek(record).items() if value is not None}
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False)


def zeek_header(
    opened: float | None = None, path: str = "egress", fields: Sequence[tuple[str, str]] = ZEEK_FIELDS
) -> Iterator[str]:
    """The header lines of a Zeek ASCII log of ``path`` (egress's own records by default; the flow log writes
    ``conn``) whose columns are ``fields`` (name, Zeek type)."""
    moment = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(time.time() if opened is None else opened))
    yield "#separator \\x09"
    yield "#set_separator\t,"
    yield "#empty_field\t(empty)"
    yield "#unset_field\t-"
    yield f"#path\t{path}"
    yield f"#open\t{moment}"
    yield "#fields\t" + "\t".join(name for name, _ in fields)
    yield "#types\t" + "\t".join(kind for _, kind in fields)


def _zeek_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    text = str(value)
    if text == "":
        return "(empty)"
    # Zeek's ASCII writer escapes the separator and what is not printable as \xHH (and a lone "-" as unset)
    escaped = "".join(
        char if char.isprintable() and char != "\t" else _hex(char) for char in text.replace("\\", "\\x5c")
    )
    return "\\x2d" if escaped == "-" else escaped


def _hex(char: str) -> str:
    return "".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))


def zeek_line(record: AttemptRecord) -> str:
    """One tab-separated line of the log."""
    entry = zeek(record)
    return "\t".join(_zeek_value(entry[name]) for name, _ in ZEEK_FIELDS)


def zeek_footer(closed: float | None = None) -> str:
    moment = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(time.time() if closed is None else closed))
    return f"#close\t{moment}"
