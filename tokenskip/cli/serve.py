"""``tokenskip serve``: the gateway under uvicorn, configured through the environment."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tokenskip.cli.args import positive, positive_int
from tokenskip.errors import InvalidInputError


def add_serve_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible compressing proxy",
        description="Serve /v1/chat/completions in front of local models and any litellm provider. "
        "Without --config, serves the embedded model (smollm2) with prompt compression on.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML config in LiteLLM's model_list form (env: TOKENSKIP_CONFIG)",
    )
    p.add_argument(
        "--host", default=None, help="interface to bind (default: 127.0.0.1; env: TOKENSKIP_HOST)"
    )
    p.add_argument(
        "--port", type=positive_int, default=None, help="port (default: 8000; env: TOKENSKIP_PORT)"
    )
    p.add_argument(
        "--workers", type=positive_int, default=1, help="uvicorn worker processes (default: 1)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require this client key (repeatable; env: TOKENSKIP_API_KEYS, comma-separated)",
    )
    p.add_argument(
        "--ledger-url",
        default=None,
        help="SQLAlchemy URL of the savings ledger (default: SQLite in the cache dir)",
    )
    p.add_argument(
        "--no-compression",
        action="store_true",
        help="turn every prompt and output transform off: requests pass through untouched "
        "and are still accounted (env: TOKENSKIP_COMPRESSION=false)",
    )
    p.add_argument(
        "--keep-alive",
        type=positive(float),
        default=None,
        metavar="SECONDS",
        help="idle keep-alive timeout (default: 75; env: TOKENSKIP_KEEP_ALIVE_S)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level",
    )
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    # Settings travel through the environment so that every uvicorn worker sees the same.
    if args.config is not None:
        if not os.path.isfile(args.config):
            raise InvalidInputError(f"config file {args.config} does not exist")
        os.environ["TOKENSKIP_CONFIG"] = os.path.abspath(args.config)
    if args.host is not None:
        os.environ["TOKENSKIP_HOST"] = args.host
    if args.port is not None:
        os.environ["TOKENSKIP_PORT"] = str(args.port)
    if args.api_key:
        os.environ["TOKENSKIP_API_KEYS"] = ",".join(args.api_key)
    if args.ledger_url is not None:
        os.environ["TOKENSKIP_LEDGER_URL"] = args.ledger_url
    if args.no_compression:
        os.environ["TOKENSKIP_COMPRESSION"] = "false"
    if args.keep_alive is not None:
        os.environ["TOKENSKIP_KEEP_ALIVE_S"] = str(args.keep_alive)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    import uvicorn

    from tokenskip.proxy.infra.config import Settings, load_config

    settings = Settings()
    try:
        load_config(settings)  # fail here, with one line, rather than inside a worker
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    _check_port(settings.host, settings.port)
    uvicorn.run(
        "tokenskip.proxy.api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_keep_alive=settings.keep_alive_s,
    )
    return 0


def _check_port(host: str, port: int) -> None:
    """One clear line for a busy port, before any model loads."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidInputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with "
                f'--port N (make serve ARGS="--port N")'
            ) from None
