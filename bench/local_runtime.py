"""Local decode speed, side by side in one run: HF generate vs the engine vs the engine with
self-speculative layer skipping (alone, and with prompt-lookup drafts first) vs adaptive
early exit (lossy), greedy, on GSM8K prompts; identical output is checked, and the early
exit's agreement with the full model reported.

    .venv/bin/python bench/local_runtime.py --prompts 50 --max-new-tokens 128 [--skip 12,14,16]
        [--exit-adapter runs/early-exit-smollm2/adapter] [--profile]
        [--modes engine,speculative,lookup,early_exit,batch8]

With --exit-adapter every mode is measured again on base + trained exits (merged), so the
acceptance rate and the early-exit agreement before and after training sit side by side.

Batch 1 runs every prompt alone; batch 8 submits all prompts to the engine (8 rows at a time,
continuous batching) and runs HF generate on left-padded groups of 8. Speculation serves a
lone greedy request, so it is reported at batch 1 only. Results: reports/local_runtime.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch
from provenance import command_line

from tokenskip.models import load_model
from tokenskip.provenance import provenance
from tokenskip.runtime.early_exit import calibrate_exits, self_continued
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner
from tokenskip.runtime.speculative import (
    SpeculativeSettings,
    calibrate,
)
from tokenskip.tasks import gsm8k


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


def prefix_agreement(outs: list[list[int]], ref: list[list[int]]) -> dict:
    """How far lossy outputs follow the full model's: exact rows and the mean share of each
    reference output reproduced before the first differing token."""
    shares, exact = [], 0
    for o, r in zip(outs, ref):
        m = 0
        while m < min(len(o), len(r)) and o[m] == r[m]:
            m += 1
        exact += o == r
        shares.append(m / len(r) if r else 1.0)
    return {
        "identical_rows": exact,
        "rows": len(ref),
        "mean_prefix_share": round(sum(shares) / len(shares), 4) if shares else None,
    }


def profile_decode(runner: Runner, prompt: list[int], n: int, top: int = 15) -> list[dict]:
    """Where batch-1 decode time goes: torch profiler over the engine's hot path (prefill,
    then one decode step per token, greedy), run on this thread so the profiler sees it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        batch = runner.prefill([prompt])
        for _ in range(n):
            token = batch.logits.argmax(-1)
            batch = runner.decode(token, batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in events[:top]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument(
        "--skip", default=None, help="skip set, e.g. 12,14,16, or none (default: calibrate)"
    )
    ap.add_argument("--target", type=float, default=0.8, help="calibration agreement target")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument(
        "--exit-targets",
        default="0.95,0.8",
        help="early-exit calibration agreement targets, one row each",
    )
    ap.add_argument(
        "--exit-adapter",
        default=None,
        help="a tokenskip train early-exit adapter: its rows are measured after the base rows",
    )
    ap.add_argument(
        "--modes",
        default="engine,speculative,lookup,early_exit,batch8",
        help="what to measure besides HF generate at batch 1 (the reference), comma-separated",
    )
    ap.add_argument("--profile", action="store_true", help="add a profile of batch-1 decode")
    ap.add_argument("--out", default="reports/local_runtime.json")
    args = ap.parse_args()
    modes = set(args.modes.split(","))
    known = {"engine", "speculative", "lookup", "early_exit", "batch8"}
    if modes - known:
        ap.error(f"unknown --modes {sorted(modes - known)}: pick from {','.join(sorted(known))}")
    if "lookup" in modes:
        modes.add("speculative")  # the lookup row sits beside the layer-skip-only row

    loaded = load_model(args.model)
    tok, model = loaded.tokenizer, loaded.model
    problems = gsm8k.load_gsm8k(split="test", limit=args.prompts).problems
    prompts = [chat(tok, p.question) for p in problems]
    calib_prompts = [
        chat(tok, p.question) for p in gsm8k.load_gsm8k(split="train", limit=8).problems
    ]
    n = args.max_new_tokens
    rows: dict = {}

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
        print(name, json.dumps(rows[name]), flush=True)
        write(report(partial=True))  # a cut-off run keeps the rows it finished

    stages: dict = {}

    def stage(name: str, since: float) -> None:
        stages[name] = round(time.perf_counter() - since, 1)
        print(f"{name}: {stages[name]} s", flush=True)

    def measure(model, label: str, full: bool = True) -> dict:
        """Every mode on one model (base, or base + trained exits); returns its extras.
        ``full=False`` (the trained model) runs only what the exits change: HF generate (the
        identity reference), speculation and early exit, at batch 1."""
        runner = Runner(model, tok)
        # warm-up (HF generate's first call on a model pays one-off setup): not measured
        hf_run(model, tok, prompts[:1], 4, 1, runner.eos_ids)
        t0 = time.perf_counter()
        # calibration text for both: train questions (never the test prompts), continued
        # greedily by the model itself
        continued = self_continued(model, calib_prompts, tokens=64)
        stage(f"{label}calibration_text", t0)
        hf1, w = hf_run(model, tok, prompts, n, 1, runner.eos_ids)
        record(f"{label}hf_generate_b1", hf1, w, 1)

        def engine_row(name: str, batch: int = 1, extra=lambda engine, outs: {}, **kwargs):
            """Every prompt through a fresh engine (alone at batch 1, all submitted at once
            otherwise), closed after; the row is checked against HF generate at batch 1."""
            engine = Engine(runner, max_batch=8, **kwargs)
            try:
                outs, w = engine_run(engine, prompts, n, together=batch > 1)
            finally:
                engine.close()
            record(f"{label}{name}", outs, w, batch, hf1, **extra(engine, outs))

        if full and "engine" in modes:
            engine_row("engine_b1")
        skip, calibration = (), None
        if "speculative" in modes:
            t0 = time.perf_counter()
            if args.skip == "none":
                skip = ()
            elif args.skip:
                skip = tuple(int(x) for x in args.skip.split(","))
            else:
                cal = calibrate(model, continued, target=args.target)
                skip, calibration = tuple(cal.skip), cal.__dict__
            stage(f"{label}speculative_calibration", t0)
            # layer-skipping drafts only, then with lookup drafts first
            for lookup, name in ((False, "speculative"), (True, "speculative_lookup")):
                if (lookup and "lookup" not in modes) or (not lookup and not skip and args.skip):
                    continue  # (a given empty skip set without lookup is plain decoding)
                engine_row(
                    f"engine_{name}_b1",
                    speculative=SpeculativeSettings(skip=skip, k=args.k, lookup=lookup),
                    extra=lambda e, _: {
                        "speculative": e.spec_stats.to_dict(),
                        "skip": list(skip),
                        "speculation_on": e.speculative is not None,
                    },
                )
        policies = {}
        for target in (float(t) for t in args.exit_targets.split(",") if "early_exit" in modes):
            t0 = time.perf_counter()
            policy = calibrate_exits(model, continued, target=target)
            stage(f"{label}early_exit_calibration_{target:g}", t0)
            engine_row(
                f"engine_early_exit_{target:g}_b1",
                early_exit=policy,
                extra=lambda e, outs: {
                    "early_exit": e.exit_stats.to_dict(),
                    "agreement_with_full_model": prefix_agreement(outs, hf1),
                    "lossy": True,
                },
            )
            policies[f"{target:g}"] = {"layers": policy.layers, "calibration": policy.calibration}
        extra = {"skip": list(skip), "calibration": calibration, "early_exit_policies": policies}
        if full and "batch8" in modes:
            hf8, w = hf_run(model, tok, prompts, n, 8, runner.eos_ids)
            record(f"{label}hf_generate_b8", hf8, w, 8, hf1)
            engine_row("engine_b8", batch=8)
        if args.profile and full:
            extra["profile_engine_b1"] = profile_decode(runner, prompts[0], n)
        return extra

    extras: dict = {"base": None, "trained_exits": None}
    started = provenance()  # the commit and tree the run started from, not where it ended

    def report(partial: bool) -> dict:
        def speedup(name: str) -> float | None:
            # against HF generate on the same model (base, or base + trained exits)
            label = "trained_exits_" if name.startswith("trained_exits_") else ""
            ref = rows.get(f"{label}hf_generate_b1")
            return round(rows[name]["tokens_per_s"] / ref["tokens_per_s"], 3) if ref else None

        return {
            "status": "partial" if partial else "complete",
            "model": args.model,
            "prompts": len(prompts),
            "max_new_tokens": n,
            **extras,
            "exit_adapter": args.exit_adapter,
            "rows": rows,
            "setup_wall_s": stages,
            "speedup_vs_hf_b1": {k: speedup(k) for k in rows},
            "threads": torch.get_num_threads(),
            "command": command_line(),
            **started,
        }

    def write(data: dict) -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(args.out)

    extras["base"] = measure(model, "")
    if args.exit_adapter:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(load_model(args.model).model, args.exit_adapter)
        extras["trained_exits"] = measure(
            tuned.merge_and_unload().eval(), "trained_exits_", full=False
        )
    write(report(partial=False))
    print(f"wrote {args.out}")


def chat(tok, question: str) -> list[int]:
    return list(
        tok.apply_chat_template(
            gsm8k.build_messages(question),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


if __name__ == "__main__":
    main()
