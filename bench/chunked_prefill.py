"""A running stream's inter-token latency while a long prompt is admitted, with and without
chunked prefill (Sarathi), on the local engine; greedy outputs checked equal.

    .venv/bin/python bench/chunked_prefill.py --model qwen2.5-coder-1.5b --dtype bfloat16 \\
        --prompt-tokens 2000 --chunks 0,32,64

One request decodes (a short chat prompt, greedy); once it has produced ``--warmup`` tokens
a long prompt (``--prompt-tokens`` of meaning-set text and a question) is submitted. The
stream's gaps between tokens are recorded over its whole run; the report gives their median
and p99, the worst gap, the gaps while the long prompt was being admitted, and the long
prompt's time to first token. Chunk 0 is one prefill of the whole prompt. Results:
``reports/chunked_prefill.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from provenance import command_line

from tokenskip.models import load_model
from tokenskip.provenance import provenance
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNING = "Write the numbers from one to three hundred in words, separated by commas."


def chat(tokenizer, text: str) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


def long_prompt(tokenizer, tokens: int) -> list[int]:
    texts = [
        json.loads(line)["text"]
        for line in (REPO_ROOT / "bench/data/meaning/texts.jsonl").read_text().splitlines()
    ]
    body, i = "", 0
    while len(tokenizer.encode(body)) < tokens:
        body += texts[i % len(texts)] + "\n\n"
        i += 1
    ids = tokenizer.encode(body)[:tokens]
    return chat(tokenizer, tokenizer.decode(ids) + "\n\nWhich of these documents is a lease?")


def run(engine: Engine, running_ids, long_ids, new_tokens: int, warmup: int) -> dict:
    times: list[float] = []
    begun = threading.Event()
    running = GenerationRequest(prompt_ids=running_ids, max_new_tokens=new_tokens)
    long = GenerationRequest(prompt_ids=long_ids, max_new_tokens=16)

    def on_delta(_text: str) -> None:
        times.append(time.perf_counter())
        if len(times) >= warmup:
            begun.set()

    running.on_delta = on_delta
    done = threading.Semaphore(0)
    running.on_done = long.on_done = lambda _r: done.release()
    engine.submit(running)
    if not begun.wait(600):
        raise SystemExit("the running request produced no tokens")
    long.submitted_at = time.perf_counter()
    engine.submit(long)
    for _ in range(2):
        if not done.acquire(timeout=1800):
            raise SystemExit("timed out")
    gaps = np.diff(times) * 1000
    stamps = np.array(times[1:])
    window = (stamps > long.submitted_at) & (stamps <= (long.first_token_at or stamps[-1]))
    return {
        "running_tokens": len(running.output_ids),
        "itl_p50_ms": float(np.median(gaps)),
        "itl_p99_ms": float(np.percentile(gaps, 99)),
        "itl_max_ms": float(gaps.max()),
        "p99_over_p50": float(np.percentile(gaps, 99) / np.median(gaps)),
        "gaps_while_admitting": int(window.sum()),
        "itl_while_admitting_p50_ms": float(np.median(gaps[window])) if window.any() else None,
        "itl_while_admitting_p99_ms": (
            float(np.percentile(gaps[window], 99)) if window.any() else None
        ),
        "long_ttft_s": (long.first_token_at - long.submitted_at) if long.first_token_at else None,
        "chunks": engine.num_chunks,
        "outputs": [running.output_ids, long.output_ids],
        "texts": [running.text, long.text],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--prompt-tokens", type=int, default=2000)
    ap.add_argument("--chunks", default="0,32,64", help="chunk sizes; 0 = whole prompt")
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "reports/chunked_prefill.json")
    ap.add_argument("--render", type=Path, help="only re-render the Markdown of this JSON")
    args = ap.parse_args()
    if args.render:
        render(json.loads(args.render.read_text()), args.render.with_suffix(".md"))
        return
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    loaded = load_model(args.model, dtype=getattr(torch, args.dtype))
    tok = loaded.tokenizer
    running_ids, long_ids = chat(tok, RUNNING), long_prompt(tok, args.prompt_tokens)
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        engine = Engine(Runner(loaded.model, tok), max_batch=4, prefill_chunk=chunk or None)
        try:
            result = run(engine, running_ids, long_ids, args.new_tokens, args.warmup)
        finally:
            engine.close()
        rows.append({"prefill_chunk": chunk or None, **result})
        print(
            f"chunk {chunk or 'whole':>5}: itl p50 {result['itl_p50_ms']:.0f} ms, "
            f"p99 {result['itl_p99_ms']:.0f} ms ({result['p99_over_p50']:.1f}×), max "
            f"{result['itl_max_ms']:.0f} ms; long TTFT {result['long_ttft_s']:.1f} s",
            flush=True,
        )
    for r in rows:
        r["same_as_whole"] = r["outputs"] == rows[0]["outputs"]
    data = {
        "model": args.model,
        "dtype": args.dtype,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "warmup": args.warmup,
        "prompt_tokens": len(long_ids),
        "running_prompt": RUNNING,
        "rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows],
        "command": command_line(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        **provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    render(data, args.out.with_suffix(".md"))


def render(data: dict, where: Path) -> None:
    la = data["load_average"]
    lines = [
        "# Chunked prefill: a running stream while a long prompt arrives",
        "",
        f"{data['model']} ({data['dtype']}, CPU, {data.get('threads', 2)} threads); one greedy "
        f"stream decoding ({data.get('new_tokens', '')} tokens at most), a "
        f"{data['prompt_tokens']}-token prompt submitted after its first "
        f"{data.get('warmup', 8)} tokens. Load average {la['before'][0]:.2f} → "
        f"{la['after'][0]:.2f}. Command: `{data['command']}`. Texts of both requests per mode "
        "in the JSON.",
        "",
        "| prefill | stream ITL p50 | p99 | p99 / p50 | worst gap | gaps while admitting "
        "| their p50 | their p99 / stream p50 | long prompt TTFT | chunks | greedy texts = whole |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    whole = data["rows"][0]["texts"]
    for r in data["rows"]:
        mode = f"chunks of {r['prefill_chunk']}" if r["prefill_chunk"] else "whole prompt"
        during = r["itl_while_admitting_p50_ms"]
        worst = r["itl_while_admitting_p99_ms"]
        ratio = "" if worst is None else f"{worst / r['itl_p50_ms']:.1f}×"
        same = "yes" if r["texts"] == whole else "no"
        lines.append(
            f"| {mode} | {r['itl_p50_ms']:.0f} ms | {r['itl_p99_ms']:.0f} ms "
            f"| {r['p99_over_p50']:.1f}× | {r['itl_max_ms']:.0f} ms | {r['gaps_while_admitting']} "
            f"| {'' if during is None else f'{during:.0f} ms'} | {ratio} "
            f"| {r['long_ttft_s']:.1f} s | {r['chunks']} | {same} |"
        )
    where.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
