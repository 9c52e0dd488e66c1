"""The gateway's settings: every default declared once, the command line → one frozen `GatewayConfig`, and what
one proxy worker is told (`WorkerConfig`).

The defaults below are what ``egress gateway run``, ``egress nft render`` and the lab read; the wiring of the
nftables table (ports, nflog group, table name) is declared, with its meaning, on `GatewaySettings` in
`egress.nft.render` (that package comes earlier in the flow and cannot import this one) and read from there.

The supervisor writes one JSON file per proxy worker into the state directory, so what a worker was started with
is on disk; the worker gets its policy from the supervisor (`egress.gateway.control`), never a policy path.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Self

from egress.nft.render import GatewaySettings
from egress.proxy.idle import IDLE_LIMIT, IDLE_PER_SANDBOX, IDLE_TIMEOUT
from egress.record import REDIS_URL
from egress.record.spool import default_max_bytes

_TABLE_DEFAULTS: Final = GatewaySettings(sandbox_if="lo", uplink_if="lo")  # only its defaults are read

PROXY_PORT: Final = _TABLE_DEFAULTS.proxy_ports[0]
"""The first proxy worker's port; worker k listens on ``PROXY_PORT + k``."""
DNS_PORT: Final = _TABLE_DEFAULTS.dns_port
NFLOG_GROUP: Final = _TABLE_DEFAULTS.nflog_group
UDP_QUEUE: Final = 7
"""The gateway's NFQUEUE queue number (queues are per network namespace)."""
TABLE: Final = _TABLE_DEFAULTS.table
STATE_DIR: Final = "/run/egress"
"""Bindings file, worker configs, the CA, spools."""
GATEWAY_NAME: Final = "gateway"
METRICS_LISTEN: Final = "127.0.0.1:9464"
"""Where the gateway serves its own metrics (`egress.gateway.metrics`): loopback; 9464, the usual exporter port."""


def default_workers() -> int:
    """One proxy worker per core this process may run on (its CPU affinity, so ``taskset`` and cgroup cpusets are
    respected): a worker is one asyncio loop, and more workers than cores only add switching."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    policy: str
    """Path of the policy YAML (read by the supervisor only)."""
    sandbox_if: str
    uplink_if: str
    upstream_dns: str
    """Address of the resolver the gateway forwards allowed queries to."""
    state_dir: str = STATE_DIR
    workers: int = field(default_factory=default_workers)
    """Proxy worker processes (one per core)."""
    proxy_port: int = PROXY_PORT
    dns_port: int = DNS_PORT
    dns_processes: int = 1
    """Resolver processes: the supervisor's own (on ``dns_port``) and ``dns_processes - 1`` more (on the ports after
    it), each answering the sandboxes `egress.policy.partition` gives it (docs/dns-performance.md)."""
    nflog_group: int = NFLOG_GROUP
    udp_queue: int = UDP_QUEUE
    """The NFQUEUE queue the table hands allowed UDP to, read by the UDP gate (`egress.gateway.udpgate`)."""
    redis_url: str = REDIS_URL
    gateway: str = GATEWAY_NAME
    """This gateway's name in records."""
    lists_dir: str | None = None
    upstream_ca: str | None = None
    """Extra CA bundle the gateway trusts for intercepted TLS (the lab's CA)."""
    table: str = TABLE
    spool_max_bytes: int | None = None
    """What the record spools (one per worker and one of the supervisor) may hold together on the state
    directory's disk; None: min(256 MiB, half its free space at start). Each spool gets an equal share."""
    ca_constrain: bool = False
    """Constrain a newly made CA to the decrypt lists' names (X.509 name constraints, `egress.proxy.mitm.ca`)."""
    dhcp: bool = False
    """Accept the sandboxes' DHCP to this host, for a DHCP server run on the gateway (`GatewaySettings.dhcp`)."""
    policy_poll_s: float = 1.0
    """Seconds between two reads of the fleet's applied policy version in Redis (`egress.gateway.policy_follow`);
    0: do not follow it (the ``--policy`` file and SIGHUP only)."""
    metrics_listen: str = METRICS_LISTEN
    """``host:port`` of the gateway's own Prometheus endpoint, on the management side only (never a wildcard nor
    the sandbox interface's address, `egress.gateway.metrics.check_listen`); ``""``: none."""
    idle_limit: int = IDLE_LIMIT
    """Connections that have not sent a byte one proxy worker holds in all (`egress.proxy.idle`): over it, the
    oldest of the sandbox holding the most is closed and recorded (reason ``idle-limit``)."""
    idle_per_sandbox: int = IDLE_PER_SANDBOX
    """The same, per sandbox and worker: over it, that sandbox's oldest idle connection is closed."""
    idle_timeout: float = IDLE_TIMEOUT
    """Seconds a connection inside a worker's mitmproxy may go without progress before it is closed and recorded
    (reason ``idle-timeout``, `egress.proxy.mitm.quiet`)."""

    @property
    def proxy_ports(self) -> tuple[int, ...]:
        return tuple(self.proxy_port + index for index in range(self.workers))

    @property
    def dns_ports(self) -> tuple[int, ...]:
        """Resolver process k listens on ``dns_port + k`` (process 0 is the supervisor's)."""
        return tuple(self.dns_port + index for index in range(self.dns_processes))

    @property
    def confdir(self) -> str:
        """mitmproxy's confdir: where the gateway's CA lives (``mitmproxy-ca-cert.pem`` is what sandboxes trust)."""
        return str(Path(self.state_dir) / "ca")

    @property
    def bindings_path(self) -> str:
        return str(Path(self.state_dir) / "bindings.db")

    @property
    def findings_socket(self) -> str:
        """Where every component taps its findings to the quarantine keeper (`egress.gateway.qtap`)."""
        return str(Path(self.state_dir) / "quarantine.sock")

    @property
    def quarantine_state(self) -> str:
        """The sandboxes cut off, as the keeper last knew them (re-applied at start)."""
        return str(Path(self.state_dir) / "quarantine.json")

    def spool_dir(self, component: str) -> str:
        return str(Path(self.state_dir) / "spool" / component)

    def spool_share(self) -> int:
        """One component's spool cap: `spool_max_bytes` (or its default, measured now) over the spools."""
        total = self.spool_max_bytes
        if total is None:
            total = default_max_bytes(Path(self.state_dir) / "spool")
        return max(total // (self.workers + self.dns_processes), 1)

    def nft_settings(self) -> GatewaySettings:
        """How the nftables table is wired for this gateway."""
        return GatewaySettings(
            sandbox_if=self.sandbox_if,
            uplink_if=self.uplink_if,
            proxy_ports=self.proxy_ports,
            dns_port=self.dns_port,
            more_dns_ports=self.dns_ports[1:],
            nflog_group=self.nflog_group,
            table=self.table,
            dhcp=self.dhcp,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    """What every process the gateway starts with a config file of its own is given (a proxy worker, a resolver
    process past the first); no policy (that comes over the control channel). Written 0600 (`write`): it holds the
    Redis URL, which may carry a password."""

    ROLE: ClassVar[str]
    """The first part of the process's component name."""
    index: int
    port: int
    bindings_path: str
    lists_dir: str | None
    redis_url: str
    gateway: str
    spool_dir: str
    spool_max_bytes: int | None = None
    """This process's spool cap (`GatewayConfig.spool_share`); None: the spool's own default."""
    findings_socket: str = ""
    """The quarantine keeper's socket the process taps its findings to (``""``: none)."""

    @property
    def name(self) -> str:
        """The process's component name (records' spool, counters, reload log lines)."""
        return f"{self.ROLE}-{self.index}"

    @classmethod
    def shared(cls, config: GatewayConfig, index: int) -> dict[str, Any]:
        """The fields every kind takes from the gateway's config, for process ``index`` of this kind."""
        return {
            "index": index,
            "bindings_path": config.bindings_path,
            "lists_dir": config.lists_dir,
            "redis_url": config.redis_url,
            "gateway": config.gateway,
            "spool_dir": config.spool_dir(f"{cls.ROLE}-{index}"),
            "spool_max_bytes": config.spool_share(),
            "findings_socket": config.findings_socket,
        }

    def write(self, path: Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> Self:
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig(ProcessConfig):
    """Everything one proxy worker is started with."""

    ROLE: ClassVar[str] = "proxy"
    confdir: str
    upstream_ca: str | None
    idle_limit: int = IDLE_LIMIT
    """`GatewayConfig.idle_limit`."""
    idle_per_sandbox: int = IDLE_PER_SANDBOX
    """`GatewayConfig.idle_per_sandbox`."""
    idle_timeout: float = IDLE_TIMEOUT
    """`GatewayConfig.idle_timeout`."""

    @classmethod
    def of(cls, config: GatewayConfig, index: int) -> WorkerConfig:
        return cls(
            **cls.shared(config, index),
            port=config.proxy_ports[index],
            confdir=config.confdir,
            upstream_ca=config.upstream_ca,
            idle_limit=config.idle_limit,
            idle_per_sandbox=config.idle_per_sandbox,
            idle_timeout=config.idle_timeout,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsWorkerConfig(ProcessConfig):
    """Everything one resolver process past the first is started with (`egress.gateway.dnsworker`)."""

    ROLE: ClassVar[str] = "resolver"
    upstream_dns: str
    sandbox_if: str
    """Whose address the flow log names as the DNS destination."""
    table: str
    """The nftables table whose allow sets it fills (`egress.gateway.allowsets`)."""

    @classmethod
    def of(cls, config: GatewayConfig, index: int) -> DnsWorkerConfig:
        return cls(
            **cls.shared(config, index),
            port=config.dns_ports[index],
            upstream_dns=config.upstream_dns,
            sandbox_if=config.sandbox_if,
            table=config.table,
        )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), also when the file already existed with wider
    modes: secrets are never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
