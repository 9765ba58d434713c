"""What each precision mode of a local model costs and buys on this CPU (issue #32).

For each model × mode (``fp32``; ``bf16``; ``int8``: bf16 activations, torchao weight-only
int8 linears; all set by :func:`tokenskip.runtime.precision.apply`, as the gateway's
``local: {dtype, weights}`` does), measured in a fresh process so peak RSS is the mode's own:

- ``load_s``: loading the cached safetensors copy and applying the mode;
- ``weights_mb``: bytes the parameters hold after the mode is applied;
- ``ttft_ms``: one forward pass over a ~1,000-token prompt and the first greedy token;
- ``decode_tok_s_batch1`` / ``decode_tok_s_batch8``: greedy decoding with the KV cache
  (64 new tokens after the long prompt; 32 after a 64-token prompt for 8 rows);
- ``perplexity``: of a fixed 512-token text (the meaning set's first texts);
- ``peak_rss_mb``: the process's peak resident memory;
- ``greedy_agrees_with_fp32``: the share of the 64 greedy tokens equal to fp32's.

GSM8K accuracy per mode is not measured here (``gsm8k_accuracy`` is null): 100 questions
at a 512-token cap take hours per mode for the 1.5B model on two cores.

Run alone (``--threads`` torch threads, default 2); writes ``reports/local_quant.json``
and ``.md``, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provenance import command_line, git

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = {"fp32": ("float32", "none"), "bf16": ("bfloat16", "none"), "int8": ("bfloat16", "int8")}
TEXTS = REPO_ROOT / "bench" / "data" / "meaning" / "texts.jsonl"


def measure(model_name: str, mode: str, threads: int) -> dict[str, Any]:
    """One model × mode, in this process."""
    import torch

    torch.set_num_threads(threads)
    from tokenskip.models import load_model
    from tokenskip.runtime import precision

    t0 = time.perf_counter()
    dtype, weights = MODES[mode]
    loaded = load_model(model_name, dtype=precision.torch_dtype(dtype))  # as the gateway loads it
    precision.apply(loaded.model, dtype, weights, name=model_name)
    load_s = time.perf_counter() - t0
    model, tok = loaded.model, loaded.tokenizer
    weights_mb = (
        sum(
            (p.qdata.nbytes + p.scale.nbytes) if hasattr(p, "qdata") else p.nbytes
            for p in model.parameters()
        )
        / 2**20
    )
    texts = [json.loads(line)["text"] for line in TEXTS.read_text().splitlines()]
    corpus = tok("\n\n".join(texts), return_tensors="pt").input_ids[0]
    prompt = corpus[:1000].unsqueeze(0)

    def greedy(ids: Any, steps: int) -> tuple[list[int], float, float]:
        with torch.no_grad():
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            first = time.perf_counter() - t
            past, tokens = out.past_key_values, [nxt]
            t = time.perf_counter()
            for _ in range(steps - 1):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(nxt)
            decode = time.perf_counter() - t
        return torch.cat(tokens, 1)[0].tolist(), first, decode

    greedy(prompt[:, :32], 4)  # warm up
    tokens, first, decode = greedy(prompt, 64)
    batch = corpus[1000:1064].unsqueeze(0).repeat(8, 1)
    _, _, decode8 = greedy(batch, 32)
    with torch.no_grad():
        ids = corpus[:512].unsqueeze(0)
        loss = model(ids, labels=ids).loss.float().item()
    return {
        "model": model_name,
        "mode": mode,
        "dtype": dtype,
        "weights": weights,
        "load_s": round(load_s, 2),
        "weights_mb": round(weights_mb, 1),
        "ttft_ms": round(first * 1000, 1),
        "prompt_tokens": int(prompt.shape[1]),
        "decode_tok_s_batch1": round(63 / decode, 2),
        "decode_tok_s_batch8": round(8 * 31 / decode8, 2),
        "perplexity": round(float(torch.tensor(loss).exp()), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gsm8k_accuracy": None,
        "greedy_tokens": tokens,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Local model precision modes on this CPU",
        "",
        f"Machine: {report['machine']}; native bf16: {report['native_bf16']}; "
        f"{report['threads']} torch threads; load average before "
        f"{report['load_average']['before']}, after {report['load_average']['after']}. "
        f"Commit `{report['commit'][:10]}`. Command: `{report['command']}`.",
        "",
        "Each mode in a fresh process (so peak RSS is its own). TTFT: one forward pass over a "
        "~1,000-token prompt and the first greedy token. Decode: greedy with the KV cache, 64 "
        "tokens after that prompt (batch 1), 32 tokens for 8 rows of a 64-token prompt "
        "(batch 8). Perplexity: a fixed 512-token text. Agreement: the share of the 64 greedy "
        "tokens equal to fp32's. GSM8K accuracy is not measured (hours per mode for the 1.5B "
        "on two cores).",
        "",
        "| model | mode | weights MB | load s | TTFT ms | decode tok/s (b1) | decode tok/s (b8) "
        "| perplexity | peak RSS MB | greedy = fp32 |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['weights_mb']:,.0f} | {r['load_s']} | "
            f"{r['ttft_ms']:,.0f} | {r['decode_tok_s_batch1']} | {r['decode_tok_s_batch8']} | "
            f"{r['perplexity']} | {r['peak_rss_mb']:,.0f} | {r['greedy_agrees_with_fp32']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="smollm2,qwen2.5-coder-1.5b")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "local_quant.json")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # the child process: one measurement, as JSON on stdout
        print(json.dumps(measure(args.one[0], args.one[1], args.threads)))
        return
    from tokenskip.runtime.precision import native_bf16

    before = os.getloadavg()
    rows = []
    for model in args.models.split(","):
        reference = None
        for mode in args.modes.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--one", model, mode, "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            reference = reference or row["greedy_tokens"]
            row["greedy_agrees_with_fp32"] = sum(
                a == b for a, b in zip(row["greedy_tokens"], reference)
            ) / len(reference)
            rows.append(row)
            print(f"{model} {mode}: {row['decode_tok_s_batch1']} tok/s", file=sys.stderr)
    report = {
        "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "native_bf16": native_bf16(),
        "threads": args.threads,
        "load_average": {
            "before": [round(x, 2) for x in before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "command": command_line(),
        "commit": git("rev-parse", "HEAD") or "",
        "dirty": bool(git("status", "--porcelain")),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
