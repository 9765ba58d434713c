"""Query-OPT training: the multi-query examples, bad data, and a tiny run on the embedded model."""

import json

import pytest

from tests.trainers.conftest import PROBLEMS, write_gsm8k
from tokenskip.errors import InvalidInputError
from tokenskip.multi_query import BEGIN, END, parse_answers
from tokenskip.trainers.cot_data import read_jsonl
from tokenskip.trainers.query_opt import (
    QueryOptConfig,
    build_examples,
    build_groups,
    gsm8k_context,
    run_query_opt,
)
from tokenskip.trainers.sft import LoraSettings, TrainSettings


def config(tmp_path, **overrides):
    settings = dict(
        model="smollm2",
        out_dir=str(tmp_path / "run"),
        gsm8k_data=str(write_gsm8k(tmp_path / "train.jsonl")),
        shots=2,
        min_queries=2,
        max_queries=3,
        groups=4,
        train=TrainSettings(
            lora=LoraSettings(r=4, alpha=32, dropout=0.0),
            learning_rate=5e-3,
            max_steps=2,
            batch_size=2,
            save_steps=2,
            precision="fp32",
        ),
    )
    settings.update(overrides)
    return QueryOptConfig(**settings)


def test_gsm8k_groups_share_one_context_and_never_query_an_exemplar(tmp_path, smol):
    c = config(tmp_path)
    (tmp_path / "run").mkdir()
    summary = build_groups(c, progress=False)
    groups = list(read_jsonl(tmp_path / "run" / "groups.jsonl"))
    assert len(groups) == 4 and summary["queries"] == sum(len(g["queries"]) for g in groups)
    assert len({g["context"] for g in groups}) == 1
    context = groups[0]["context"]
    exemplars = [q for q, _ in PROBLEMS if f"Question: {q}" in context]
    assert len(exemplars) == 2 and "<<" not in context
    for g in groups:
        assert 2 <= len(g["queries"]) <= 3
        assert not set(g["queries"]) & set(exemplars)
        for q, a in zip(g["queries"], g["answers"]):
            reference = dict(PROBLEMS)[q]
            assert a.endswith(reference.rsplit("####", 1)[1].strip())


def test_examples_are_the_multi_query_prompt_and_a_parseable_marked_reply(tmp_path, smol):
    data = tmp_path / "groups.jsonl"
    data.write_text(
        json.dumps(
            {
                "context": "Tom has 3 apples.",
                "queries": ["How many?", "Who?"],
                "answers": ["3", "Tom"],
            }
        )
        + "\n"
    )
    c = config(tmp_path, data=str(data))
    (tmp_path / "run").mkdir()
    build_groups(c, progress=False)
    build_examples(c, smol.tokenizer)
    [example] = list(read_jsonl(tmp_path / "run" / "train.jsonl"))
    assert example["n"] == 2
    assert example["prompt"].startswith("<|im_start|>system\n")  # SmolLM2's default system turn
    assert (
        "<|im_start|>user\nTom has 3 apples.\n\nAnswer each of the 2 questions" in example["prompt"]
    )
    assert example["prompt"].endswith("1. How many?\n2. Who?<|im_end|>\n<|im_start|>assistant\n")
    assert example["completion"] == (
        f'{BEGIN}[{{"id": 1, "answer": "3"}}, {{"id": 2, "answer": "Tom"}}]{END}<|im_end|>\n'
    )
    assert parse_answers(example["completion"], [1, 2]).answers == {1: "3", 2: "Tom"}


def test_bad_group_lines_are_named_or_skipped(tmp_path):
    data = tmp_path / "groups.jsonl"
    good = json.dumps({"context": "c", "queries": ["q"], "answers": ["a"]})
    data.write_text(
        good
        + "\n"
        + json.dumps({"context": "c", "queries": ["q", "r"], "answers": ["a"]})
        + "\n{oops\n"
    )
    (tmp_path / "run").mkdir()
    with pytest.raises(InvalidInputError, match=r"groups\.jsonl:2: expected"):
        build_groups(config(tmp_path, data=str(data)), progress=False)
    summary = build_groups(config(tmp_path, data=str(data), on_bad_record="skip"), progress=False)
    assert summary["groups"] == 1 and len(summary["skipped_records"]) == 2
    assert "groups.jsonl:3" in summary["skipped_records"][1]


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="min_queries"):
        config(tmp_path, min_queries=5, max_queries=2)
    with pytest.raises(InvalidInputError, match="cannot fill"):
        (tmp_path / "run").mkdir()
        build_groups(config(tmp_path, shots=5, max_queries=3), progress=False)


def test_a_tiny_run_writes_an_adapter_with_its_metadata(tmp_path):
    meta = run_query_opt(config(tmp_path), progress=False)
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    on_disk = json.loads((adapter / "query_opt.json").read_text())
    assert on_disk["format"] == "tokenskip-query-opt/1" and on_disk["training"]["steps"] == 2
    assert on_disk["data"]["groups"]["groups"] == 4 and meta["base_model"] == "smollm2"
    # The same settings again: nothing to redo, the run directory is accepted.
    again = run_query_opt(config(tmp_path), progress=False)
    assert again["training"]["resumed_from"].endswith("checkpoint-2")


def test_gsm8k_context_format():
    from tokenskip.tasks.gsm8k import INSTRUCTION, Problem

    shot = Problem(0, "Q?", "A <<1+1=2>>2\n#### 2", "2")
    assert gsm8k_context((shot,)) == f"{INSTRUCTION}\n\nQuestion: Q?\nAnswer: A 2\n#### 2"


def test_continuing_an_adapter_on_fresh_groups_starts_from_its_weights(tmp_path):
    from safetensors.torch import load_file

    first = run_query_opt(config(tmp_path), progress=False)
    start = first["training"]["adapter"]
    settings = config(tmp_path).train
    settings.init_adapter = start
    settings.learning_rate = 1e-12  # one step that cannot move the weights measurably
    settings.max_steps = 1
    second = config(tmp_path, out_dir=str(tmp_path / "run2"), group_seed=1, train=settings)
    meta = run_query_opt(second, progress=False)
    assert meta["training"]["init_adapter"] == start
    a = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "run2" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    trained_b = [k for k in a if "lora_B" in k and a[k].abs().max() > 0]
    assert trained_b, "the first run trained its LoRA B matrices away from zero"
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-6, k
    # fresh groups over the same context
    g1 = list(read_jsonl(tmp_path / "run" / "groups.jsonl"))
    g2 = list(read_jsonl(tmp_path / "run2" / "groups.jsonl"))
    assert {g["context"] for g in g1} == {g["context"] for g in g2}
    assert [g["indices"] for g in g1] != [g["indices"] for g in g2]


def test_init_adapter_must_be_an_adapter_directory(tmp_path):
    with pytest.raises(InvalidInputError, match="not a peft adapter directory"):
        TrainSettings(init_adapter=str(tmp_path))


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    from tokenskip.trainers.runs import claim_run_dir

    claim_run_dir(str(tmp_path / "r"), {"a": 1, "train": {"lr": 2}})
    claim_run_dir(str(tmp_path / "r"), {"a": 1, "new": None, "train": {"lr": 2, "x": None}})
    with pytest.raises(InvalidInputError, match=r"differs in: new \(unset there, 3 now\)"):
        claim_run_dir(str(tmp_path / "r"), {"a": 1, "new": 3, "train": {"lr": 2}})
    # a nested setting is named by its own path, not by its section
    with pytest.raises(
        InvalidInputError,
        match=r"differs in: train\.lr \(2 there, 5 now\)\)",
    ):
        claim_run_dir(str(tmp_path / "r"), {"a": 1, "train": {"lr": 5}})
