"""Meaning preservation: do the constraints of a text survive its compression?

``bench/data/meaning/texts.jsonl`` holds realistic texts of 7 kinds (system prompts,
contracts, product docs, API docs, meeting notes, retrieved passages, tool outputs), each
with hand-annotated constraint phrases (a negation with what it negates, a limit with its
operand, an exception with its clause, a number with its unit, ...). Every text is compressed
with each scorer at each γ, as ``tokenskip compress`` does by default, and the report gives:

- phrases kept: the share of annotated phrases found whole in the output, after whitespace
  (and, for JSON, spacing around ``: , { } [ ]``) is normalized on both sides. A phrase of a
  JSON tool output of the form ``"key": value`` also counts as kept when the output decodes
  (minified or as a lossless table, :func:`tokenskip.lossless.expand_tables`) to data holding
  that key with that value;
- texts intact: the share of texts that kept every phrase;
- achieved and forced ratio (target tokenizer: the embedded SmolLM2's).

The script uses only ``compress(text, ratio, tokenizer=, scorer=)`` and passes ``guards`` or
``lossless`` only when the installed core has them, so the same script measures an older
checkout (``PYTHONPATH=<checkout>``) for the before/after table. Every compressed text is
written beside the report (``--out`` with ``.outputs.jsonl.gz``) so the numbers can be
recounted.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import inspect
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from provenance import command_line, git

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "bench" / "data" / "meaning" / "texts.jsonl"
RATIOS = (0.9, 0.7, 0.5)
_SPACE = re.compile(r"\s+")
_JSON_PUNCT = re.compile(r"\s*([:,{}\[\]])\s*")
_PAIR = re.compile(r'^"(?P<key>[^"]+)":\s*(?P<value>.+?),?$')


def normalize(text: str) -> str:
    return _JSON_PUNCT.sub(r"\1", _SPACE.sub(" ", text)).strip()


def _decoded(output: str) -> Any:
    try:
        return json.loads(output)
    except ValueError:
        pass
    try:
        from tokenskip.lossless import expand_tables
    except ImportError:
        return None
    try:
        return expand_tables(output)
    except (ValueError, KeyError, IndexError):
        return None


def _pairs(value: Any, prefix: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _pairs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _pairs(v)


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def phrase_kept(phrase: str, output: str, decoded: Any) -> bool:
    if normalize(phrase) in normalize(output):
        return True
    if decoded is None:
        return False
    m = _PAIR.match(phrase.strip())
    if m:
        try:
            wanted = json.loads(m["value"])
        except ValueError:
            return False
        return any(k == m["key"] and v == wanted for k, v in _pairs(decoded))
    target = normalize(phrase)
    return any(target in normalize(s) for s in _strings(decoded))


def _core_commit(where: Path) -> str | None:
    """The commit of the checkout the ``tokenskip`` package was imported from."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def build_scorer(name: str, tokenizer: Any, lm: Any) -> Any:
    from tokenskip.scorers import CachedScorer, HeuristicScorer, SelfInfoScorer

    if name == "heuristic":
        return HeuristicScorer(tokenizer)
    if name == "self-info":
        return CachedScorer(SelfInfoScorer(lm, tokenizer))
    kind, _, model = name.partition(":")
    from tokenskip.models import load_model
    from tokenskip.tokens import TextTokenizer

    if kind == "self-info":
        loaded = load_model(model)
        return CachedScorer(SelfInfoScorer(loaded.model, TextTokenizer(loaded.tokenizer, model)))
    if kind == "classifier":
        from tokenskip.scorers import TokenClassifierScorer

        return CachedScorer(TokenClassifierScorer.from_pretrained(model))
    raise SystemExit(f"unknown scorer {name!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="texts.jsonl with constraints")
    p.add_argument(
        "--scorers",
        default="heuristic,self-info",
        help="comma-separated: heuristic, self-info (SmolLM2), self-info:MODEL, classifier:DIR",
    )
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="keep ratios γ")
    p.add_argument("--no-guards", action="store_true", help="turn the meaning guards off")
    p.add_argument("--label", default="", help="what this run measures (e.g. 'main before')")
    p.add_argument("--out", type=Path, required=True, help="report JSON path")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import tokenskip
    from tokenskip.compress import compress
    from tokenskip.models import load_model
    from tokenskip.tokens import TextTokenizer

    texts = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    loaded = load_model("smollm2")
    tokenizer = TextTokenizer(loaded.tokenizer, "smollm2")
    params = inspect.signature(compress).parameters
    extra: dict[str, Any] = {}
    if "guards" in params and args.no_guards:
        from tokenskip.guards import NO_GUARDS

        extra["guards"] = NO_GUARDS
    ratios = [float(r) for r in args.ratios.split(",")]
    load_before = os.getloadavg()
    rows, outputs = [], []
    for scorer_name in args.scorers.split(","):
        scorer = build_scorer(scorer_name, tokenizer, loaded.model)
        for ratio in ratios:
            t0 = time.perf_counter()
            per_type: dict[str, list[int]] = {}
            per_kind: dict[str, list[int]] = {}
            kept_total = phrases_total = intact = 0
            achieved, forced = [], []
            for item in texts:
                r = compress(item["text"], ratio, tokenizer=tokenizer, scorer=scorer, **extra)
                decoded = _decoded(r.text) if item["kind"] == "tool_output" else None
                lost = []
                for c in item["constraints"]:
                    ok = phrase_kept(c["phrase"], r.text, decoded)
                    per_type.setdefault(c["type"], [0, 0])[0] += ok
                    per_type[c["type"]][1] += 1
                    if not ok:
                        lost.append(c["phrase"])
                num = len(item["constraints"])
                kept_total += num - len(lost)
                phrases_total += num
                intact += not lost
                k = per_kind.setdefault(item["kind"], [0, 0, 0])
                k[0] += num - len(lost)
                k[1] += num
                k[2] += not lost
                achieved.append(r.achieved_ratio)
                forced.append(r.forced_tokens / r.original_tokens if r.original_tokens else 0.0)
                outputs.append(
                    {
                        "scorer": scorer_name,
                        "ratio": ratio,
                        "id": item["id"],
                        "achieved_ratio": r.achieved_ratio,
                        "lost": lost,
                        "text": r.text,
                    }
                )
            rows.append(
                {
                    "scorer": scorer_name,
                    "ratio": ratio,
                    "phrases_kept": kept_total / phrases_total,
                    "num_phrases": phrases_total,
                    "texts_intact": intact / len(texts),
                    "num_texts": len(texts),
                    "achieved_ratio": sum(achieved) / len(achieved),
                    "forced_ratio": sum(forced) / len(forced),
                    "by_type": {t: v[0] / v[1] for t, v in sorted(per_type.items())},
                    "by_kind": {
                        kind: {"phrases_kept": v[0] / v[1], "texts_intact": v[2] / n}
                        for kind, v in sorted(per_kind.items())
                        for n in [sum(1 for t in texts if t["kind"] == kind)]
                    },
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"{scorer_name:>12} γ={ratio}: kept {kept_total}/{phrases_total} "
                f"({kept_total / phrases_total:.1%}), intact {intact}/{len(texts)}, "
                f"achieved {rows[-1]['achieved_ratio']:.3f}",
                flush=True,
            )
    report = {
        "label": args.label,
        "data": str(args.data.relative_to(REPO_ROOT))
        if args.data.is_relative_to(REPO_ROOT)
        else args.data.name,
        "core_commit": _core_commit(Path(tokenskip.__file__).resolve().parent),
        "guards": "off" if args.no_guards else ("on" if "guards" in params else "not in this core"),
        "target_tokenizer": "smollm2",
        "rows": rows,
        "command": command_line(),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    with gzip.open(args.out.with_suffix(".outputs.jsonl.gz"), "wt") as f:
        for o in outputs:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
