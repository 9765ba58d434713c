"""The TokenSkip recipe on a GPU machine, in minutes: model files over in chunks, the model's
own correct CoTs on GSM8K train, compressed at the γ grid, a LoRA trained on them, and the
test set evaluated at every γ.

The lent GPU machine reaches no package registry or hub and each call carries at most
64 MiB, so the model goes over in pieces::

    # here: the model as a plain HF directory (the 1.5B GGUF is dequantized into the cache
    # by `tokenskip.models.load_model("qwen2.5-coder-1.5b")`), cut into <= 60 MiB chunks
    .venv/bin/python bench/gpu_recipe.py split ~/.cache/tokenskip/models/qwen2.5-coder-1.5b-* runs/chunks
    # one device call per chunk folder (carry it; append it to an ignored folder there):
    #   carry runs/chunks/NNN  ->  mkdir -p ../model-chunks && cp runs/chunks/NNN/* ../model-chunks/
    # then, in one device call:
    python bench/gpu_recipe.py join ../model-chunks ../qwen1.5b && \\
    python bench/gpu_recipe.py run --model ../qwen1.5b --out runs/recipe-qwen1.5b

``run`` writes ``OUT/recipe.json`` (each stage's seconds and results) beside the training run
and the evaluation folders. On CPU the same command runs end to end with the embedded model
and tiny sizes (``tests/test_gpu_recipe.py``), which is how it is tested here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

CHUNK_BYTES = 60 * 1024 * 1024
MANIFEST = "manifest.json"


def split(src: Path, out: Path, size: int = CHUNK_BYTES) -> list[Path]:
    """The files of ``src`` cut into numbered folders of at most ``size`` bytes each, with a
    manifest (every file's size and sha256) in the first."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"{src}: no files to split")
    manifest: dict = {"files": []}
    folders: list[Path] = []
    used, piece = size, 0  # the first part opens the first folder
    for path in files:
        digest, parts = hashlib.sha256(), []
        with path.open("rb") as f:
            while True:
                if used >= size:
                    folders.append(out / f"{len(folders):03d}")
                    folders[-1].mkdir(parents=True, exist_ok=True)
                    used = 0
                block = f.read(size - used)
                if not block:
                    break
                name = f"{piece:05d}.part"
                (folders[-1] / name).write_bytes(block)
                digest.update(block)
                parts.append(name)
                used += len(block)
                piece += 1
        manifest["files"].append({"path": path.relative_to(src).as_posix(),
                                  "size": path.stat().st_size, "sha256": digest.hexdigest(),
                                  "parts": parts})  # fmt: skip
    (folders[0] / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folders


def join(chunks: Path, dest: Path) -> None:
    """The files of a split put back together from one folder holding every part; each file
    checked against the manifest (a missing or corrupt part is an error naming it)."""
    manifest = json.loads((chunks / MANIFEST).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for entry in manifest["files"]:
        target = dest / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with target.open("wb") as f:
            for name in entry["parts"]:
                part = chunks / name
                if not part.is_file():
                    raise SystemExit(f"{entry['path']}: part {name} is missing from {chunks}")
                data = part.read_bytes()
                digest.update(data)
                f.write(data)
        if digest.hexdigest() != entry["sha256"] or target.stat().st_size != entry["size"]:
            raise SystemExit(f"{entry['path']}: sha256 mismatch after joining (a corrupt part)")


def run(args: argparse.Namespace) -> dict:
    import torch

    from tokenskip.evaluation.run import EvalConfig, run_eval
    from tokenskip.trainers.control import ControlSettings
    from tokenskip.trainers.sft import LoraSettings, TrainSettings
    from tokenskip.trainers.tokenskip_run import TokenSkipConfig, run_tokenskip

    out = Path(args.out)
    gpu = torch.cuda.is_available()
    stages: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu"}
    t0 = time.perf_counter()
    config = TokenSkipConfig(
        model=args.model, out_dir=str(out / "train"), data=args.data, limit=args.train_limit,
        cot_source=args.cot_source, collect_max_new_tokens=args.max_new_tokens,
        collect_batch_size=args.batch_size, grid=tuple(args.grid), scorer=args.scorer,
        train=TrainSettings(lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r),
                            learning_rate=args.lr, epochs=args.epochs,
                            max_steps=args.max_steps or -1, batch_size=args.train_batch_size,
                            save_steps=args.save_steps, precision="auto"),
    )  # fmt: skip
    control = None
    if args.control_every:
        control = ControlSettings(every=args.control_every, questions=args.control_questions,
                                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                  data=args.data)  # fmt: skip
    meta = run_tokenskip(config, progress=not args.no_progress, control=control)
    stages["train"] = {"seconds": round(time.perf_counter() - t0, 1),
                       "data": meta["data"], "training": {
                           k: v for k, v in meta["training"].items() if k != "config"}}  # fmt: skip
    t1 = time.perf_counter()
    ratios = sorted({1.0, *args.grid}, reverse=True)
    report = run_eval(
        EvalConfig(
            model=args.model, adapter=str(out / "train" / "adapter"), data=args.data,
            limit=args.test_limit, ratios=tuple(ratios), methods=("original", "tokenskip"),
            budgets=(args.max_new_tokens,), batch_size=args.batch_size,
            dtype="bfloat16" if gpu else "float32", latency_samples=0,
            out_dir=str(out / "eval"),
        ),
        command=" ".join(sys.argv), progress=not args.no_progress,
    )  # fmt: skip
    stages["eval"] = {"seconds": round(time.perf_counter() - t1, 1),
                      "markdown": str(Path(report["paths"]["markdown"]).relative_to(out))}  # fmt: skip
    stages["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "recipe.json").write_text(json.dumps(stages, indent=2, default=str) + "\n")
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="cut a model directory into <= 60 MiB chunk folders")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--chunk-mib", type=float, default=60)
    j = sub.add_parser("join", help="put the chunks (all in one folder) back together")
    j.add_argument("chunks", type=Path)
    j.add_argument("dest", type=Path)
    r = sub.add_parser("run", help="collect, compress, train and evaluate")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--data", default=None, help="GSM8K directory (default: the shared data)")
    r.add_argument("--train-limit", type=int, default=None, help="train problems (default: all)")
    r.add_argument("--test-limit", type=int, default=None, help="test problems (default: all)")
    r.add_argument("--grid", type=lambda v: [float(x) for x in v.split(",")],
                   default=[0.5, 0.6, 0.7, 0.8, 0.9])  # fmt: skip
    r.add_argument("--cot-source", choices=("model", "reference"), default="model")
    r.add_argument("--scorer", default="self-info")
    r.add_argument("--max-new-tokens", type=int, default=512)
    r.add_argument("--batch-size", type=int, default=64, help="generation batch")
    r.add_argument("--train-batch-size", type=int, default=16)
    r.add_argument("--epochs", type=float, default=3.0)
    r.add_argument("--max-steps", type=int, default=None)
    r.add_argument("--save-steps", type=int, default=200)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--lora-r", type=int, default=8)
    r.add_argument("--control-every", type=int, default=0)
    r.add_argument("--control-questions", type=int, default=100)
    r.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.command == "split":
        folders = split(args.src, args.out, int(args.chunk_mib * 1024 * 1024))
        print(json.dumps({"folders": [str(f) for f in folders]}))
    elif args.command == "join":
        join(args.chunks, args.dest)
        print(f"joined into {args.dest}")
    else:
        print(json.dumps(run(args), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
