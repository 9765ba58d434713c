"""bench/knob_report.py: the knob table and its verdicts from an eval's run.json."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "knob_report.py"


@pytest.fixture(scope="module")
def knob_report():
    spec = importlib.util.spec_from_file_location("knob_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(acc, cot, out, ratio=None, cut=0.0):
    return {
        "accuracy": acc, "ci95": [0.0, 1.0], "cut_off": cut, "cot_tokens_mean": cot,
        "output_tokens_mean": out, "achieved_ratio": ratio,
    }  # fmt: skip


def make_run(achieved, full_accuracy=0.05):
    rows = [{"method": "original", "ratio": 1.0, "n": 10,
             "budgets": {"64": cell(0.0, 60, 64), "512": cell(0.01, 230, 240, 1.0)}}]  # fmt: skip
    for gamma, ratio in achieved.items():
        acc = full_accuracy if gamma == 1.0 else 0.04
        rows.append({"method": "tokenskip", "ratio": gamma, "n": 10,
                     "budgets": {"64": cell(acc, 60, 64), "512": cell(acc, 150 * ratio, 160, ratio)}})  # fmt: skip
    rows.append({"method": "tokenskip-forcing", "ratio": 1.0, "n": 10,
                 "budgets": {"64": cell(0.03, 60, 70), "512": cell(full_accuracy, 150, 160, 1.0)}})  # fmt: skip
    meta = {"model": "m", "adapter": "a", "command": "c", "date": "d", "git_commit": "0" * 40}
    return {"meta": meta, "rows": rows}


def test_verdicts_follow_the_numbers(knob_report):
    good = knob_report.summarize(make_run({1.0: 1.0, 0.9: 0.85, 0.5: 0.58}), None)
    assert [v["pass"] for v in good["verdicts"]] == [True, True]
    bad = knob_report.summarize(make_run({1.0: 1.0, 0.9: 0.85, 0.5: 0.66}, 0.0), None)
    assert [v["pass"] for v in bad["verdicts"]] == [False, False]
    assert "γ 0.5: 0.66" in bad["verdicts"][0]["value"]


def test_budget_rows_and_files(knob_report, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(make_run({1.0: 1.0, 0.5: 0.5})))
    (tmp_path / "loss.jsonl").write_text('{"step": 10, "loss": 2.0}\n{"step": 20, "loss": 1.5}\n')
    assert knob_report.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "knob.json").read_text())
    assert [(t["budget"], t["method"]) for t in summary["forcing"]] == [
        (64, "tokenskip"),
        (64, "tokenskip-forcing"),
        (64, "original"),
    ]
    text = (tmp_path / "KNOB.md").read_text()
    assert "| 64 | adapter γ = 1.0, budget forcing at B | 3.0%" in text
    assert (tmp_path / "training_curve.png").stat().st_size > 0
