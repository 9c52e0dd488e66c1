"""The gateway's commands: ``egress gateway run`` (pre-flight, then the supervisor) and ``egress doctor`` (the same
pre-flight and the kernel's features, without starting anything), and the options they share with
``egress nft render`` (the same defaults, so render prints what run applies)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

import click

from egress.gateway import config as defaults
from egress.logsetup import FORMATS, LEVELS, configure
from egress.policy.lists import RulesError
from egress.policy.partition import MAX_PROCESSES
from egress.proxy.idle import IDLE_LIMIT, IDLE_PER_SANDBOX, IDLE_TIMEOUT
from egress.record import REDIS_URL
from egress.record.urls import redis_url_problem

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_USAGE: Final = 2

workers_option = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=defaults.default_workers,
    show_default="one per core",
    help="Proxy worker processes (ports from --proxy-port up).",
)
proxy_port_option = click.option(
    "--proxy-port",
    type=click.IntRange(1, 65535),
    default=defaults.PROXY_PORT,
    show_default=True,
    help="First proxy worker's port (worker N listens on this + N).",
)
dns_port_option = click.option(
    "--dns-port",
    type=click.IntRange(1, 65535),
    default=defaults.DNS_PORT,
    show_default=True,
    help="Resolver port (sandbox DNS is redirected here).",
)
nflog_group_option = click.option(
    "--nflog-group",
    type=click.IntRange(0, 65535),
    default=defaults.NFLOG_GROUP,
    show_default=True,
    help="nflog group of logged drops (0-65535).",
)


def check_ports(workers: int, proxy_port: int, dns_port: int) -> None:
    """The proxy workers' ports (``--proxy-port`` up, one per worker) must be ports and miss ``--dns-port``: a
    `click.UsageError` naming the flags otherwise."""
    last = proxy_port + workers - 1
    if last > 65535:
        raise click.UsageError(
            f"--proxy-port {proxy_port} with --workers {workers} needs ports up to {last}, past 65535"
        )
    if proxy_port <= dns_port <= last:
        raise click.UsageError(
            f"--dns-port {dns_port} is one of the proxy workers' ports ({proxy_port}-{last}: --proxy-port and "
            "--workers)"
        )


def redis_url_callback(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The ``--redis-url`` callback of every command that takes one (tests/test_cli.py checks that they all use
    it): a URL that names no Redis is a one-line usage error naming the flag, before anything connects."""
    problem = redis_url_problem(value)
    if problem:
        raise click.BadParameter(problem, param=param)
    return value


def _metrics_listen(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    from egress.gateway.metrics import parse_listen

    if value:
        try:
            parse_listen(value)
        except ValueError as error:
            raise click.BadParameter(str(error), param=param) from None
    return value


def log_options[F: Callable[..., Any]](command: F) -> F:
    """``--log-format`` and ``--log-level``, for every long-running command (`egress.logsetup`)."""
    command = click.option(
        "--log-level",
        type=click.Choice(LEVELS, case_sensitive=False),
        default=None,
        help="Lowest level logged (default: $EGRESS_LOG_LEVEL, else info; decisions that allow are info).",
    )(command)
    return click.option(
        "--log-format",
        type=click.Choice(FORMATS, case_sensitive=False),
        default=None,
        help="One text line or one JSON object per event (default: $EGRESS_LOG_FORMAT, else text).",
    )(command)


def _gateway_options[F: Callable[..., Any]](command: F) -> F:
    """Every setting of a running gateway (``gateway run`` and ``doctor`` take the same)."""
    for option in reversed(
        (
            click.option("--policy", required=True, type=click.Path(dir_okay=False), help="Policy YAML."),
            click.option("--sandbox-if", required=True, help="Interface the sandbox VLAN is on."),
            click.option("--uplink-if", required=True, help="Interface towards the internet."),
            click.option("--upstream-dns", required=True, help="Resolver the gateway forwards allowed queries to."),
            click.option(
                "--state-dir",
                default=defaults.STATE_DIR,
                show_default=True,
                help="Bindings, CA, spools, worker files.",
            ),
            workers_option,
            proxy_port_option,
            dns_port_option,
            click.option(
                "--dns-processes",
                type=click.IntRange(1, MAX_PROCESSES),
                default=1,
                show_default=True,
                help="Resolver processes: the gateway's own on --dns-port and the rest on the ports after it, each "
                "answering a fixed share of the sandboxes (a sandbox's DNS always reaches the same one). 1: the "
                "gateway's own only.",
            ),
            nflog_group_option,
            click.option(
                "--redis-url",
                default=REDIS_URL,
                show_default=True,
                envvar="EGRESS_REDIS_URL",
                callback=redis_url_callback,
                help="Where records go; env EGRESS_REDIS_URL (the units read it there: a password in a command line "
                "is visible to every user of the host).",
            ),
            click.option(
                "--name",
                "gateway_name",
                default=defaults.GATEWAY_NAME,
                show_default=True,
                help="This gateway's name in records.",
            ),
            click.option("--upstream-ca", default=None, help="Extra CA bundle trusted for intercepted TLS."),
            click.option(
                "--ca-constrain",
                is_flag=True,
                help="Constrain the gateway's CA, when it is made, to the decrypt lists' names (X.509 name "
                "constraints: a stolen key cannot vouch for other sites; a name added later needs a new CA).",
            ),
            click.option(
                "--dhcp",
                is_flag=True,
                help="Accept DHCP (UDP 67, DHCPv6 547) from the sandboxes to this host, for a DHCP server run on the "
                "gateway and bound to the sandbox interface (docs/deploy.md). Off: the table drops it.",
            ),
            click.option(
                "--spool-max-bytes",
                type=click.IntRange(min=1),
                default=None,
                help="Bytes the record spools may hold together while Redis is away [default: min(256 MiB, half the "
                "free space of the state directory's disk)].",
            ),
            click.option(
                "--metrics-listen",
                default=defaults.METRICS_LISTEN,
                show_default=True,
                callback=_metrics_listen,
                help="host:port of the gateway's own Prometheus metrics (decisions, spool, delivery failures; "
                "also while Redis is down): a management address, never the sandbox side; '' for none.",
            ),
            click.option(
                "--idle-limit",
                type=click.IntRange(min=1),
                default=IDLE_LIMIT,
                show_default=True,
                help="Connections that have not sent a byte yet one proxy worker holds in all; over it the oldest "
                "of the sandbox holding the most is closed and recorded (reason idle-limit).",
            ),
            click.option(
                "--idle-per-sandbox",
                type=click.IntRange(min=1),
                default=IDLE_PER_SANDBOX,
                show_default=True,
                help="The same bound per sandbox and worker: over it that sandbox's oldest idle connection is closed.",
            ),
            click.option(
                "--idle-timeout",
                type=click.FloatRange(min=0.5),
                default=IDLE_TIMEOUT,
                show_default=True,
                help="Seconds a connection inside mitmproxy may go without progress (nothing forwarded, nothing from "
                "the server, under 4 KiB from the client) before it is closed and recorded (reason idle-timeout).",
            ),
        )
    ):
        command = option(command)
    return command


def check_dns_ports(workers: int, proxy_port: int, dns_port: int, processes: int) -> None:
    """The resolver processes' ports (``--dns-port`` up, one per process) must be ports and miss the proxy
    workers': a `click.UsageError` naming the flags otherwise."""
    last = dns_port + processes - 1
    if last > 65535:
        raise click.UsageError(f"--dns-port {dns_port} with --dns-processes {processes} needs ports up to {last}")
    if dns_port <= proxy_port + workers - 1 and proxy_port <= last:
        raise click.UsageError(
            f"the resolver processes' ports ({dns_port}-{last}: --dns-port and --dns-processes) overlap the proxy "
            f"workers' ({proxy_port}-{proxy_port + workers - 1}: --proxy-port and --workers)"
        )


def _config(**options: Any) -> defaults.GatewayConfig:
    check_ports(options["workers"], options["proxy_port"], options["dns_port"])
    check_dns_ports(options["workers"], options["proxy_port"], options["dns_port"], options["dns_processes"])
    return defaults.GatewayConfig(
        policy=options["policy"],
        sandbox_if=options["sandbox_if"],
        uplink_if=options["uplink_if"],
        upstream_dns=options["upstream_dns"],
        state_dir=options["state_dir"],
        workers=options["workers"],
        proxy_port=options["proxy_port"],
        dns_port=options["dns_port"],
        dns_processes=options["dns_processes"],
        nflog_group=options["nflog_group"],
        redis_url=options["redis_url"],
        gateway=options["gateway_name"],
        upstream_ca=options["upstream_ca"],
        spool_max_bytes=options["spool_max_bytes"],
        ca_constrain=options["ca_constrain"],
        dhcp=options["dhcp"],
        metrics_listen=options["metrics_listen"],
        idle_limit=options["idle_limit"],
        idle_per_sandbox=options["idle_per_sandbox"],
        idle_timeout=options["idle_timeout"],
    )


def _problems(config: defaults.GatewayConfig, kernel: bool) -> list[str]:
    """Pre-flight's problems as lines (the policy's own first: a policy that does not load is one problem)."""
    from egress.gateway.hostprobe import SystemHost
    from egress.gateway.preflight import kernel_problems, preflight
    from egress.policy.loader import load_policy

    host = SystemHost()
    lines = [problem.line() for problem in kernel_problems(host)] if kernel else []
    try:
        policy = load_policy(config.policy)
    except RulesError as exc:
        return [*lines, f"egress: --policy: not loaded:\n{exc}"]
    except OSError as exc:
        return [*lines, f"egress: --policy: {config.policy}: {exc.strerror or exc}"]
    return lines + [problem.line() for problem in preflight(config, policy, host)]


def _warnings(config: defaults.GatewayConfig) -> list[str]:
    """`egress doctor`'s warnings: hardening the gateway does not depend on (the exit status ignores them)."""
    from egress.gateway.hostprobe import SystemHost
    from egress.gateway.preflight import hardening_warnings

    return [f"egress: warning: {p.where}: {p.what}" for p in hardening_warnings(config, SystemHost())]


@click.group()
def gateway() -> None:
    """The egress gateway (nftables + transparent proxy + resolver + drop logger)."""


@gateway.command("run")
@_gateway_options
@log_options
def gateway_run(log_format: str | None, log_level: str | None, **options: Any) -> None:
    """Run every gateway component until stopped; fail closed if one dies. SIGHUP reloads the policy in every
    component at once, or in none (docs/gateway.md). Nothing is applied unless the pre-flight passes (see
    ``egress doctor``): each problem is one line naming the flag, and the exit status is 2."""
    from egress.gateway.supervisor import run_gateway

    configure("gateway", log_format, log_level)  # before the supervisor's own default; its workers inherit it
    config = _config(**options)
    problems = _problems(config, kernel=False)
    if problems:
        click.echo("\n".join(problems), err=True)
        click.echo("egress: the gateway did not start; nothing was applied", err=True)
        sys.exit(EXIT_USAGE)
    try:
        sys.exit(run_gateway(config))
    except RulesError as exc:
        click.echo(f"egress: policy not loaded:\n{exc}", err=True)
        sys.exit(EXIT_USAGE)


@click.command()
@_gateway_options
def doctor(**options: Any) -> None:
    """Check this host for the gateway without starting anything: the kernel's features (nftables, conntrack,
    nflog, redirect) and everything ``gateway run`` checks before it applies anything. Exit status 1 with one line
    per problem, 0 when the gateway would start."""
    config = _config(**options)
    problems = _problems(config, kernel=True)
    for line in problems:
        click.echo(line)
    for line in _warnings(config):
        click.echo(line)
    if not problems:
        click.echo("egress: ok: the gateway would start with these settings")
    sys.exit(EXIT_PROBLEMS if problems else EXIT_OK)
