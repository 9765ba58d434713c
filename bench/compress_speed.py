"""Speed of the compression core and of the gateway's prompt step, and lossless savings.

Measures, on one core (torch and numpy single-threaded), each figure the median of
``--repeats`` runs after a warm-up, with the cyclic collector frozen after setup as the
gateway does at start:

1. heuristic scoring throughput: ``HeuristicScorer.score`` tokens per second on ~100k
   tokens of prose;
2. end-to-end compression of a ~4k-token prompt (context prose from the meaning set) with
   the heuristic scorer at γ = 0.7, guards on: milliseconds;
3. pass-through cost of the gateway's prompt step (``tokenskip.proxy.serving.prompt.compress_messages`` under
   the default policy) on chats that hold nothing to compress, 1k to 64k tokens of system
   prompt: milliseconds, which must not grow with the prompt;
4. the agent chat of the Headroom comparison: a system prompt, a user turn, an assistant
   tool call and a ~34k-token JSON tool output of 300 records. Tokens saved by the default
   policy (lossless), against the same records as minified JSON and as plain CSV
   (``json_normalize``-style dotted columns), and the milliseconds the prompt step adds.

Writes ``--out`` (JSON) and the Markdown beside it.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from provenance import run_facts, write_report

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXTS = REPO_ROOT / "bench" / "data" / "meaning" / "texts.jsonl"


def timed(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def tool_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """API-style records: an issue tracker's search result (nested user, labels, nulls)."""
    rng = random.Random(seed)
    words = "crash timeout docs parser cache retry memory login export import upload".split()
    out = []
    for i in range(n):
        out.append(
            {
                "id": 2_000_000 + i * 37,
                "number": 4000 + i,
                "title": " ".join(rng.sample(words, 3)).capitalize(),
                "state": rng.choice(["open", "closed"]),
                "locked": False,
                "user": {
                    "login": rng.choice(["alice", "bob", "carol", "dmitri", "eve"]),
                    "id": rng.randint(1000, 9999),
                    "type": "User",
                    "site_admin": False,
                },
                "labels": rng.sample(
                    ["bug", "docs", "perf", "good first issue"], rng.randint(0, 2)
                ),
                "comments": rng.randint(0, 40),
                "created_at": f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                "closed_at": None,
                "author_association": rng.choice(["MEMBER", "CONTRIBUTOR", "NONE"]),
                "score": 1.0,
            }
        )
    return out


def as_csv(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        row: dict[str, Any] = {}
        for k, v in r.items():
            if isinstance(v, dict):
                row.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            elif isinstance(v, list):
                row[k] = json.dumps(v)
            else:
                row[k] = "" if v is None else v
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=21, help="timed runs per figure")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "compress_speed.json")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from tokenskip import compress
    from tokenskip.models import load_tokenizer
    from tokenskip.proxy.infra.policy import CompressionPolicy
    from tokenskip.proxy.serving.prepare import prompt_settings
    from tokenskip.proxy.serving.prompt import compress_messages
    from tokenskip.scorers import CachedScorer, HeuristicScorer
    from tokenskip.tokens import TextTokenizer

    tokenizer = TextTokenizer(load_tokenizer("smollm2"), "smollm2")
    heuristic = HeuristicScorer(tokenizer)
    texts = [json.loads(line) for line in TEXTS.read_text().splitlines()]
    prose = "\n\n".join(t["text"] for t in texts if t["kind"] != "tool_output")
    load_before = os.getloadavg()
    gc.collect()
    gc.freeze()
    results: dict[str, Any] = {}

    # 1. scoring throughput
    big = tokenizer.encode((prose + "\n\n") * 2).ids
    seconds = timed(lambda: heuristic.score(big), args.repeats)
    results["heuristic_scoring"] = {
        "tokens": len(big),
        "seconds": seconds,
        "tokens_per_second": len(big) / seconds,
    }

    # 2. a 4k-token prompt, end to end
    doc, num = [], 0
    for t in texts:
        if t["kind"] in ("tool_output", "system_prompt"):
            continue
        doc.append(t["text"])
        num = tokenizer.count("\n\n".join(doc))
        if num >= 4000:
            break
    doc_text = "\n\n".join(doc)
    scorer = CachedScorer(heuristic)
    ms = timed(lambda: compress(doc_text, 0.7, tokenizer=tokenizer, scorer=scorer), args.repeats)
    r = compress(doc_text, 0.7, tokenizer=tokenizer, scorer=scorer)
    uncached = timed(
        lambda: compress(doc_text, 0.7, tokenizer=tokenizer, scorer=heuristic), args.repeats
    )
    results["compress_4k"] = {
        "tokens": r.original_tokens,
        "ratio": 0.7,
        "achieved_ratio": r.achieved_ratio,
        "forced_ratio": r.forced_ratio,
        "ms_scores_cached": ms * 1000,
        "ms": uncached * 1000,
    }

    # 3. pass-through: nothing to compress, growing system prompts
    policy = CompressionPolicy()
    settings = prompt_settings(policy)
    passthrough = []
    for target in (1_000, 8_000, 64_000):
        system = ""
        while tokenizer.count(system) < target:
            system += prose[: 4 * target] + "\n\n"
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": "Which of these rules apply to refunds?"},
        ]
        s = timed(
            lambda m=messages: compress_messages(m, settings, tokenizer=tokenizer, scorer=scorer),
            args.repeats,
        )
        passthrough.append({"system_tokens": tokenizer.count(system), "ms": s * 1000})
    results["passthrough"] = passthrough

    # 4. the agent chat with a JSON tool output
    records = tool_records(300)
    tool_output = json.dumps({"total_count": 300, "items": records}, indent=2)
    chat = [
        {"role": "system", "content": "You are a triage assistant for the widgets repository."},
        {"role": "user", "content": "Which open issues mention a crash? List their numbers."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "search_issues",
                        "arguments": '{"q": "repo:acme/widgets"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": tool_output},
    ]
    # the gateway's critical path: the transform; the savings are counted beside the upstream
    s = timed(
        lambda: compress_messages(chat, settings, tokenizer=tokenizer, scorer=scorer, count=False),
        args.repeats,
    )
    out = compress_messages(chat, settings, tokenizer=tokenizer, scorer=scorer)
    count_s = timed(
        lambda: (tokenizer.count(out.parts[0].before), tokenizer.count(out.parts[0].after)),
        args.repeats,
    )
    original = tokenizer.count(tool_output)
    sent = tokenizer.count(out.messages[3]["content"])
    minified = tokenizer.count(
        json.dumps({"total_count": 300, "items": records}, separators=(",", ":"))
    )
    csv_tokens = tokenizer.count("total_count: 300\n" + as_csv(records))
    from tokenskip.lossless import expand_tables

    results["tool_output_chat"] = {
        "records": len(records),
        "tool_output_tokens": original,
        "sent_tokens": sent,
        "saved_share": 1 - sent / original,
        "minified_json_tokens": minified,
        "minified_saved_share": 1 - minified / original,
        "csv_tokens": csv_tokens,
        "csv_saved_share": 1 - csv_tokens / original,
        "method": out.parts[0].method if out.parts else None,
        "round_trip_exact": expand_tables(out.messages[3]["content"])
        == {"total_count": 300, "items": records},
        "ms_added": s * 1000,
        "ms_counting_beside_upstream": count_s * 1000,
    }
    # 5. question-aware ranking: a 20-document retrieval prompt of ~8k tokens
    from tokenskip import compress_context
    from tokenskip.relevance import bm25, document_spans, terms

    passages = [t["text"] for t in texts if t["kind"] != "tool_output"][:20]
    question = "How many days does the customer have to report damage, and who approves it?"
    retrieval = (
        "\n".join(f'<document index="{i + 1}">\n{p}\n</document>' for i, p in enumerate(passages))
        + f"\n\n{question}"
    )

    def rank() -> Any:
        docs = [retrieval[a:b] for a, b, _ in document_spans(retrieval)]
        return bm25(terms(question), [terms(d) for d in docs])

    rank_s = timed(rank, args.repeats)
    ctx = compress_context(retrieval, 0.3, question, tokenizer=tokenizer, scorer=scorer)
    ctx_s = timed(
        lambda: compress_context(retrieval, 0.3, question, tokenizer=tokenizer, scorer=scorer),
        args.repeats,
    )
    results["retrieval_20_documents"] = {
        "documents": len(passages),
        "tokens": ctx.result.original_tokens,
        "ratio": 0.3,
        "achieved_ratio": ctx.result.achieved_ratio,
        "documents_dropped": ctx.selection.num_dropped,
        "ms_rank": rank_s * 1000,
        "ms_end_to_end": ctx_s * 1000,
    }
    report = {
        "results": results,
        "tokenizer": "smollm2",
        **run_facts(load_before, 1),
    }
    print(write_report(args.out, report, render))


def render(report: dict[str, Any]) -> str:
    r = report["results"]
    h, c, t = r["heuristic_scoring"], r["compress_4k"], r["tool_output_chat"]
    lines = [
        "# Compression speed and lossless savings",
        "",
        f"Machine: {report['machine']}, {report['threads']} torch thread; load average "
        f"before {report['load_average']['before'][0]:.2f}, after "
        f"{report['load_average']['after'][0]:.2f}. Commit `{(report['commit'] or '')[:10]}`"
        f"{' (dirty tree)' if report['dirty'] else ''}. Command: `{report['command']}`. "
        "Medians of repeated runs.",
        "",
        "| figure | measured | target |",
        "|---|--:|---|",
        f"| heuristic scoring ({h['tokens']:,} tokens) | {h['tokens_per_second'] / 1e6:.2f} M tok/s | ≥ 1 M tok/s |",
        f"| compress a {c['tokens']:,}-token prompt, heuristic, γ = 0.7, guards on | {c['ms']:.1f} ms ({c['ms_scores_cached']:.1f} ms with cached scores); achieved {c['achieved_ratio']:.3f}, forced {c['forced_ratio']:.3f} | ≤ 10 ms |",
    ]
    q = r.get("retrieval_20_documents")
    if q:
        lines.append(
            f"| question-aware ranking, {q['documents']} documents, {q['tokens']:,} tokens "
            f"| {q['ms_rank']:.1f} ms (whole compression at γ = 0.3: {q['ms_end_to_end']:.1f} ms, "
            f"achieved {q['achieved_ratio']:.3f}, {q['documents_dropped']} dropped) | ≤ 30 ms |"
        )
    for row in r["passthrough"]:
        lines.append(
            f"| pass-through, {row['system_tokens']:,}-token system prompt | {row['ms']:.3f} ms | ≤ 1 ms |"
        )
    lines += [
        f"| agent chat, {t['tool_output_tokens']:,}-token JSON tool output: prompt step | {t['ms_added']:.1f} ms (+ {t['ms_counting_beside_upstream']:.1f} ms counting the saving, run beside the upstream call) | ≤ 20 ms |",
        "",
        f"## Tool output ({t['records']} records, SmolLM2 tokens)",
        "",
        "| form | tokens | saved |",
        "|---|--:|--:|",
        f"| pretty-printed JSON (as the tool returned it) | {t['tool_output_tokens']:,} | — |",
        f"| minified JSON | {t['minified_json_tokens']:,} | {t['minified_saved_share']:.1%} |",
        f"| plain CSV (dotted columns) | {t['csv_tokens']:,} | {t['csv_saved_share']:.1%} |",
        f"| tokenskip default policy ({t['method']}) | {t['sent_tokens']:,} | **{t['saved_share']:.1%}** |",
        "",
        f"The table decodes back to the exact records: {t['round_trip_exact']}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
