"""Serving the query API with uvicorn, and the ``egress api serve`` command (`api_serve`).

One worker runs the app in this process; several are uvicorn worker processes that each build the app from
``EGRESS_API_SETTINGS`` (`app_from_env`: token digests only travel there, never tokens). uvicorn's parent starts
a worker that died again; a worker dies with the parent (`die_with_parent`), so a killed parent leaves no worker
serving unsupervised on its port, and the service manager's restart (deploy/systemd, ``Restart=on-failure``)
binds the port again.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import click
import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from egress.api.app import create_app
from egress.api.auth import ENV_VAR, load_tokens, tokens_from_env
from egress.api.settings import SETTINGS_ENV, Settings, parse_listen
from egress.cli_gateway import log_options, redis_url_callback
from egress.logsetup import configure
from egress.parentage import die_with_parent
from egress.policy.yamlnodes import RulesError
from egress.record import REDIS_URL

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 5
"""Follow streams never end by themselves: shutdown waits this long for them, then closes them."""
PARENT_ENV = "EGRESS_API_PARENT"
"""The pid of the uvicorn parent, for its workers (`die_with_parent`)."""


def serve(settings: Settings) -> None:
    """Run the API until interrupted (uvicorn handles SIGINT/SIGTERM)."""
    if settings.lab and not settings.tokens and not settings.loopback:
        log.warning("lab mode without tokens on %s: anyone who reaches it can read every record", settings.host)
    options = {
        "host": settings.host,
        "port": settings.port,
        "server_header": False,
        "proxy_headers": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # uvicorn's loggers go to the root logger, formatted as --log-format says (egress.logsetup)
        "log_config": None,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
        return
    os.environ[SETTINGS_ENV] = settings.to_env()
    os.environ[PARENT_ENV] = str(os.getpid())
    config = NoDelayConfig("egress.api.server:app_from_env", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]
    Multiprocess(config, sockets=[config.bind_socket()]).run()  # what uvicorn.run does for workers > 1


class NoDelayConfig(uvicorn.Config):
    """uvicorn's settings, with a listening socket whose connections send each write at once.

    For several workers uvicorn binds the socket itself, with protocol 0, and asyncio turns Nagle's algorithm off
    only on connections whose socket says TCP: each response's body then waited for the client's delayed ACK of its
    head, ~40 ms per keep-alive request. The socket is made with protocol TCP (its accepted connections inherit it,
    in the workers too) and TCP_NODELAY set (inherited by accepted connections on Linux)."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return sock
        tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tcp.set_inheritable(True)
        return tcp


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process, from the settings its parent put in ``EGRESS_API_SETTINGS``."""
    configure("api")  # as the parent was told (EGRESS_LOG_FORMAT, EGRESS_LOG_LEVEL)
    die_with_parent(int(os.environ[PARENT_ENV]))
    return create_app(Settings.from_env(os.environ[SETTINGS_ENV]))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or systemd's CPUAffinity narrows)."""
    return max(1, len(os.sched_getaffinity(0)))


class WorkerCount(click.ParamType[int]):
    """``--workers``: a number from 1 to 64, or ``auto``: one per usable core (`usable_cores`)."""

    name = "N|auto"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return min(64, usable_cores())
        if text.isdigit() and 1 <= int(text) <= 64:
            return int(text)
        self.fail(f"{value!r} is not a number from 1 to 64 or auto", param, ctx)


@click.command("serve")
@click.option(
    "--redis-url",
    default=REDIS_URL,
    show_default=True,
    envvar="EGRESS_REDIS_URL",
    callback=redis_url_callback,
    help="Where the records are; redis+cluster://host:port for a Redis Cluster; env EGRESS_REDIS_URL.",
)
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Tokens file (YAML; see docs/api.md). Without it, ${ENV_VAR} is read.",
)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="host:port (the management side only).")
@click.option(
    "--workers",
    type=WorkerCount(),
    default="1",
    show_default=True,
    help="uvicorn worker processes, or auto: one per usable core (a worker serves one core's worth of requests; "
    "egress_api_requests_total is then counted per worker).",
)
@click.option(
    "--lab", is_flag=True, help="A lab: start without tokens, every request allowed. Never on a shared network."
)
@click.option(
    "--slack",
    type=click.FloatRange(0, 3600),
    default=2.0,
    show_default=True,
    help="Seconds around an action's span within which an attempt is tied to it.",
)
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Policy file whose retention (max_age_days, max_records) applies to the actions the API stores.",
)
@log_options
def api_serve(
    redis_url: str,
    tokens_file: Path | None,
    listen: str,
    workers: int,
    lab: bool,
    slack: float,
    policy: Path | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Serve the query API, the dashboard and /metrics."""
    try:
        host, port = parse_listen(listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    try:
        tokens = load_tokens(tokens_file) if tokens_file is not None else tokens_from_env()
    except (RulesError, OSError) as error:
        click.echo(f"egress: tokens: {error}", err=True)
        sys.exit(2)
    retention: dict[str, float] = {}
    if policy is not None:
        from egress.policy.loader import load_policy

        try:
            loaded = load_policy(policy)
        except (RulesError, OSError) as error:
            click.echo(f"egress: policy: {error}", err=True)
            sys.exit(2)
        retention = {
            "retention_max_records": loaded.retention.max_records,
            "retention_max_age_days": loaded.retention.max_age_days,
        }
    try:
        settings = Settings(
            redis_url=redis_url,
            tokens=tokens,
            lab=lab,
            slack=slack,
            host=host,
            port=port,
            workers=workers,
            **retention,  # type: ignore[arg-type]
        )
    except ValueError as error:
        click.echo(f"egress: {error}", err=True)
        sys.exit(2)
    configure("api", log_format, log_level)  # uvicorn's worker processes inherit it through the environment
    serve(settings)
