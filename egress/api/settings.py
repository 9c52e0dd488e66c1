"""The query API's settings: one frozen value built by the command line (or a test) and handed to `create_app`.

Workers started by uvicorn are separate processes: they get the settings through the environment variable
``EGRESS_API_SETTINGS`` (`to_env` / `from_env`), which carries token digests, never tokens.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from egress.api.auth import Role, Token
from egress.record import REDIS_URL

SETTINGS_ENV: Final = "EGRESS_API_SETTINGS"


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = REDIS_URL
    """Where the records are: ``redis://host:port/db``, or ``redis+cluster://host:port`` for a Redis Cluster."""
    tokens: tuple[Token, ...] = ()
    """Accepted bearer tokens (`egress.api.auth`). Empty is refused unless ``lab``."""
    lab: bool = False
    """A lab: without tokens every request is allowed with every role. Never for a shared network."""
    slack: float = 2.0
    """Seconds added on both sides of an action's span when tying attempts to it."""
    host: str = "127.0.0.1"
    """Listen address (the management side only)."""
    port: int = 8080
    workers: int = 1
    """uvicorn worker processes."""
    spool_dir: Path | None = None
    """The record store's spool directory (the API writes no attempt records; a private temporary one when None)."""
    retention_max_records: int = 1_000_000
    """Per sandbox, for the actions the API writes; the policy's ``retention.max_records``."""
    retention_max_age_days: float = 30
    """The policy's ``retention.max_age_days``."""
    heartbeat_s: float = 15.0
    """Live follow: a comment line is sent when no record came for this long (keeps proxies from closing it)."""
    follow_block_ms: int = 1000
    """Live follow: how long one Redis read waits for new records."""
    max_followers: int = 64
    """Live follow connections at once per worker; more get 429."""
    metrics_window_s: float = 3600.0
    """The attempt gauges of /metrics count records of this many last seconds."""

    def __post_init__(self) -> None:
        problems = []
        if not self.tokens and not self.lab:
            problems.append(
                "no API tokens: give a tokens file (--tokens) or EGRESS_API_TOKENS, or --lab for a lab without auth"
            )
        if not math.isfinite(self.slack) or not 0 <= self.slack <= 3600:
            problems.append(f"slack {self.slack} must be between 0 and 3600 seconds")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not a port")
        if not 1 <= self.workers <= 64:
            problems.append(f"workers {self.workers} must be between 1 and 64")
        if self.heartbeat_s <= 0 or self.follow_block_ms < 1 or self.max_followers < 1 or self.metrics_window_s <= 0:
            problems.append("heartbeat_s, follow_block_ms, max_followers and metrics_window_s must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def loopback(self) -> bool:
        """Whether the listen address is a loopback one."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def to_env(self) -> str:
        """JSON for ``EGRESS_API_SETTINGS`` (token digests only)."""
        data = {
            name: getattr(self, name)
            for name in (
                "redis_url",
                "lab",
                "slack",
                "host",
                "port",
                "workers",
                "retention_max_records",
                "retention_max_age_days",
                "heartbeat_s",
                "follow_block_ms",
                "max_followers",
                "metrics_window_s",
            )
        }
        data["spool_dir"] = str(self.spool_dir) if self.spool_dir is not None else None
        data["tokens"] = [
            {
                "name": token.name,
                "sha256": token.sha256.hex(),
                "roles": sorted(token.roles),
                "sandboxes": sorted(token.sandboxes) if token.sandboxes is not None else None,
            }
            for token in self.tokens
        ]
        return json.dumps(data)

    @classmethod
    def from_env(cls, text: str) -> Settings:
        data = json.loads(text)
        data["tokens"] = tuple(
            Token(
                item["name"],
                bytes.fromhex(item["sha256"]),
                frozenset(Role(role) for role in item["roles"]),
                frozenset(item["sandboxes"]) if item.get("sandboxes") is not None else None,
            )
            for item in data["tokens"]
        )
        data["spool_dir"] = Path(data["spool_dir"]) if data["spool_dir"] is not None else None
        return cls(**data)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); `ValueError` saying what is wrong."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not host:
        raise ValueError(f"listen address {text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {text!r}: {port_text!r} is not a port")
    return host, int(port_text)
