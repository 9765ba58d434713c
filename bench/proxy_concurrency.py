"""Part 3 of the proxy benchmark: concurrent clients against the embedded local model.

``tokenskip serve`` without a config serves SmolLM2-135M in-process, batching concurrent
requests (up to ``local_max_batch``, default 8, per step). The same short GSM8K questions
(greedy, ``max_tokens`` 32) are asked one at a time, then all at once from concurrent
clients; every request must come back 200 with non-empty content. The speedup is sequential
wall time over concurrent wall time. Greedy decoding should give the same text either way;
the count of identical answers is reported beside it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import targets
from servers import ServerPool, free_port

LOCAL_MODEL = "smollm2"
MAX_TOKENS = 32
QUESTION_POOL = 1000


def short_questions(path: Path, num: int) -> list[str]:
    """The ``num`` shortest of the first GSM8K train questions, in file order."""
    with path.open(encoding="utf-8") as f:
        pool = [json.loads(line)["question"] for _, line in zip(range(QUESTION_POOL), f)]
    keep = set(sorted(range(len(pool)), key=lambda i: (len(pool[i]), i))[:num])
    return [q for i, q in enumerate(pool) if i in keep]


async def ask(client: Any, question: str) -> dict[str, Any]:
    """One request: status, latency, content and completion tokens (never raises)."""
    import openai

    t0 = time.perf_counter()
    try:
        response = await client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": question}],
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
    except openai.APIStatusError as exc:
        return {"status": exc.status_code, "ms": _ms(t0), "error": str(exc)[:300]}
    except openai.APIError as exc:
        return {"status": 0, "ms": _ms(t0), "error": str(exc)[:300]}
    content = response.choices[0].message.content or ""
    tokens = response.usage.completion_tokens if response.usage else 0
    return {"status": 200, "ms": _ms(t0), "content": content, "completion_tokens": tokens}


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


async def sequential(client: Any, questions: list[str]) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    results = [await ask(client, q) for q in questions]
    return results, time.perf_counter() - started


async def concurrent(client: Any, questions: list[str]) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(ask(client, q) for q in questions))
    return list(results), time.perf_counter() - started


def summarize(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    ok = [r for r in results if r["status"] == 200]
    tokens = sum(r.get("completion_tokens", 0) for r in ok)
    return {
        "num_requests": len(results),
        "num_200": len(ok),
        "num_nonempty": sum(1 for r in ok if r["content"].strip()),
        "statuses": sorted({r["status"] for r in results}),
        "first_error": next((r["error"] for r in results if "error" in r), None),
        "wall_s": seconds,
        "completion_tokens": tokens,
        "completion_tokens_per_s": tokens / seconds,
        "requests_per_s": len(ok) / seconds,
        "median_latency_ms": statistics.median(r["ms"] for r in results),
        "max_latency_ms": max(r["ms"] for r in results),
    }


async def _measure(port: int, key: str, questions: list[str]) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=600
    )
    async with client:
        warm = await ask(client, questions[0])
        seq, seq_s = await sequential(client, questions)
        conc, conc_s = await concurrent(client, questions)
    same = sum(
        1
        for a, b in zip(seq, conc)
        if a["status"] == b["status"] == 200 and a["content"] == b["content"]
    )
    return {
        "warmup": {k: v for k, v in warm.items() if k != "content"},
        "sequential": summarize(seq, seq_s),
        "concurrent": summarize(conc, conc_s),
        "speedup": seq_s / conc_s,
        "num_identical_answers": same,
        "answers": [
            {"question": q, "sequential": a.get("content"), "concurrent": b.get("content")}
            for q, a, b in zip(questions, seq, conc)
        ],
    }


def run(args: Any, work_dir: Path) -> dict[str, Any]:
    questions = short_questions(args.data, args.clients)
    key = targets.new_master_key()
    with ServerPool(work_dir / "logs", targets.base_env()) as pool:
        launch = targets.tokenskip_proxy(
            "tokenskip-local", free_port(), work_dir, key, torch_threads=args.server_threads
        )
        server = targets.start(pool, launch, args.startup_timeout)
        result = asyncio.run(
            asyncio.wait_for(_measure(server.port, key, questions), args.time_budget)
        )
        result["servers"] = {"tokenskip": launch.describe(server)}
    result.update(
        num_clients=len(questions),
        max_tokens=MAX_TOKENS,
        model=LOCAL_MODEL,
        server_torch_threads=args.server_threads or "torch default",
    )
    return result
