"""What ``tokenskip.wrap`` adds to an SDK call: the plain ``openai`` client beside the wrapped
one, against the fast upstream on loopback, one call at a time.

    .venv/bin/python bench/sdk_wrap.py --calls 300

Three requests, each sent ``--calls`` times by each client after a warm-up:

- ``short``: one short user message (nothing to compress: the pass-through cost);
- ``document``: six ~300-token documents in ``<document>`` markup and a question (ranked
  against it at the default ``document_ratio`` 0.3, words dropped at ``prompt_ratio`` 0.5;
  the memo answers a resent text, as in an agent loop);
- ``document, fresh``: the same document with one number changed on every call, so every
  call compresses afresh.

The report gives each client's median and p99 latency, the wrapper's added median, and the
prompt tokens it saved. Results: ``reports/sdk_wrap.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import openai
import targets
from provenance import command_line
from servers import ServerPool, free_port

import tokenskip
from tokenskip.provenance import provenance

REPO_ROOT = Path(__file__).resolve().parents[1]


def document(seed: int) -> str:
    texts = [
        json.loads(line)["text"]
        for line in (REPO_ROOT / "bench/data/meaning/texts.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] != "tool_output"
    ]
    docs = "\n".join(
        f'<document index="{i + 1}">\n{text}\n</document>' for i, text in enumerate(texts[:6])
    )
    return f"Ticket {seed}.\n\n<documents>\n{docs}\n</documents>"


def timed(client, messages_for, calls: int) -> tuple[list[float], int]:
    times, saved = [], 0
    for i in range(calls):
        messages = messages_for(i)
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=targets.MODEL, messages=messages, max_tokens=8)
        times.append((time.perf_counter() - t0) * 1000)
        saved += getattr(r, "tokenskip", {}).get("prompt_tokens_saved", 0)
    return times, saved


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.99 * len(values))) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "reports/sdk_wrap.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    question = "\n\nWhich of these documents limits the credit an agent may apply, and to what?"
    requests = {
        "short": lambda i: [{"role": "user", "content": "What is the capital of Italy?"}],
        "document": lambda i: [{"role": "user", "content": document(0) + question}],
        "document, fresh": lambda i: [{"role": "user", "content": document(i + 1) + question}],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ServerPool(Path(tmp)) as pool:
        port = free_port()
        targets.start(pool, targets.upstream(port))
        base = f"http://127.0.0.1:{port}/v1"
        plain = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
        wrapped = tokenskip.wrap(openai.OpenAI(base_url=base, api_key="x", max_retries=0))
        for name, messages_for in requests.items():
            timed(plain, messages_for, args.warmup)
            timed(wrapped, lambda i, f=messages_for: f(10_000 + i), args.warmup)
            plain_ms, _ = timed(plain, messages_for, args.calls)
            wrapped_ms, saved = timed(wrapped, messages_for, args.calls)
            row = {
                "request": name,
                "calls": args.calls,
                "plain_p50_ms": statistics.median(plain_ms),
                "plain_p99_ms": p99(plain_ms),
                "wrapped_p50_ms": statistics.median(wrapped_ms),
                "wrapped_p99_ms": p99(wrapped_ms),
                "added_p50_ms": statistics.median(wrapped_ms) - statistics.median(plain_ms),
                "prompt_tokens_saved_per_call": saved / args.calls,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    data = {
        "rows": rows,
        "command": command_line(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        **provenance(),
    }
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    la = data["load_average"]
    lines = [
        "# tokenskip.wrap: what it adds to an SDK call",
        "",
        "The official `openai` client, plain and wrapped (default policy, SmolLM2 counting, "
        "heuristic scorer), against the fast upstream on loopback (uvicorn, uvloop), one call "
        f"at a time, {args.calls} calls each after {args.warmup} warm-up calls. Load average "
        f"{la['before'][0]:.2f} → {la['after'][0]:.2f}. Command: `{data['command']}`.",
        "",
        "| request | plain p50 | plain p99 | wrapped p50 | wrapped p99 | added p50 "
        "| prompt tokens saved per call |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['request']} | {r['plain_p50_ms']:.2f} ms | {r['plain_p99_ms']:.2f} ms "
            f"| {r['wrapped_p50_ms']:.2f} ms | {r['wrapped_p99_ms']:.2f} ms "
            f"| {r['added_p50_ms']:+.2f} ms | {r['prompt_tokens_saved_per_call']:.0f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
