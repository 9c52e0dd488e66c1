"""The gateway's settings (command line → one frozen object) and the per-worker configuration file.

The supervisor writes one JSON file per proxy worker into the state directory; a worker reads only that, so
everything a worker does is explained by a file on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    policy: str
    """Path of the policy YAML."""
    sandbox_if: str
    uplink_if: str
    upstream_dns: str
    """Address of the resolver the gateway forwards allowed queries to."""
    state_dir: str = "/run/egress"
    """Bindings file, worker configs, the CA, spools."""
    workers: int = 2
    """Proxy worker processes (one per core is right)."""
    proxy_port: int = 8081
    """First worker's port; worker k listens on proxy_port + k."""
    dns_port: int = 5353
    nflog_group: int = 7
    redis_url: str = "redis://127.0.0.1:6379/0"
    gateway: str = "gateway"
    """This gateway's name in records."""
    lists_dir: str | None = None
    upstream_ca: str | None = None
    """Extra CA bundle the gateway trusts for intercepted TLS (the lab's CA)."""
    table: str = "egress"

    @property
    def proxy_ports(self) -> tuple[int, ...]:
        return tuple(self.proxy_port + index for index in range(self.workers))

    @property
    def confdir(self) -> str:
        """mitmproxy's confdir: where the gateway's CA lives (``mitmproxy-ca-cert.pem`` is what sandboxes trust)."""
        return str(Path(self.state_dir) / "ca")

    @property
    def bindings_path(self) -> str:
        return str(Path(self.state_dir) / "bindings.db")

    def spool_dir(self, component: str) -> str:
        return str(Path(self.state_dir) / "spool" / component)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    gateway: GatewayConfig
    index: int

    @property
    def port(self) -> int:
        return self.gateway.proxy_ports[self.index]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"gateway": asdict(self.gateway), "index": self.index}, indent=2))

    @classmethod
    def read(cls, path: str | Path) -> WorkerConfig:
        data = json.loads(Path(path).read_text())
        return cls(GatewayConfig(**data["gateway"]), int(data["index"]))
