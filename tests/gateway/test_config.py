"""egress.gateway.config: every default declared once and read by the command line and the renderer; what
a proxy worker is started with carries no policy path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from egress.cli_gateway import doctor, gateway_run
from egress.cli_wiring import nft_render
from egress.gateway import config
from egress.gateway.config import DnsWorkerConfig, GatewayConfig, WorkerConfig
from egress.nft.render import GatewaySettings


def _defaults(command: click.Command) -> dict[str, object]:
    found: dict[str, object] = {}
    for param in command.params:
        default = param.default() if callable(param.default) else param.default
        found[str(param.name)] = default
    return found


def test_gateway_run_nft_render_and_the_config_share_one_set_of_defaults() -> None:
    run, render = _defaults(gateway_run), _defaults(nft_render)
    assert _defaults(doctor) == {k: v for k, v in run.items() if not k.startswith("log_")}  # what run would use
    made = GatewayConfig("policy.yaml", "sbx0", "up0", "192.0.2.53")
    for name in ("workers", "proxy_port", "dns_port", "nflog_group"):
        assert run[name] == render[name] == getattr(made, name), name
    assert (run["state_dir"], run["redis_url"], run["gateway_name"]) == (made.state_dir, made.redis_url, made.gateway)
    settings = made.nft_settings()
    table = GatewaySettings(sandbox_if="sbx0", uplink_if="up0")
    assert (settings.dns_port, settings.nflog_group, settings.table) == (table.dns_port, table.nflog_group, table.table)
    assert settings.proxy_ports[0] == table.proxy_ports[0] == config.PROXY_PORT


def test_one_proxy_worker_per_core_this_process_may_use() -> None:
    assert config.default_workers() == len(os.sched_getaffinity(0))
    assert GatewayConfig("p", "a", "b", "c").workers == config.default_workers()


def test_a_worker_is_told_everything_but_the_policy(tmp_path: Path) -> None:
    gateway = GatewayConfig("/etc/egress/policy.yaml", "sbx0", "up0", "192.0.2.53", workers=3, state_dir="/srv/eg")
    worker = WorkerConfig.of(gateway, 2)
    assert (worker.name, worker.port, worker.spool_dir) == ("proxy-2", gateway.proxy_port + 2, "/srv/eg/spool/proxy-2")
    path = tmp_path / "worker-2.json"
    worker.write(path)
    assert WorkerConfig.read(path) == worker
    assert "policy" not in json.loads(path.read_text())  # the policy comes over the control channel only


def test_a_worker_config_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    made = WorkerConfig.of(GatewayConfig("p.yaml", "a", "b", "c", redis_url="redis://:secret@127.0.0.1:6379/0"), 0)
    path = tmp_path / "worker-0.json"
    path.write_text("{}")
    path.chmod(0o644)  # left behind wider by an older version: tightened, not kept
    made.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert WorkerConfig.read(path) == made


def test_resolver_processes_take_the_ports_after_the_dns_port_and_the_table_redirects_to_each() -> None:
    one = GatewayConfig("p.yaml", "sbx0", "up0", "192.0.2.53", workers=2)
    assert (one.dns_ports, one.nft_settings().dns_ports) == ((5353,), (5353,))
    two = GatewayConfig("p.yaml", "sbx0", "up0", "192.0.2.53", workers=2, dns_processes=2, spool_max_bytes=4000)
    assert (two.dns_ports, two.nft_settings().dns_ports) == ((5353, 5354), (5353, 5354))
    assert two.spool_share() == 1000  # two proxy workers' spools, the supervisor's and the second resolver's


def test_a_resolver_process_is_told_everything_but_the_policy(tmp_path: Path) -> None:
    gateway = GatewayConfig("/etc/egress/policy.yaml", "sbx0", "up0", "192.0.2.53", dns_processes=2, state_dir="/x")
    made = DnsWorkerConfig.of(gateway, 1)
    assert (made.name, made.port, made.spool_dir, made.upstream_dns) == ("resolver-1", 5354, "/x/spool/resolver-1",
                                                                         "192.0.2.53")  # fmt: skip
    path = tmp_path / "resolver-1.json"
    made.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DnsWorkerConfig.read(path) == made
    assert "policy" not in json.loads(path.read_text())
