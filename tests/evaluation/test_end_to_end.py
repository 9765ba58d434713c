"""`tokenskip eval gsm8k` end to end on the real embedded model (two questions), and its CLI errors."""

import json
import socket

import pytest

from tokenskip.cli import main
from tokenskip.reasoning import BudgetForcing

DATA = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "3 + 4 = 7\n#### 7",
    },
    {
        "question": "A box holds 6 eggs. How many eggs are in 2 boxes?",
        "answer": "6 * 2 = 12\n#### 12",
    },
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in DATA))
    return path


def test_two_question_run_on_the_embedded_model(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    args = [
        "eval",
        "gsm8k",
        "--data",
        str(data_file),
        "--limit",
        "2",
        "--ratios",
        "1.0,0.5",
        "--methods",
        "original,instruction,truncation,budget-forcing",
        "--max-new-tokens",
        "24,48",
        "--batch-size",
        "2",
        "--latency-samples",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    text = (out / "run.json").read_text()
    assert str(tmp_path) not in text  # no machine's absolute path in a report
    run = json.loads(text)
    assert run["meta"]["model"] == "smollm2" and run["meta"]["dataset"]["n"] == 2
    assert run["meta"]["git_commit"] and run["meta"]["hardware"]["cpu_count"]
    methods = {(r["method"], r["ratio"]) for r in run["rows"]}
    assert methods == {
        ("original", 1.0),
        ("instruction", 0.5),
        ("truncation", 0.5),
        ("budget-forcing", 1.0),
    }
    original = next(r for r in run["rows"] if r["method"] == "original")
    assert (
        original["budgets"]["48"]["output_tokens_mean"]
        >= original["budgets"]["24"]["output_tokens_mean"]
        > 0
    )
    assert (
        original["latency_batch1"]["samples"] == 1
        and original["throughput"]["output_tokens_per_s"] > 0
    )
    assert (out / "README.md").read_text().startswith("# GSM8K token savings: smollm2")
    assert str(tmp_path) not in (out / "README.md").read_text()
    assert (out / "frontier.png").stat().st_size > 10_000
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2 * 2  # (method, ratio) configs × budgets × questions
    samples = [json.loads(line) for line in lines]
    assert all(isinstance(s["text"], str) for s in samples)  # every generation's own text
    by = {(s["method"], s["budget"], s["index"]): s for s in samples}
    for (method, budget, index), s in by.items():
        if method != "budget-forcing":
            continue
        original = by[("original", budget, index)]
        if original["finished"] or BudgetForcing.answered(original["text"]):
            assert s["text"] == original["text"]  # answered under budget: untouched
        else:  # cut by the cap: the same reasoning, then the cue and an answer
            assert s["text"].startswith(original["text"])
            assert "Final answer:" in s["text"][len(original["text"]) :]
    # a rerun is served from the cache and re-renders identical numbers
    assert main(args) == 0
    again = json.loads((out / "run.json").read_text())
    assert [r["budgets"] for r in again["rows"]] == [r["budgets"] for r in run["rows"]]
    capsys.readouterr()
    assert main(["eval", "report", str(out / "run.json")]) == 0
    assert "README.md" in capsys.readouterr().out


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ratios", "0.5,abc"], "ratio"),
        (["--ratios", "1.7"], "ratio"),
        (["--max-new-tokens", "0"], "positive"),
        (["--limit", "0"], "limit"),
        (["--data", "/no/such/file.jsonl"], "no/such/file.jsonl"),
        (["--methods", "magic"], "unknown methods"),
        (["--adapter", "/no/adapter"], "adapter_config.json"),
        (["--model", "no-such-model-xyz"], "no-such-model-xyz"),
        (["--base-url", f"http://127.0.0.1:{closed_port()}/v1"], "does not answer"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(tmp_path, data_file, capsys, extra, message):
    args = [
        "eval",
        "gsm8k",
        "--data",
        str(data_file),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        *extra,
    ]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse type errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "run.json").exists()


def test_report_of_a_non_run_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    assert main(["eval", "report", str(bad)]) == 2
    assert "not a tokenskip eval run" in capsys.readouterr().err
