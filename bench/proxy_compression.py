"""Part 2 of the proxy benchmark: prompt compression through ``tokenskip serve``.

A ~4,000-token user prompt (GSM8K train questions with their worked answers, then one new
question as the last paragraph, which the proxy keeps verbatim) goes through the proxy to the
fast upstream, which counts the prompt it receives with the same SmolLM2 tokenizer. Variants:
``{"enabled": false}`` (the baseline) and ``{"prompt_ratio": 0.5, "scorer": S}`` for each
served scorer, sent with the official ``openai`` client's ``extra_body``.

Every timed request carries a different prompt (a different window of GSM8K), because the
proxy caches scores by token ids: repeating one prompt would time the cache. One repeat of an
already-sent prompt is timed separately as the cache-hit latency. Requests interleave the
variants prompt by prompt, so background load drifts over all of them alike.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import targets
from servers import ServerPool, free_port

SCORERS = ("heuristic", "self-info")
DISABLED = "disabled"
PROMPT_RATIO = 0.5
MAX_TOKENS = 16
USAGE_KEYS = ("prompt_tokens_original", "prompt_tokens", "prompt_tokens_saved")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def variants() -> dict[str, dict[str, Any]]:
    """Name → the request's ``tokenskip`` options."""
    found: dict[str, dict[str, Any]] = {DISABLED: {"enabled": False}}
    for scorer in SCORERS:
        found[scorer] = {"prompt_ratio": PROMPT_RATIO, "scorer": scorer}
    return found


def load_examples(path: Path, limit: int) -> list[dict[str, str]]:
    """GSM8K records (question, answer without ``<<…>>`` annotations), at most ``limit``."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(out) >= limit:
                break
            if line.strip():
                record = json.loads(line)
                out.append(
                    {
                        "question": record["question"],
                        "answer": _CALCULATOR.sub("", record["answer"]),
                    }
                )
    return out


def build_prompts(
    examples: list[dict[str, str]], count: Any, target_tokens: int, num_prompts: int
) -> list[str]:
    """``num_prompts`` prompts of about ``target_tokens`` tokens over disjoint example windows.

    Each: worked examples as context, then the next question as the final paragraph.
    """
    prompts, cursor = [], 0
    for _ in range(num_prompts):
        blocks: list[str] = ["Worked examples:"]
        used = count(blocks[0])
        while cursor + 1 < len(examples):
            ex = examples[cursor]
            block = f"Question: {ex['question']}\nAnswer: {ex['answer']}"
            cost = count(block) + 1
            if used + cost > target_tokens - 120:
                break
            blocks.append(block)
            used += cost
            cursor += 1
        if len(blocks) == 1:
            raise ValueError(f"not enough GSM8K examples for {num_prompts} prompts")
        question = examples[cursor]["question"]
        cursor += 1
        blocks.append(f"Solve this problem step by step the same way: {question}")
        prompts.append("\n\n".join(blocks))
    return prompts


def send(client: Any, prompt: str, options: dict[str, Any]) -> dict[str, Any]:
    """One request; its client-side latency, usage, tokenskip info and x-tokenskip-* headers."""
    t0 = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=targets.MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"tokenskip": options},
    )
    elapsed_ms = (time.perf_counter() - t0) * 1000
    data = raw.parse().model_dump()
    return {
        "ms": elapsed_ms,
        "status": raw.status_code,
        "usage": data.get("usage") or {},
        "tokenskip": data.get("tokenskip") or {},
        "headers": {k: v for k, v in raw.headers.items() if k.startswith("x-tokenskip-")},
    }


def check(sample: dict[str, Any]) -> list[str]:
    """Disagreements between the usage fields, the tokenskip object and the headers."""
    usage, info, headers = sample["usage"], sample["tokenskip"], sample["headers"]
    problems = []
    if usage.get("prompt_tokens_original") != usage.get("prompt_tokens", 0) + usage.get(
        "prompt_tokens_saved", 0
    ):
        problems.append("usage: prompt_tokens_original != prompt_tokens + prompt_tokens_saved")
    if headers.get("x-tokenskip-prompt-tokens-saved") != str(usage.get("prompt_tokens_saved")):
        problems.append("header prompt-tokens-saved != usage.prompt_tokens_saved")
    if headers.get("x-tokenskip-prompt-tokens-original") != str(
        usage.get("prompt_tokens_original")
    ):
        problems.append("header prompt-tokens-original != usage.prompt_tokens_original")
    if info.get("prompt_tokens_original") not in (None, usage.get("prompt_tokens_original")):
        problems.append("tokenskip.prompt_tokens_original != usage.prompt_tokens_original")
    if info.get("prompt_tokens_sent") not in (None, usage.get("prompt_tokens")):
        problems.append("tokenskip.prompt_tokens_sent != usage.prompt_tokens (upstream's count)")
    if headers.get("x-tokenskip-tokens-estimated") != "false":
        problems.append("counts labeled estimated (x-tokenskip-tokens-estimated != false)")
    return problems


def summarize(samples: list[dict[str, Any]], baseline_ms: float | None) -> dict[str, Any]:
    usage = [s["usage"] for s in samples]
    original = [u.get("prompt_tokens_original", 0) for u in usage]
    sent = [u.get("prompt_tokens", 0) for u in usage]
    saved = [u.get("prompt_tokens_saved", 0) for u in usage]
    median_ms = statistics.median(s["ms"] for s in samples)
    problems = sorted({p for s in samples for p in check(s)})
    return {
        "num_requests": len(samples),
        "prompt_tokens_original": statistics.median(original),
        "prompt_tokens_sent": statistics.median(sent),
        "prompt_tokens_saved": statistics.median(saved),
        "keep_ratio": statistics.median(s / o for s, o in zip(sent, original) if o),
        "median_ms": median_ms,
        "min_ms": min(s["ms"] for s in samples),
        "max_ms": max(s["ms"] for s in samples),
        "added_ms": None if baseline_ms is None else median_ms - baseline_ms,
        "example": {
            "usage": {k: usage[0].get(k) for k in USAGE_KEYS},
            "headers": samples[0]["headers"],
        },
        "consistency_problems": problems,
    }


def measure(client: Any, prompts: list[str], time_budget: float) -> dict[str, Any]:
    """Warmup on ``prompts[0]``, then every variant on each later prompt, then cache hits."""
    out: dict[str, Any] = {"samples": {}}
    out["warmup_ms"] = {n: send(client, prompts[0], o)["ms"] for n, o in variants().items()}
    deadline = time.monotonic() + time_budget
    for index, prompt in enumerate(prompts[1:], start=1):
        if time.monotonic() > deadline:
            out["stopped_early"] = f"time budget {time_budget} s spent after {index - 1} prompts"
            break
        for name, options in variants().items():
            out["samples"].setdefault(name, []).append(send(client, prompt, options))
    if not out["samples"]:
        raise RuntimeError(f"the time budget ({time_budget} s) was spent during warmup")
    out["cache_hit_ms"] = {
        name: send(client, prompts[1], options)["ms"]
        for name, options in variants().items()
        if name != DISABLED
    }
    baseline = statistics.median(s["ms"] for s in out["samples"][DISABLED])
    out["summary"] = {
        name: summarize(samples, None if name == DISABLED else baseline)
        for name, samples in out["samples"].items()
    }
    return out


def run(args: Any, work_dir: Path) -> dict[str, Any]:
    import openai

    from tokenskip.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    tokenizer_file = work_dir / "smollm2-tokenizer.json"
    tokenizer.backend_tokenizer.save(str(tokenizer_file))

    def count(text: str) -> int:
        return len(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    num_prompts = args.compression_requests + 1  # + one warmup prompt
    examples = load_examples(args.data, limit=40 * num_prompts)
    prompts = build_prompts(examples, count, args.prompt_tokens, num_prompts)
    key = targets.new_master_key()
    result: dict[str, Any] = {
        "prompt_ratio": PROMPT_RATIO,
        "prompt_tokens_target": args.prompt_tokens,
        "prompt_tokens_built": [count(p) for p in prompts],
        "num_timed_prompts": args.compression_requests,
        "server_torch_threads": args.server_threads or "torch default",
    }
    with ServerPool(work_dir / "logs", targets.base_env()) as pool:
        up = targets.upstream(free_port(), tokenizer_file=tokenizer_file)
        upstream = targets.start(pool, up)
        launch = targets.tokenskip_proxy(
            "tokenskip-compress",
            free_port(),
            work_dir,
            key,
            upstream_port=upstream.port,
            policy={"prompt_min_tokens": 0, "tokenizer": "smollm2"},
            torch_threads=args.server_threads,
        )
        server = targets.start(pool, launch, args.startup_timeout)
        result["servers"] = {
            "upstream": up.describe(upstream),
            "tokenskip": launch.describe(server),
        }
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0, timeout=600
        )
        result.update(measure(client, prompts, args.time_budget))
    return result
