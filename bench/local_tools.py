"""Tool calls from a real tool-tuned local model: does Qwen2.5-Coder's own ``<tool_call>``
output come back as OpenAI ``tool_calls``?

    .venv/bin/python bench/local_tools.py --model qwen2.5-coder-0.5b

Each case is a user request and two offered functions (``get_weather(city)``,
``convert_currency(amount, from, to)``); the local backend renders them through the model's
chat template, generates greedily with ``tool_choice: auto``, and parses the answer. A case
counts as a call when the model's text parsed into ``tool_calls``; as right when the function
and its arguments are the expected ones; the chit-chat cases expect no call. Every raw text
is kept in the JSON. Results: ``reports/local_tools.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import torch
from provenance import command_line

from tokenskip.models import load_model
from tokenskip.provenance import provenance
from tokenskip.proxy.infra.backends.local import LocalBackend

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city's name"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money from one currency to another",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from": {"type": "string", "description": "ISO code, e.g. USD"},
                    "to": {"type": "string", "description": "ISO code, e.g. EUR"},
                },
                "required": ["amount", "from", "to"],
            },
        },
    },
]
CASES = [
    ("What's the weather like in Paris right now?", "get_weather", {"city": "Paris"}),
    ("Is it raining in Tokyo?", "get_weather", {"city": "Tokyo"}),
    ("Tell me the current weather in Nairobi.", "get_weather", {"city": "Nairobi"}),
    ("How warm is it in Oslo today?", "get_weather", {"city": "Oslo"}),
    ("Convert 100 USD to EUR.", "convert_currency", {"amount": 100, "from": "USD", "to": "EUR"}),
    (
        "How many Japanese yen is 25 British pounds?",
        "convert_currency",
        {"amount": 25, "from": "GBP", "to": "JPY"},
    ),  # fmt: skip
    (
        "Change 70 euros into Swiss francs.",
        "convert_currency",
        {"amount": 70, "from": "EUR", "to": "CHF"},
    ),  # fmt: skip
    ("Write a haiku about autumn.", None, None),
    ("What is 12 times 7?", None, None),
    ("Say hello in Spanish.", None, None),
]


def _same(got: dict, want: dict) -> bool:
    def norm(v):
        return v.lower() if isinstance(v, str) else float(v) if isinstance(v, int | float) else v

    return {k: norm(v) for k, v in got.items()} == {k: norm(v) for k, v in want.items()}


async def run(backend: LocalBackend, model: str, max_tokens: int) -> list[dict]:
    rows = []
    for question, name, arguments in CASES:
        t0 = time.perf_counter()
        params = {"tools": TOOLS, "tool_choice": "auto", "max_tokens": max_tokens}
        done = await backend.complete(model, [{"role": "user", "content": question}], params)
        calls = done.tool_calls or []
        got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
        right = (
            not calls
            if name is None
            else len(got) == 1 and got[0][0] == name and _same(got[0][1], arguments)
        )
        rows.append(
            {
                "question": question,
                "expected": None if name is None else {"name": name, "arguments": arguments},
                "finish_reason": done.finish_reason,
                "content": done.text,
                "tool_calls": calls,
                "called": bool(calls),
                "right": right,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"{'ok ' if right else 'BAD'} {question!r}: {got or repr(done.text[:60])}", flush=True
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "reports/local_tools.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    loaded = load_model(args.model)
    backend = LocalBackend()
    backend.add_engine(args.model, loaded.model, loaded.tokenizer, max_batch=1, adapters={})
    backend.serve(args.model, args.model, None)
    if not backend.supports_tools(args.model):
        raise SystemExit(f"{args.model}'s chat template defines no tool calls")
    try:
        rows = asyncio.run(run(backend, args.model, args.max_tokens))
    finally:
        backend.close()
    expect_call = [r for r in rows if r["expected"]]
    expect_text = [r for r in rows if not r["expected"]]
    data = {
        "model": args.model,
        "cases": len(rows),
        "calls_expected": len(expect_call),
        "calls_right": sum(r["right"] for r in expect_call),
        "calls_parsed": sum(r["called"] for r in expect_call),
        "texts_expected": len(expect_text),
        "texts_right": sum(r["right"] for r in expect_text),
        "rows": rows,
        "command": command_line(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        **provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    la = data["load_average"]
    lines = [
        "# Tool calls from a local model",
        "",
        f"{args.model} (float32, CPU, {args.threads} threads), greedy, `tool_choice: auto`, two "
        f"functions offered; load average {la['before'][0]:.2f} → {la['after'][0]:.2f}. "
        f"Command: `{data['command']}`. Raw texts in the JSON.",
        "",
        f"- requests that need a tool: {data['calls_parsed']} of {data['calls_expected']} came "
        f"back as OpenAI `tool_calls`, {data['calls_right']} with the expected function and "
        "arguments;",
        f"- requests that need none: {data['texts_right']} of {data['texts_expected']} answered "
        "in text.",
        "",
        "| request | expected | finish | tool_calls / text |",
        "|---|---|---|---|",
    ]
    for r in rows:
        want = "text" if not r["expected"] else f"`{r['expected']['name']}`"
        got = "; ".join(
            f"`{c['function']['name']}({c['function']['arguments']})`" for c in r["tool_calls"]
        ) or r["content"][:80].replace("\n", " ").replace("|", "/")
        lines.append(f"| {r['question']} | {want} | {r['finish_reason']} | {got} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
