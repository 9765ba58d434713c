"""Query-OPT on a local model: N queries per call vs one call per query, on GSM8K.

For each N: groups of N test questions are asked against a shared k-shot CoT context (the
Query-OPT training format) in one call each, and the same questions are asked one per call.
With --adapter, the merged calls run twice on the same groups, with the base model (before)
and with the Query-OPT LoRA (after); single calls always use the base model. Reported per N:
format success (the reply parsed with every id; failures cut at the token budget counted),
answer accuracy of merged vs single answers on the same questions (merged alone, and with the
proxy's fallback: a missing answer retried alone) and how often their final answers agree,
input tokens and calls per query, and wall time per query with both modes run at the same
batch size (labeled: not batch-1 latency). Every merged reply goes to OUT.replies.jsonl.
A merged reply whose answer loops is stopped as the proxy stops it (--no-stop-loops: run it
to its budget); --frequency-penalty / --presence-penalty (OpenAI's) apply to single and merged
calls alike.

    .venv/bin/python bench/query_opt.py --groups 8 --ns 2,4,8 [--adapter runs/query-opt/adapter]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from provenance import command_line

from tokenskip.multi_query import (
    build_messages,
    make_queries,
    parse_answers,
    repeating,
    single_messages,
)
from tokenskip.provenance import provenance
from tokenskip.runtime.generate import LocalGenerator, Prompt
from tokenskip.tasks import gsm8k
from tokenskip.trainers.query_opt import gsm8k_context


def run(args: argparse.Namespace) -> dict:
    test = gsm8k.load_gsm8k(args.data, split="test")
    train = gsm8k.load_gsm8k(args.data, split="train")
    context = gsm8k_context(gsm8k.shots_from(train, args.shots, seed=0))
    generator = LocalGenerator(
        args.model,
        adapter=args.adapter,
        batch_size=args.batch_size,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
    )
    adapter_on = args.adapter is not None

    def count(messages: list[dict]) -> int:
        return len(generator.prompt_ids(Prompt(tuple(messages))))

    results: dict = {}
    started = provenance()  # the commit and tree the run started from, not where it ended

    def report(done: bool) -> dict:
        return {
            "status": "complete" if done else f"partial: N = {', '.join(results)} done",
            "model": args.model,
            "adapter": args.adapter,
            "shots": args.shots,
            "batch_size": args.batch_size,
            "answer_tokens": args.answer_tokens,
            "frequency_penalty": args.frequency_penalty,
            "presence_penalty": args.presence_penalty,
            "stop_loops": args.stop_loops,
            "results": results,
            "wall_note": f"both modes generated at batch size {args.batch_size}; wall time per "
            "query, not batch-1 latency",
            "command": command_line(),
            **started,
        }

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # every merged reply, for reading the failures (small: a few KB per group)
    replies = open(Path(args.out).with_suffix(".replies.jsonl"), "w", encoding="utf-8")  # noqa: SIM115 - written line by line as replies come, closed at the end
    offset = 0
    for n in args.ns:
        problems = test.problems[offset : offset + n * args.groups]
        offset += n * args.groups
        groups = [problems[i : i + n] for i in range(0, len(problems), n)]
        merged_prompts, single_prompts = [], []
        for g in groups:
            queries = make_queries([p.question for p in g])
            merged_prompts.append(
                Prompt(tuple(build_messages(context, queries)), adapter=adapter_on)
            )
        for p in problems:
            single_prompts.append(Prompt(tuple(single_messages(context, p.question))))
        t0 = time.perf_counter()
        singles = generator.generate(single_prompts, args.answer_tokens)
        single_wall = time.perf_counter() - t0
        single_correct = sum(
            gsm8k.is_correct(gsm8k.extract_answer(out.text), p.answer)
            for p, out in zip(problems, singles)
        )
        queries_total = len(problems)
        merged_in = sum(count(list(pr.messages)) for pr in merged_prompts)
        single_in = sum(count(list(pr.messages)) for pr in single_prompts)
        row = {
            "groups": len(groups),
            "queries": queries_total,
            "accuracy_single": round(single_correct / queries_total, 4),
            # single answers that ended by themselves within the budget: a merged reply can
            # only parse if all N of its answers do
            "single_finished": round(sum(g.finished for g in singles) / queries_total, 4),
            "input_tokens_per_query_merged": round(merged_in / queries_total, 1),
            "input_tokens_per_query_single": round(single_in / queries_total, 1),
            "input_token_reduction": round(single_in / merged_in, 2),
            "calls_per_query_merged": round(len(groups) / queries_total, 3),
            "wall_s_per_query_single": round(single_wall / queries_total, 3),
            "output_tokens_single": sum(g.output_tokens for g in singles),
        }
        # before (base model) and, with --adapter, after (the Query-OPT LoRA) on the same groups
        for label, on in [("base", False), ("adapter", True)]:
            if label not in args.variants or (on and not adapter_on):
                continue
            prompts = [replace(pr, adapter=on) for pr in merged_prompts]
            t0 = time.perf_counter()
            budget = args.answer_tokens * n + 32
            merged = generator.generate(
                prompts, budget, stop_when=repeating if args.stop_loops else None
            )
            merged_wall = time.perf_counter() - t0
            complete = merged_correct = with_fallback = missing = agree = at_budget = stopped = 0
            for g, out, base_idx in zip(groups, merged, range(0, queries_total, n)):
                parsed = parse_answers(
                    out.text, list(range(1, len(g) + 1)), [p.question for p in g]
                )
                complete += parsed.complete
                missing += len(parsed.missing)
                at_budget += not parsed.complete and out.output_tokens >= budget
                stopped += not out.finished and out.output_tokens < budget
                for i, p in enumerate(g, start=1):
                    answer = parsed.answers.get(i)
                    predicted = gsm8k.extract_answer(answer) if answer else None
                    single_pred = gsm8k.extract_answer(singles[base_idx + i - 1].text)
                    correct = bool(answer) and gsm8k.is_correct(predicted, p.answer)
                    merged_correct += correct
                    # what the proxy returns: a missing answer is retried alone (= the single)
                    with_fallback += correct if answer else gsm8k.is_correct(single_pred, p.answer)
                    agree += predicted is not None and predicted == single_pred
                replies.write(
                    json.dumps(
                        {
                            "n": n,
                            "model": label,
                            "indices": [p.index for p in g],
                            "complete": parsed.complete,
                            "missing": list(parsed.missing),
                            "output_tokens": out.output_tokens,
                            "text": out.text,
                        }
                    )
                    + "\n"
                )
            row[label] = {
                "format_success": round(complete / len(groups), 4),
                "missing_answers": missing,
                "failed_at_token_budget": at_budget,
                "stopped_as_loops": stopped,
                "accuracy_merged": round(merged_correct / queries_total, 4),
                "accuracy_with_fallback": round(with_fallback / queries_total, 4),
                "same_final_answer_as_single": round(agree / queries_total, 4),
                "calls_per_query_with_retries": round((len(groups) + missing) / queries_total, 3),
                "wall_s_per_query_merged": round(merged_wall / queries_total, 3),
                "output_tokens_merged": sum(g.output_tokens for g in merged),
                "example_reply": merged[0].text[:600],
            }
        results[str(n)] = row
        print(json.dumps({n: row}), flush=True)
        replies.flush()
        write(args.out, report(done=False))  # a cut-off run keeps the rows it finished
    generator.close()
    replies.close()
    return report(done=True)


def write(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--ns", default="2,4,8")
    ap.add_argument("--answer-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.0,
        help="OpenAI's, for single and merged calls alike (0: plain greedy)",
    )
    ap.add_argument("--presence-penalty", type=float, default=0.0)
    ap.add_argument(
        "--stop-loops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop a merged reply whose answer loops, as the proxy does (batch.stop_loops)",
    )
    ap.add_argument(
        "--variants",
        default="base,adapter",
        help="which models answer the merged calls: base, adapter (needs --adapter), or both",
    )
    ap.add_argument("--out", default="reports/query_opt_smollm2.json")
    args = ap.parse_args()
    args.ns = [int(n) for n in args.ns.split(",")]
    args.variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    if not args.variants or args.variants - {"base", "adapter"}:
        ap.error("--variants takes base, adapter or both")
    if args.variants == {"adapter"} and args.adapter is None:
        ap.error("--variants adapter needs --adapter")
    write(args.out, run(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
