"""Lossless savings on JSON tool outputs, against minified JSON, CSV and TOON, and their cost.

Tool outputs (each pretty-printed with ``json.dumps(indent=2)``, as a tool returns it):

a. ``logs``: 300 structured log records from a log-search tool, generated here with a fixed
   seed (``log_records``): a nested ``http`` object, a list field ``tags``, ``user_id`` on
   about 60% of the records and an ``error`` object on the ERROR ones; ~34k SmolLM2 tokens.
b. ``issues``: the ~48.7k-token issue-search output of ``bench/compress_speed.py``
   (``tool_records``, under ``{"total_count": 300, "items": [...]}``).
c. ``bfcl/...``: real data nobody here wrote, the Berkeley Function-Calling Leaderboard as
   shipped in the ``bfcl-eval`` wheel (``--bfcl-wheel``; else ``pip download --no-deps``
   into a temporary folder). The JSON files are read out of the wheel as a zip; the package
   is never imported. Subsets: ``bfcl/tools``, every function schema of the multi-turn
   categories (``data/multi_turn_func_doc/*.json``) as one ``{"tools": [...]}`` listing;
   ``bfcl/answers/<category>``, the possible-answer file of a category
   (``data/possible_answer/BFCL_v4_<category>.json``) as one array; ``bfcl/questions/
   <category>``, the question file (``data/BFCL_v4_<category>.json``: the chat and the
   function schemas offered) as one array.

Forms: the pretty JSON as given; minified JSON; CSV (the largest array of records, nested
objects as dotted columns, lists as JSON, other top-level values as ``key: value`` lines;
it keeps neither types nor missing-versus-null); TOON (``toon_format.dumps``, the
``toon-format`` package); tokenskip (``tokenskip.lossless.lossless``). Every form of ours
is decoded with ``expand_tables`` and compared with the data, types included; TOON is
decoded with ``toon_format.loads`` and compared the same way.

Cost, on one core, medians of ``--repeats`` runs: the transform (``lossless``), and the
gateway's count of a part's saving (``TextTokenizer.count`` of before and after) three ways:
the whole text through the pre-token regex (the count before line memoization), lines first
seen, and lines seen before (the same tool output on the next turn of an agent loop).

Writes ``--out`` (JSON) and the Markdown beside it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from compress_speed import tool_records
from provenance import run_facts, write_report

REPO_ROOT = Path(__file__).resolve().parents[1]
BFCL = "bfcl-eval==2026.3.23"
TOON = "toon-format==1.2.0"
BFCL_ANSWERS = ("simple_python", "multiple", "parallel", "live_simple")
BFCL_QUESTIONS = ("simple_python", "multiple", "live_simple")
TIMED_DOCUMENTS = ("logs", "issues", "bfcl/tools")
TARGET_MS = 10
"""Documents whose transform and count are timed (all are counted and checked)."""


def log_records(n: int = 300, seed: int = 11) -> list[dict[str, Any]]:
    """A log-search tool's result: optional keys, a nested object and a list field."""
    rng = random.Random(seed)
    services = ["checkout-api", "payments", "inventory", "auth", "search"]
    routes = ["/api/v1/orders", "/api/v1/cart", "/api/v1/login", "/api/v1/search", "/healthz"]
    tag_sets = [["prod", "stable"], ["prod", "canary"], ["prod"], ["prod", "stable", "eu-west-1"]]
    errors = [
        ("TimeoutError", "upstream timed out after 5000 ms", True),
        ("ValidationError", "field 'quantity' must be positive", False),
        ("ConnectionResetError", "connection reset by peer", True),
    ]
    t = datetime.datetime(2026, 3, 14, 9, 0, 0, tzinfo=datetime.timezone.utc)
    out = []
    for _ in range(n):
        t += datetime.timedelta(milliseconds=rng.randint(5, 4000))
        level = rng.choices(["INFO", "WARN", "ERROR"], weights=[14, 4, 2])[0]
        method = rng.choice(["GET", "GET", "POST", "PUT"])
        route = rng.choice(routes)
        status = {
            "INFO": rng.choice([200, 200, 201, 204]),
            "WARN": rng.choice([404, 429]),
            "ERROR": rng.choice([500, 502, 503]),
        }[level]
        duration = round(rng.lognormvariate(3.5, 0.8), 1)
        record: dict[str, Any] = {
            "timestamp": t.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "level": level,
            "service": rng.choice(services),
            "message": f"{method} {route} {status}",
            "http": {"status": status, "duration_ms": duration},
            "tags": rng.choice(tag_sets),
        }
        if rng.random() < 0.6:
            record["user_id"] = rng.randint(10_000, 99_999)
        if level == "ERROR":
            kind, message, retryable = rng.choice(errors)
            record["error"] = {"type": kind, "message": message, "retryable": retryable}
        out.append(record)
    return out


def bfcl_wheel(path: Path | None, folder: Path) -> Path | str:
    """The bfcl-eval wheel: ``path``, or downloaded into ``folder``; or why there is none."""
    if path is not None:
        return path if path.is_file() else f"--bfcl-wheel {path} is not a file"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", BFCL, "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob("bfcl_eval-*.whl"))
    if done.returncode or not wheels:
        return f"`pip download --no-deps {BFCL}` failed: {done.stderr.strip()[-300:]}"
    return wheels[0]


def bfcl_documents(wheel: Path) -> dict[str, Any]:
    """The BFCL subsets named in the module docstring, read out of the wheel."""
    with zipfile.ZipFile(wheel) as z:

        def records(member: str) -> list[Any]:
            text = z.read("bfcl_eval/data/" + member).decode()
            return [json.loads(line) for line in text.splitlines() if line.strip()]

        tool_files = sorted(
            n for n in z.namelist() if n.startswith("bfcl_eval/data/multi_turn_func_doc/")
        )
        docs: dict[str, Any] = {
            "bfcl/tools": {
                "tools": [t for n in tool_files for t in records(n.split("/data/", 1)[1])]
            }
        }
        for category in BFCL_ANSWERS:
            docs[f"bfcl/answers/{category}"] = records(f"possible_answer/BFCL_v4_{category}.json")
        for category in BFCL_QUESTIONS:
            docs[f"bfcl/questions/{category}"] = records(f"BFCL_v4_{category}.json")
    return docs


def as_csv(data: Any) -> str | None:
    """The largest array of records as CSV (dotted columns, lists as JSON), other top-level
    values as ``key: value`` lines; None when there is no array of records."""
    head, rows = [], data
    if isinstance(data, dict):
        arrays = [(k, v) for k, v in data.items() if isinstance(v, list)]
        if not arrays:
            return None
        key, rows = max(arrays, key=lambda kv: len(kv[1]))
        head = [f"{k}: {json.dumps(v)}" for k, v in data.items() if k != key]
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None

    def flat(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = json.dumps(v) if isinstance(v, (list, dict)) else v
        return out

    flats = [flat(r) for r in rows]
    columns = list(dict.fromkeys(k for f in flats for k in f))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flats)
    return "".join(line + "\n" for line in head) + buf.getvalue()


def same(a: Any, b: Any) -> bool:
    """Equal as JSON, types included (``1.0`` is not ``1``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def median_ms(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def measure_forms(name: str, data: Any, tokenizer: Any, toon: Any) -> dict[str, Any]:
    from tokenskip.lossless import expand_tables, lossless

    pretty = json.dumps(data, indent=2)
    ours = lossless(pretty)
    tokens = {
        "pretty_json": tokenizer.count(pretty),
        "minified_json": tokenizer.count(json.dumps(data, separators=(",", ":"))),
        "tokenskip": tokenizer.count(ours.text),
    }
    table = as_csv(data)
    if table is not None:
        tokens["csv"] = tokenizer.count(table)
    row: dict[str, Any] = {
        "name": name,
        "tokens": tokens,
        "tokenskip_transforms": list(ours.transforms),
        "tokenskip_round_trip": same(expand_tables(ours.text), data),
        "tokenskip_is_table": "\n" in ours.text,
    }
    if toon is not None:
        encoded = toon.dumps(data)
        tokens["toon"] = tokenizer.count(encoded)
        decoded = toon.loads(encoded)
        row["toon_round_trip"] = same(decoded, data)
        row["toon_round_trip_values"] = decoded == data
    row["saved"] = {k: 1 - v / tokens["pretty_json"] for k, v in tokens.items()}
    return row


def measure_cost(data: Any, tokenizer: Any, repeats: int) -> dict[str, Any]:
    """Milliseconds of the transform and of counting the saving, on one document."""
    from tokenskip.lossless import json_blocks, lossless

    pretty = json.dumps(data, indent=2)
    after = lossless(pretty).text
    codec = tokenizer._codec  # the count's internals, to time its paths one by one

    def first_sight() -> None:
        codec._lines.clear()
        codec._line_chars = 0
        tokenizer.count(pretty)
        tokenizer.count(after)

    cost = {
        "tokens": tokenizer.count(pretty),
        "chars": len(pretty),
        "lossless_ms": median_ms(lambda: lossless(pretty), repeats),
        "parse_ms": median_ms(lambda: json_blocks(pretty), repeats),
    }
    if codec is not None:
        cost["count_whole_text_ms"] = median_ms(
            lambda: (codec._count_pieces(pretty), codec._count_pieces(after)), repeats
        )
        cost["count_first_sight_ms"] = median_ms(first_sight, repeats)
        cost["count_seen_ms"] = median_ms(
            lambda: (tokenizer.count(pretty), tokenizer.count(after)), repeats
        )
        backend = tokenizer.hf.backend_tokenizer
        cost["count_exact"] = all(
            tokenizer.count(t) == len(backend.encode(t, add_special_tokens=False).ids)
            for t in (pretty, after)
        )
    return cost


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=21, help="timed runs per figure")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "tool_outputs.json")
    p.add_argument(
        "--bfcl-wheel", type=Path, help=f"a downloaded {BFCL} wheel (default: pip download it)"
    )
    p.add_argument(
        "--tokenizers",
        default="smollm2,qwen2.5-coder-0.5b",
        help="comma-separated tokenizer names; any that cannot load offline is skipped",
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from tokenskip.models import load_tokenizer
    from tokenskip.tokens import TextTokenizer

    missing: list[str] = []
    try:
        import toon_format as toon
    except ImportError:
        toon = None
        missing.append(f"toon-format is not installed (`pip install {TOON}`): no TOON column")
    documents: dict[str, Any] = {
        "logs": log_records(),
        "issues": {"total_count": 300, "items": tool_records(300)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        wheel = bfcl_wheel(args.bfcl_wheel, Path(tmp))
        if isinstance(wheel, str):
            missing.append(f"bfcl-eval is missing: {wheel}; no BFCL rows")
        else:
            documents.update(bfcl_documents(wheel))
    for line in missing:
        print("MISSING:", line, file=sys.stderr)

    tokenizers: dict[str, Any] = {}
    for name in args.tokenizers.split(","):
        try:
            tokenizers[name] = TextTokenizer(load_tokenizer(name), name)
        except Exception as exc:  # noqa: BLE001 - a tokenizer not here offline is skipped
            missing.append(f"tokenizer {name} is not available offline ({exc}): skipped")
    load_before = os.getloadavg()
    gc.collect()
    gc.freeze()
    results: dict[str, Any] = {}
    for tok_name, tokenizer in tokenizers.items():
        forms = [measure_forms(n, d, tokenizer, toon) for n, d in documents.items()]
        costs = {
            n: measure_cost(documents[n], tokenizer, args.repeats)
            for n in TIMED_DOCUMENTS
            if n in documents
        }
        results[tok_name] = {"forms": forms, "cost": costs}
    report = {
        "results": results,
        "missing": missing,
        "versions": {"toon-format": getattr(toon, "__version__", None), "bfcl-eval": BFCL},
        **run_facts(load_before, 1),
    }
    print(write_report(args.out, report, render))


def _cell(row: dict[str, Any], form: str) -> str:
    if form not in row["tokens"]:
        return "—"
    return f"{row['tokens'][form]:,} ({row['saved'][form]:.1%})"


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Lossless savings on JSON tool outputs",
        "",
        f"Machine: {report['machine']}, {report['threads']} torch thread; load average "
        f"before {report['load_average']['before'][0]:.2f}, after "
        f"{report['load_average']['after'][0]:.2f}. Commit `{(report['commit'] or '')[:10]}`"
        f"{' (dirty tree)' if report['dirty'] else ''}. Command: `{report['command']}`. "
        f"TOON: toon-format {report['versions']['toon-format']}; BFCL: "
        f"{report['versions']['bfcl-eval']}. Data and forms: the docstring of "
        "`bench/tool_outputs.py`.",
        "",
    ]
    for line in report["missing"]:
        lines += [f"**Missing:** {line}", ""]
    for tok_name, r in report["results"].items():
        lines += [
            f"## Tokens in {tok_name} (saved against the pretty JSON)",
            "",
            "| tool output | pretty JSON | minified JSON | CSV | TOON | tokenskip | "
            "exact round trip: tokenskip / TOON |",
            "|---|--:|--:|--:|--:|--:|---|",
        ]
        for row in r["forms"]:
            toon_trip = (
                "—"
                if "toon_round_trip" not in row
                else (
                    "yes"
                    if row["toon_round_trip"]
                    else ("values only" if row["toon_round_trip_values"] else "no")
                )
            )
            ours = _cell(row, "tokenskip")
            best = max((v for k, v in row["saved"].items() if k != "tokenskip"), default=0.0)
            if row["saved"]["tokenskip"] >= best:
                ours = f"**{ours}**"
            lines.append(
                f"| {row['name']} | {row['tokens']['pretty_json']:,} | "
                f"{_cell(row, 'minified_json')} | {_cell(row, 'csv')} | {_cell(row, 'toon')} | "
                f"{ours} | {'yes' if row['tokenskip_round_trip'] else 'NO'} / {toon_trip} |"
            )
        lines += [
            "",
            "TOON's \"values only\": `toon_format.loads` gives back data equal under Python's "
            "`==` but not in type (a float such as `46.0` comes back as the int `46`).",
            "",
            f"## Cost in {tok_name} (one core, median ms)",
            "",
            "| tool output | tokens | transform (of it: JSON parse) | count before + after: "
            "whole text / lines first seen / lines seen | count exact |",
            "|---|--:|--:|--:|---|",
        ]
        for name, c in r["cost"].items():
            count = (
                f"{c['count_whole_text_ms']:.1f} / {c['count_first_sight_ms']:.1f} / "
                f"{c['count_seen_ms']:.2f}"
                if "count_seen_ms" in c
                else "— (no fast path)"
            )
            lines.append(
                f"| {name} | {c['tokens']:,} | {c['lossless_ms']:.1f} ({c['parse_ms']:.1f}) | "
                f"{count} | {c.get('count_exact', '—')} |"
            )
        lines += [
            "",
            "Count: `TextTokenizer.count` of the pretty JSON and of the tokenskip form, as the "
            "gateway counts a part's saving; whole text: every pre-token found by the regex "
            "(the count before line memoization); lines first seen: the line memo emptied "
            "before each run; lines seen: counted again, as on the next turn of an agent loop "
            "that resends the tool output. Exact: equal to the tokenizer's own encode.",
        ]
        logs = r["cost"].get("logs")
        if logs is not None:
            verdict = "met" if logs["lossless_ms"] <= TARGET_MS else "missed"
            lines += [
                "",
                f"Target: the {logs['tokens']:,}-token log output transformed in ≤ {TARGET_MS} ms: "
                f"{verdict} ({logs['lossless_ms']:.1f} ms).",
            ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
