"""``tokenskip train tokenskip``: CoTs → compressed CoTs → ratio-prompt examples → LoRA.

Everything lands in one run directory::

    run.json          the run's configuration (a rerun must match it: it resumes)
    cots.jsonl        stage 1, one record per training problem
    compressed.jsonl  stage 2, each kept CoT at every γ of the grid
    train.jsonl       stage 3, the prompt/completion pairs trained on
    checkpoints/      Trainer checkpoints (resume points)
    adapter/          the peft adapter + tokenizer + tokenskip.json
    merged/           with --merge: base + adapter as one plain model

``adapter/tokenskip.json`` is what the proxy's local backend and ``tokenskip eval`` read to
apply the ratio knob (its ``delimiter``), plus what produced the adapter.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenskip.errors import InvalidInputError
from tokenskip.ratio_prompt import ADAPTER_META
from tokenskip.trainers.cot_data import (
    DEFAULT_GRID,
    BuildConfig,
    CollectConfig,
    CompressConfig,
    build_examples,
    check_grid,
    collect_cots,
    compress_cots,
)
from tokenskip.trainers.runs import claim_run_dir, is_main_process, on_main_process_first
from tokenskip.trainers.sft import SFTConfig, TrainSettings, merge_adapter, train_lora

META_FORMAT = "tokenskip-adapter/1"


@dataclass
class TokenSkipConfig:
    model: str
    out_dir: str
    data: str | None = None
    split: str = "train"
    limit: int | None = None
    cot_source: Literal["model", "reference"] = "model"
    max_cot_tokens: int = 500
    collect_max_new_tokens: int = 512
    collect_batch_size: int = 16
    grid: tuple[float, ...] = DEFAULT_GRID
    scorer: str = "self-info"
    scorer_model: str | None = None
    delimiter: str | None = None
    include_original: bool = True
    train: TrainSettings = field(default_factory=TrainSettings)
    on_bad_record: Literal["raise", "skip"] = "raise"
    allow_download: bool = False

    def __post_init__(self) -> None:
        self.grid = check_grid(self.grid)
        if self.limit is not None and self.limit <= 0:
            raise InvalidInputError(f"limit must be positive, got {self.limit}")

    # The stages' configs, derived from this one.
    def collect(self) -> CollectConfig:
        return CollectConfig(
            model=self.model,
            out_file=str(Path(self.out_dir) / "cots.jsonl"),
            data=self.data,
            split=self.split,
            limit=self.limit,
            source=self.cot_source,
            max_cot_tokens=self.max_cot_tokens,
            max_new_tokens=self.collect_max_new_tokens,
            batch_size=self.collect_batch_size,
            on_bad_record=self.on_bad_record,
        )

    def compress(self) -> CompressConfig:
        return CompressConfig(
            model=self.model,
            cots_file=str(Path(self.out_dir) / "cots.jsonl"),
            out_file=str(Path(self.out_dir) / "compressed.jsonl"),
            grid=self.grid,
            scorer=self.scorer,
            scorer_model=self.scorer_model,
            allow_download=self.allow_download,
        )

    def build(self) -> BuildConfig:
        return BuildConfig(
            model=self.model,
            compressed_file=str(Path(self.out_dir) / "compressed.jsonl"),
            out_file=str(Path(self.out_dir) / "train.jsonl"),
            delimiter=self.delimiter,
            include_original=self.include_original,
            seed=self.train.seed,
        )

    def sft(self) -> SFTConfig:
        return SFTConfig(
            model=self.model,
            train_file=str(Path(self.out_dir) / "train.jsonl"),
            out_dir=self.out_dir,
            train=self.train,
            allow_download=self.allow_download,
        )


def prepare_data(config: TokenSkipConfig, hf: Any, progress: bool) -> dict[str, Any]:
    """Stages 1-3 (each resumes); returns their summaries."""
    claim_run_dir(config.out_dir, asdict(config))
    collected = collect_cots(config.collect(), progress=progress, tokenizer=hf)
    if collected["kept"] == 0:
        raise InvalidInputError(
            f"no usable CoTs out of {collected['problems']} problems; with a weak model, "
            "use --cot-source reference"
        )
    compressed = compress_cots(config.compress(), progress=progress)
    built = build_examples(config.build(), tokenizer=hf)
    return {"collect": collected, "compress": compressed, "build": built}


def run_tokenskip(
    config: TokenSkipConfig,
    *,
    merge: bool = False,
    progress: bool = True,
    callbacks: list[Any] | None = None,
    control: Any = None,
) -> dict[str, Any]:
    """All stages; returns the adapter's metadata (also written to ``adapter/tokenskip.json``).

    Runs unchanged under ``accelerate launch`` (data preparation on rank 0 only; the Trainer
    distributes training; rank 0 writes the artifacts and the others return ``{}``).
    """
    from tokenskip.models import load_tokenizer
    from tokenskip.provenance import portable_paths, provenance
    from tokenskip.ratio_prompt import check_delimiter, default_delimiter

    hf = load_tokenizer(config.model, allow_download=config.allow_download)
    delimiter = config.delimiter or default_delimiter(hf)
    check_delimiter(hf, delimiter)  # before any long work
    started = time.time()
    data = on_main_process_first(lambda: prepare_data(config, hf, progress), config.out_dir)
    callbacks = list(callbacks or [])
    if control is not None:  # controllability checks (tokenskip.trainers.control)
        from tokenskip.trainers.control import callback

        callbacks.append(callback(control, hf, delimiter, config.out_dir))
    trained = train_lora(config.sft(), callbacks=callbacks, progress=progress)
    if not is_main_process():
        return {}
    meta = {
        "format": META_FORMAT,
        "base_model": config.model,
        "delimiter": delimiter,
        "grid": list(config.grid),
        "include_original": config.include_original,
        "scorer": config.scorer,
        "scorer_model": config.scorer_model,
        "cot_source": config.cot_source,
        "prompt": "chat template; user turn = question + DELIM + γ + DELIM (nothing at γ=1.0); "
        "system turn = tokenskip.tasks.gsm8k.INSTRUCTION",
        "data": data,
        "training": {**trained, "config": asdict(config.sft())},
        "wall_s": round(time.time() - started, 1),
        **provenance(),
    }
    adapter = Path(trained["adapter"])
    text = json.dumps(portable_paths(meta), indent=2, ensure_ascii=False) + "\n"
    (adapter / ADAPTER_META).write_text(text)
    if merge:
        merged = merge_adapter(config.model, adapter, Path(config.out_dir) / "merged")
        (merged / ADAPTER_META).write_text(text)
        meta["merged"] = str(merged)
    return meta


def read_adapter_meta(adapter_dir: str | Path) -> dict[str, Any]:
    """``tokenskip.json`` of an adapter (or merged model) directory, checked."""
    path = Path(adapter_dir) / ADAPTER_META
    if not path.is_file():
        raise InvalidInputError(f"{adapter_dir} has no {ADAPTER_META}: not a TokenSkip adapter")
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT or not meta.get("delimiter"):
        raise InvalidInputError(f"{path} is not a {META_FORMAT} file")
    return meta
