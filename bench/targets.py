"""How each benchmarked server is launched: its command line, its config file, its environment.

Servers: the fast upstream (``fast_upstream.py`` under uvicorn with uvloop + httptools), the
tokenskip proxy (``tokenskip serve``), and LiteLLM's own proxy from the separate benchmark
venv (``.bench-venv``; LiteLLM's proxy extras are not tokenskip dependencies). Every server
gets the same offline environment and one master key, so all of them authenticate requests.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from servers import Server, ServerPool

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
BENCH_VENV = REPO_ROOT / ".bench-venv"
LITELLM_VERSION = "1.106.2"
MODEL = "m"
KEY_PREFIX = "sk-bench-"
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# LiteLLM's proxy without a database: no schema migration, errors-only logging.
LITELLM_ENV = {"DISABLE_SCHEMA_UPDATE": "True", "LITELLM_LOG": "ERROR"}


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one server and to report how it was started."""

    name: str
    command: list[str]
    port: int
    ready_path: str
    env: dict[str, str]
    config: dict[str, Any] | None = None

    def describe(self, server: Server | None = None) -> dict[str, Any]:
        """Command, extra environment, config (the bench master key masked) and, given the
        started server, how long it took to become ready."""
        out = _masked(
            {
                "command": " ".join(_relative(c) for c in self.command),
                "env": self.env,
                "config": self.config,
            }
        )
        if server is not None:
            out["startup_s"] = round(server.startup_seconds, 2)
        return out


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if isinstance(value, str) and KEY_PREFIX in value:
        return re.sub(rf"{KEY_PREFIX}[0-9a-f]+", "<master key>", value)
    return value


def _relative(part: str) -> str:
    path = Path(part)
    if path.is_absolute() and path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return part


def new_master_key() -> str:
    return f"{KEY_PREFIX}{secrets.token_hex(16)}"


def base_env() -> dict[str, str]:
    """This process's environment plus the offline settings every server gets."""
    return {**os.environ, **OFFLINE_ENV}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def deployment(upstream_port: int) -> dict[str, Any]:
    """The one ``litellm_params`` every proxy forwards to."""
    return {
        "model": f"openai/{MODEL}",
        "api_base": f"http://127.0.0.1:{upstream_port}/v1",
        "api_key": "x",
    }


def upstream(port: int, *, tokenizer_file: Path | None = None) -> Launch:
    """The fast upstream; with ``tokenizer_file`` it counts prompt tokens for real."""
    env = {"FAST_UPSTREAM_TOKENIZER": str(tokenizer_file)} if tokenizer_file else {}
    command = [
        str(VENV_BIN / "uvicorn"), "--app-dir", str(BENCH_DIR), "fast_upstream:app",
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
    ]  # fmt: skip
    return Launch("upstream", command, port, "/healthz", env)


def tokenskip_proxy(
    name: str,
    port: int,
    work_dir: Path,
    master_key: str,
    *,
    upstream_port: int | None = None,
    policy: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    torch_threads: int | None = None,
) -> Launch:
    """``tokenskip serve`` with one remote model ``m`` (or, without an upstream, no config).

    ``torch_threads`` sets ``OMP_NUM_THREADS`` for it (default: torch's own choice).
    """
    command = [str(VENV_BIN / "tokenskip"), "serve"]
    config = None
    if upstream_port is not None:
        config = {
            "model_list": [
                {
                    "model_name": MODEL,
                    "litellm_params": deployment(upstream_port),
                    "tokenskip": dict(policy or {}),
                }
            ],
            "general_settings": {"master_key": master_key},
        }
        if settings:
            config["tokenskip_settings"] = dict(settings)
        command += ["--config", str(write_yaml(work_dir / f"{name}.yaml", config))]
    else:
        command += ["--api-key", master_key]
    command += [
        "--port", str(port), "--workers", "1", "--log-level", "warning",
        "--ledger-url", f"sqlite:///{work_dir / f'{name}-ledger.db'}",
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": str(torch_threads)} if torch_threads else {}
    return Launch(name, command, port, "/healthz", env, config)


def litellm_proxy(port: int, upstream_port: int, work_dir: Path, master_key: str) -> Launch:
    """LiteLLM's proxy, one worker, no database, on the same deployment."""
    config = {
        "model_list": [{"model_name": MODEL, "litellm_params": deployment(upstream_port)}],
        "general_settings": {"master_key": master_key},
    }
    path = write_yaml(work_dir / "litellm.yaml", config)
    command = [
        str(BENCH_VENV / "bin" / "litellm"), "--config", str(path),
        "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
    ]  # fmt: skip
    return Launch("litellm-proxy", command, port, "/health/liveliness", dict(LITELLM_ENV), config)


def has_litellm_proxy() -> bool:
    return (BENCH_VENV / "bin" / "litellm").is_file()


def litellm_install_hint() -> str:
    return (
        f"python3 -m venv {BENCH_VENV.name} && "
        f"{BENCH_VENV.name}/bin/pip install 'litellm[proxy]=={LITELLM_VERSION}'"
    )


def start(pool: ServerPool, launch: Launch, timeout: float = 120.0) -> Server:
    """Start a launch in the pool and wait until its ready path answers 200."""
    return pool.start(
        launch.name,
        launch.command,
        launch.port,
        ready_path=launch.ready_path,
        env=launch.env,
        timeout=timeout,
    )
