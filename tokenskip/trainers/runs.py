"""Run directories shared by the training pipelines: one run per directory, resumable, and
safe under ``accelerate launch`` (data preparation on rank 0 only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenskip.errors import InvalidInputError


def claim_run_dir(out_dir: str, config: dict[str, Any]) -> None:
    """Make ``out_dir`` this run's, or refuse if it holds a different run.

    The same configuration resumes (every stage skips what it finished); any difference is
    an error naming the fields, so no earlier output is overwritten silently. Under
    ``accelerate launch`` only rank 0 calls it (inside :func:`on_main_process_first`).
    """
    _claim(out_dir, config)


def _claim(out_dir: str, config: dict[str, Any]) -> None:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} exists and is not a directory")
    marker = out / "run.json"
    mine = json.loads(json.dumps(config))
    if marker.is_file():
        # unset (None) settings compare equal to absent ones: a run made before a setting
        # existed still resumes
        theirs, ours = _set_only(json.loads(marker.read_text())), _set_only(mine)
        if theirs != ours:
            fields = ", ".join(
                f"{path} ({_show(a)} there, {_show(b)} now)"
                for path, a, b in _differences(theirs, ours)
            )
            raise InvalidInputError(
                f"{out} holds a different run (differs in: {fields}); "
                "rerun with the same settings to resume, or pick another --out"
            )
        return
    if out.is_dir() and any(not p.name.endswith(".part") for p in out.iterdir()):
        raise InvalidInputError(
            f"{out} is not empty and holds no tokenskip run.json; pick another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    part = marker.with_suffix(f".{os.getpid()}.part")
    part.write_text(json.dumps(mine, indent=2) + "\n")
    part.replace(marker)  # whole or absent, never half written


def _differences(theirs: Any, ours: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Every leaf field that differs, by its dotted path (``train.learning_rate``)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        out = []
        for key in sorted(set(theirs) | set(ours)):
            where = f"{path}.{key}" if path else key
            out.extend(_differences(theirs.get(key), ours.get(key), where))
        return out
    return [] if theirs == ours else [(path, theirs, ours)]


def _show(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _set_only(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _set_only(v) for k, v in value.items() if v is not None}
    return value


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _process_group() -> Any:
    """torch.distributed, joined (launchers such as torchrun and ``accelerate launch`` set
    the environment; the Trainer reuses this group). accelerate's ``PartialState`` is not
    used here: on a CPU-only machine it can come up undistributed, so every rank would think
    it is the main one and prepare the data at once."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist


def on_main_process_first(prepare: Any, out_dir: str) -> dict[str, Any]:
    """Under ``accelerate launch``, rank 0 prepares the data while the others wait, then they
    read its summary; a single process just prepares."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return prepare()
    dist = _process_group()
    summary = Path(out_dir) / "data.json"
    if is_main_process():
        # if this raises, the launcher stops the other ranks (they never wait forever)
        data = prepare()
        summary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        dist.barrier()
        return data
    dist.barrier()
    return json.loads(summary.read_text())


def write_adapter_meta(
    file_name: str, trained: dict[str, Any], sft: Any, started: float, **fields: Any
) -> dict[str, Any]:
    """The adapter's metadata: ``fields`` + the training summary and its config + wall time +
    provenance, written as ``file_name`` inside the adapter directory; returned."""
    import time
    from dataclasses import asdict

    from tokenskip.provenance import portable_paths, provenance

    meta = {
        **fields,
        "training": {**trained, "config": asdict(sft)},
        "wall_s": round(time.time() - started, 1),
        **provenance(),
    }
    text = json.dumps(portable_paths(meta), indent=2, ensure_ascii=False) + "\n"
    (Path(trained["adapter"]) / file_name).write_text(text)
    return meta
