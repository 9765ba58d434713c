"""The evaluation runner on hand-made generations: metrics, baselines, resume, reports.

A scripted generator stands in for the model here (what is tested is the bookkeeping, not a
model); the end-to-end run on the real embedded model is in test_end_to_end.py.
"""

import json
from pathlib import Path

import pytest

from tokenskip.errors import InvalidInputError
from tokenskip.evaluation.cache import GenerationCache
from tokenskip.evaluation.report import render_markdown, write_reports
from tokenskip.evaluation.run import EvalConfig, Runner
from tokenskip.runtime.generate import Generation
from tokenskip.tasks import gsm8k

PROBLEMS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 6 eggs. How many in 2 boxes?", "answer": "6 * 2 = 12\n#### 12"},
    {
        "question": "Sam had 10 dollars and spent 4. How much is left?",
        "answer": "10 - 4 = 6\n#### 6",
    },
]


class Scripted:
    """Answers from a script: long, correct reasoning at the base; wrong and short elsewhere."""

    name = "scripted"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def generate(self, prompts, max_new_tokens, on_result=None):
        out = []
        for i, prompt in enumerate(prompts):
            self.calls += 1
            question = prompt.messages[-1]["content"]
            answer = {"Tom": 7, "A box": 12, "Sam": 6}[
                next(k for k in ("Tom", "A box", "Sam") if k in question)
            ]
            if prompt.continuation:  # budget forcing: the answer after the cue
                ids = self.tokenizer.encode(f" {answer}", add_special_tokens=False)
                g = Generation(f" {answer}", len(ids), True, 0.01, tuple(ids))
                if on_result:
                    on_result(i, g)
                out.append(g)
                continue
            concise = any("concisely" in m["content"] for m in prompt.messages)
            reasoning = (
                "We add the numbers."
                if concise
                else "First we read the problem carefully and then we work out the numbers step by step."
            )
            if prompt.adapter:  # the TokenSkip adapter: its own, shorter reasoning
                reasoning = "Adapter: read the numbers, then work them out in order."
            text = f"{reasoning}\n#### {answer if not concise else answer + 1}"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            g = Generation(
                self.tokenizer.decode(ids[:max_new_tokens]),
                min(len(ids), max_new_tokens),
                len(ids) <= max_new_tokens,
                0.01,
                tuple(ids[:max_new_tokens]),
            )
            if on_result:
                on_result(i, g)
            out.append(g)
        return out


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def make_runner(tmp_path, data_file, tokenizer, **kw):
    kw = {
        "methods": ("original", "instruction", "truncation"),
        "ratios": (1.0, 0.5),
        "budgets": (8, 64),
        "latency_samples": 1,
        **kw,
    }
    delimiter = kw.pop("delimiter", None)
    shots = kw.pop("shot_problems", ())
    config = EvalConfig(data=str(data_file), out_dir=str(tmp_path / "out"), **kw)
    generator = Scripted(tokenizer.hf)
    runner = Runner(
        config,
        generator,
        tokenizer,
        gsm8k.load_gsm8k(str(data_file)),
        shots,
        delimiter,
        progress=False,
    )
    return runner, generator


def row(result, method, ratio):
    return next(r for r in result["rows"] if r["method"] == method and r["ratio"] == ratio)


def test_metrics_on_hand_made_generations(tmp_path, data_file, tokenizer):
    runner, _ = make_runner(tmp_path, data_file, tokenizer)
    result = runner.run()
    original = row(result, "original", 1.0)["budgets"]
    assert original["64"]["accuracy"] == 1.0 and original["64"]["cut_off"] == 0.0
    assert (
        original["8"]["cut_off"] == 1.0 and original["8"]["accuracy"] == 0.0
    )  # the answer never fits in 8 tokens
    assert original["64"]["achieved_ratio"] == pytest.approx(1.0)
    concise = row(result, "instruction", 0.5)["budgets"]["64"]
    assert concise["accuracy"] == 0.0  # the script answers wrongly when told to be concise
    assert concise["cot_tokens_mean"] < original["64"]["cot_tokens_mean"]
    assert 0 < concise["achieved_ratio"] < 1
    assert concise["output_tokens_saved_per_sample"] > 0
    truncated = row(result, "truncation", 0.5)["budgets"]["64"]
    assert (
        truncated["accuracy"] == 0.0
        and truncated["output_tokens_mean"] < original["64"]["output_tokens_mean"]
    )
    assert result["skipped_methods"] == {}
    assert {s["method"] for s in result["samples"]} == {"original", "instruction", "truncation"}


def test_rerun_resumes_from_the_cache(tmp_path, data_file, tokenizer):
    runner, generator = make_runner(tmp_path, data_file, tokenizer)
    first = runner.run()
    calls = generator.calls
    assert calls > 0
    again, generator2 = make_runner(tmp_path, data_file, tokenizer)
    second = again.run()
    assert generator2.calls == 0
    assert [r["budgets"] for r in first["rows"]] == [r["budgets"] for r in second["rows"]]
    # the speed measured while generating is kept for the resumed report
    before, after = first["rows"][0]["throughput"], second["rows"][0]["throughput"]
    assert before["measured_in_this_run"] and not after["measured_in_this_run"]
    assert after["output_tokens_per_s"] == before["output_tokens_per_s"] > 0
    assert after["samples_generated"] == first["rows"][0]["n"]


def test_a_cache_without_speed_records_says_so(tmp_path, data_file, tokenizer):
    runner, _ = make_runner(tmp_path, data_file, tokenizer)
    runner.run()
    (tmp_path / "out" / "throughput.jsonl").unlink()
    again, generator = make_runner(tmp_path, data_file, tokenizer)
    second = again.run()
    assert generator.calls == 0
    assert "not measured" in second["rows"][0]["throughput"]["note"]


def test_a_cut_cache_line_reruns_only_that_sample(tmp_path, data_file, tokenizer):
    runner, generator = make_runner(tmp_path, data_file, tokenizer)
    runner.run()
    cache = Path(tmp_path / "out" / "cache.jsonl")
    lines = cache.read_text().splitlines()
    cache.write_text(
        "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2]
    )  # crash mid-write
    assert GenerationCache(cache).num_corrupt == 1
    again, generator2 = make_runner(tmp_path, data_file, tokenizer)
    again.run()
    assert generator2.calls == 1


def test_reports_render_from_json(tmp_path, data_file, tokenizer):
    runner, _ = make_runner(tmp_path, data_file, tokenizer)
    result = runner.run()
    meta = {
        "model": "scripted",
        "adapter": None,
        "tokenizer": "smollm2",
        "dataset": {"source": str(data_file), "split": "test", "n": 3, "sha256": "ab" * 32},
        "config": {"budgets": [8, 64], "shots": 0, "price_per_1k_output": 0.0006},
        "command": "test",
        "hardware": {"cpu_count": 2, "cuda": None},
        "versions": {"torch": "x", "transformers": "y"},
        "git_commit": "abc",
    }
    run = {"meta": meta, **result}
    paths = write_reports(run, tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "| original | 1 |" in md and "| instruction | 0.5 |" in md and "acc@64" in md
    assert md == render_markdown(json.loads(paths["json"].read_text()))
    for name in ("frontier", "ratios"):
        png = paths[name].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ratios": (0.5, 1.5)}, "ratio"),
        ({"methods": ("magic",)}, "unknown methods"),
        ({"budgets": (0,)}, "budgets"),
        ({"limit": 0}, "limit"),
        ({"adapter": "/no/such/adapter"}, "adapter_config.json"),
    ],
)
def test_bad_configs_fail_before_any_work(kw, message):
    with pytest.raises(InvalidInputError, match=message):
        EvalConfig(**kw)


def test_inapplicable_methods_are_reported_not_silently_dropped(tmp_path, data_file, tokenizer):
    config = EvalConfig(
        data=str(data_file),
        out_dir=str(tmp_path / "o"),
        methods=("original", "tokenskip", "prompt-compression"),
        ratios=(1.0,),
        budgets=(64,),
        latency_samples=0,
    )
    runner = Runner(
        config,
        Scripted(tokenizer.hf),
        tokenizer,
        gsm8k.load_gsm8k(str(data_file)),
        (),
        None,
        progress=False,
    )
    result = runner.run()
    assert set(result["skipped_methods"]) == {"tokenskip", "prompt-compression"}


def test_budget_forcing_keeps_the_answer_a_cap_cuts_off(tmp_path, data_file, tokenizer):
    runner, generator = make_runner(
        tmp_path, data_file, tokenizer, methods=("original", "budget-forcing")
    )
    result = runner.run()
    original, forced = row(result, "original", 1.0), row(result, "budget-forcing", 1.0)
    assert original["budgets"]["8"]["accuracy"] == 0.0  # cut before the #### line
    assert forced["budgets"]["8"]["accuracy"] == 1.0  # the cue lets the answer out
    assert forced["budgets"]["64"] == original["budgets"]["64"]  # answered under budget
    texts = {
        (s["budget"], s["index"]): s["text"]
        for s in result["samples"]
        if s["method"] == "budget-forcing"
    }
    originals = {
        (s["budget"], s["index"]): s["text"] for s in result["samples"] if s["method"] == "original"
    }
    for (budget, index), text in texts.items():
        if budget == 8:
            head = originals[(8, index)]
            assert text.startswith(head) and "Final answer:" in text[len(head) :]
        else:
            assert text == originals[(64, index)]
    calls = generator.calls
    again, generator2 = make_runner(
        tmp_path, data_file, tokenizer, methods=("original", "budget-forcing")
    )
    rerun = again.run()["rows"]
    assert [r["budgets"] for r in rerun] == [r["budgets"] for r in result["rows"]]
    assert generator2.calls == 0  # all cached
    assert calls > 0


def test_tokenskip_forcing_forces_the_adapters_own_reasoning(tmp_path, data_file, tokenizer):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    kw = {"ratios": (1.0,), "adapter": str(adapter), "delimiter": "<|im_end|>"}
    runner, _ = make_runner(
        tmp_path, data_file, tokenizer, methods=("tokenskip-forcing", "original"), **kw
    )
    result = runner.run()
    # the adapter's γ = 1.0 run is generated (and reported) for it, even when not asked for
    assert [(r["method"], r["ratio"]) for r in result["rows"]] == [
        ("original", 1.0),
        ("tokenskip", 1.0),
        ("tokenskip-forcing", 1.0),
    ]
    forced = row(result, "tokenskip-forcing", 1.0)
    assert row(result, "tokenskip", 1.0)["budgets"]["8"]["accuracy"] == 0.0  # cut
    assert forced["budgets"]["8"]["accuracy"] == 1.0
    assert forced["budgets"]["8"]["achieved_ratio_reference"] == "tokenskip γ=1.0"
    texts = {
        (s["method"], s["budget"], s["index"]): s["text"]
        for s in result["samples"]
        if s["method"] in ("tokenskip", "tokenskip-forcing", "original")
    }
    for index in range(len(PROBLEMS)):
        head = texts[("tokenskip", 8, index)]
        assert head.startswith("Adapter:")  # the adapter's reasoning, not the base model's
        forced_text = texts[("tokenskip-forcing", 8, index)]
        assert forced_text.startswith(head) and "Final answer:" in forced_text[len(head) :]
        # answered under the budget: left as the adapter wrote it
        assert texts[("tokenskip-forcing", 64, index)] == texts[("tokenskip", 64, index)]
        assert not texts[("original", 64, index)].startswith("Adapter:")
    # with the adapter's own γ = 1.0 run asked for, that one row is reused, not repeated
    again, generator = make_runner(
        tmp_path, data_file, tokenizer, methods=("original", "tokenskip", "tokenskip-forcing"), **kw
    )
    rows = again.run()["rows"]
    assert [(r["method"], r["ratio"]) for r in rows] == [
        ("original", 1.0),
        ("tokenskip", 1.0),
        ("tokenskip-forcing", 1.0),
    ]
    assert generator.calls == 0  # everything came from the cache


def test_tokenskip_forcing_without_an_adapter_is_skipped_and_says_why(
    tmp_path, data_file, tokenizer
):
    runner, _ = make_runner(
        tmp_path, data_file, tokenizer, methods=("original", "tokenskip-forcing"), ratios=(1.0,)
    )
    result = runner.run()
    assert "needs --adapter" in result["skipped_methods"]["tokenskip-forcing"]
    assert [r["method"] for r in result["rows"]] == ["original"]


def test_instruction_budget_asks_for_each_cap_and_generates_at_it(tmp_path, data_file, tokenizer):
    runner, generator = make_runner(
        tmp_path, data_file, tokenizer, methods=("original", "instruction-budget")
    )
    result = runner.run()
    row_ = row(result, "instruction-budget", 1.0)
    # the script answers concisely (and wrongly) when told to: every cap saw the instruction
    assert row_["budgets"]["64"]["accuracy"] == 0.0
    assert (
        row_["budgets"]["64"]["cot_tokens_mean"]
        < row(result, "original", 1.0)["budgets"]["64"]["cot_tokens_mean"]
    )
    texts = [s for s in result["samples"] if s["method"] == "instruction-budget"]
    assert len(texts) == 2 * 3 and all(s["text"] for s in texts)


def test_instruction_budget_can_run_at_some_caps_only(tmp_path, data_file, tokenizer):
    runner, generator = make_runner(
        tmp_path, data_file, tokenizer, methods=("original", "instruction-budget"),
        instruction_budgets=(8,),
    )  # fmt: skip
    result = runner.run()
    assert set(row(result, "instruction-budget", 1.0)["budgets"]) == {"8"}
    assert set(row(result, "original", 1.0)["budgets"]) == {"8", "64"}
    texts = [s for s in result["samples"] if s["method"] == "instruction-budget"]
    assert len(texts) == 3 and {s["budget"] for s in texts} == {8}
    meta = {
        "model": "scripted", "adapter": None, "tokenizer": "smollm2",
        "dataset": {"source": str(data_file), "split": "test", "n": 3, "sha256": "ab" * 32},
        "config": {"budgets": [8, 64], "shots": 0, "price_per_1k_output": 0.0006},
        "command": "test", "hardware": {"cpu_count": 2, "cuda": None},
        "versions": {"torch": "x", "transformers": "y"}, "git_commit": "abc",
    }  # fmt: skip
    md = write_reports({"meta": meta, **result}, tmp_path / "report")["markdown"].read_text()
    assert "| instruction-budget | 1 |" in md and "not run" in md


def test_instruction_budgets_must_be_among_the_budgets(tmp_path, data_file):
    with pytest.raises(InvalidInputError, match="among the budgets"):
        EvalConfig(data=str(data_file), budgets=(8, 64), instruction_budgets=(16,))


SHOTS = tuple(
    gsm8k.Problem(i, q, s, a)
    for i, (q, s, a) in enumerate(
        [
            (
                "A farmer has 12 apples and sells 5 apples. How many apples remain?",
                "12 - 5 = 7 apples remain.\n#### 7",
                "7",
            ),
            (
                "A box holds 6 eggs. How many eggs are in 3 boxes of eggs?",
                "6 * 3 = 18 eggs.\n#### 18",
                "18",
            ),
            (
                "A train travels 60 miles per hour for 2 hours. How far does the train go?",
                "60 * 2 = 120 miles.\n#### 120",
                "120",
            ),
            (
                "Sam saves 10 dollars a week. How many dollars after 4 weeks?",
                "10 * 4 = 40 dollars.\n#### 40",
                "40",
            ),
        ]
    )
)


def test_exemplar_selection_keeps_whole_exemplars_relevant_to_each_question(
    tmp_path, data_file, tokenizer
):
    runner, _ = make_runner(
        tmp_path,
        data_file,
        tokenizer,
        methods=("original", "exemplar-selection"),
        ratios=(1.0, 0.5),
        budgets=(64,),
        shots=4,
        latency_samples=0,
        shot_problems=SHOTS,
    )
    full = runner.prompts("original", 1.0, 50.0)
    chosen = runner.prompts("exemplar-selection", 0.5, 50.0)
    for prompt, whole in zip(chosen, full):
        shots = [m["content"] for m in prompt.messages if m["role"] == "assistant"]
        assert 1 <= len(shots) < len(SHOTS)
        # whole exemplars: every kept solution is verbatim, its answer line included
        assert all(any(s == gsm8k.strip_calculator(x.solution) for x in SHOTS) for s in shots)
        assert runner._count_prompt(list(prompt.messages)) < runner._count_prompt(
            list(whole.messages)
        )
    # the egg question gets the egg exemplar
    eggs = next(i for i, p in enumerate(runner.dataset.problems) if "eggs" in p.question)
    assert any(
        "eggs" in m["content"]
        for m in chosen[eggs].messages
        if m["role"] == "user" and m["content"] != runner.dataset.problems[eggs].question
    )
    result = runner.run()
    assert {r["method"] for r in result["rows"]} == {"original", "exemplar-selection"}
