"""Local decode speed, side by side in one run: HF generate vs the engine vs the engine with
self-speculative layer skipping, greedy, on GSM8K prompts; identical output is checked.

    .venv/bin/python bench/local_runtime.py --prompts 50 --max-new-tokens 128 [--skip 12,14,16]

Batch 1 runs every prompt alone; batch 8 submits all prompts to the engine (8 rows at a time,
continuous batching) and runs HF generate on left-padded groups of 8. Speculation serves a
lone greedy request, so it is reported at batch 1 only. Results: reports/local_runtime.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import command_line  # noqa: E402

from evaluation import gsm8k  # noqa: E402
from evaluation.report import provenance  # noqa: E402
from proxy.local.engine import Engine, GenerationRequest  # noqa: E402
from proxy.local.runner import Runner  # noqa: E402
from proxy.local.speculative import (  # noqa: E402
    CALIBRATION_TEXTS,
    SpeculativeSettings,
    calibrate,
)
from tokenskip.models import load_model  # noqa: E402


def engine_run(engine: Engine, prompts: list[list[int]], n: int, together: bool) -> tuple:
    outs: list[list[int]] = [[] for _ in prompts]
    t0 = time.perf_counter()
    if together:
        done = threading.Semaphore(0)
        reqs = []
        for p in prompts:
            r = GenerationRequest(prompt_ids=p, max_new_tokens=n)
            r.on_done = lambda _: done.release()
            reqs.append(r)
            engine.submit(r)
        for _ in reqs:
            done.acquire()
        outs = [r.output_ids for r in reqs]
    else:
        for i, p in enumerate(prompts):
            ev = threading.Event()
            r = GenerationRequest(prompt_ids=p, max_new_tokens=n)
            r.on_done = lambda _, ev=ev: ev.set()
            engine.submit(r)
            ev.wait()
            outs[i] = r.output_ids
    return outs, time.perf_counter() - t0


@torch.inference_mode()
def hf_run(model, tokenizer, prompts, n, batch, eos) -> tuple:
    outs = []
    t0 = time.perf_counter()
    tokenizer.padding_side = "left"
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        width = max(len(p) for p in group)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
        )
        for row in gen[:, width:].tolist():
            out = []
            for t in row:
                if t in eos:
                    break
                out.append(t)
            outs.append(out)
    return outs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--skip", default=None, help="skip set (default: calibrate)")
    ap.add_argument("--target", type=float, default=0.8, help="calibration agreement target")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--out", default="reports/local_runtime.json")
    args = ap.parse_args()

    loaded = load_model(args.model)
    tok, model = loaded.tokenizer, loaded.model
    problems = gsm8k.load_gsm8k(split="test", limit=args.prompts).problems
    prompts = [
        list(
            tok.apply_chat_template(
                gsm8k.build_messages(p.question),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        for p in problems
    ]
    n = args.max_new_tokens
    runner = Runner(model, tok)
    eos = runner.eos_ids
    if args.skip:
        skip = tuple(int(x) for x in args.skip.split(","))
        calibration = None
    else:
        samples = [tok.encode(t) for t in CALIBRATION_TEXTS]
        cal = calibrate(model, samples, target=args.target)
        skip, calibration = tuple(cal.skip), cal.__dict__
    rows = {}

    def record(name, outs, wall, batch, ref=None, **extra):
        tokens = sum(len(o) for o in outs)
        rows[name] = {
            "batch": batch,
            "tokens": tokens,
            "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2),
            "identical_to_hf": None if ref is None else outs == ref,
            **extra,
        }
        print(name, json.dumps(rows[name]))

    hf1, w = hf_run(model, tok, prompts, n, 1, eos)
    record("hf_generate_b1", hf1, w, 1)
    plain = Engine(runner, max_batch=8)
    outs, w = engine_run(plain, prompts, n, together=False)
    record("engine_b1", outs, w, 1, hf1)
    plain.close()
    spec = Engine(runner, max_batch=8, speculative=SpeculativeSettings(skip=skip, k=args.k))
    outs, w = engine_run(spec, prompts, n, together=False)
    record("engine_speculative_b1", outs, w, 1, hf1, speculative=spec.spec_stats.to_dict())
    spec.close()
    hf8, w = hf_run(model, tok, prompts, n, 8, eos)
    record("hf_generate_b8", hf8, w, 8, hf1)
    plain = Engine(runner, max_batch=8)
    outs, w = engine_run(plain, prompts, n, together=True)
    record("engine_b8", outs, w, 8, hf1)
    plain.close()

    base = rows["hf_generate_b1"]["tokens_per_s"]
    report = {
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": n,
        "skip": list(skip),
        "calibration": calibration,
        "rows": rows,
        "speedup_vs_hf_b1": {k: round(v["tokens_per_s"] / base, 3) for k, v in rows.items()},
        "command": command_line(),
        **provenance(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
