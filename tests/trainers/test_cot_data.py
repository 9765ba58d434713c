"""The data stages: CoT collection, compression at the γ grid, ratio-prompt examples."""

import json

import pytest

from tests.trainers.conftest import PROBLEMS, write_gsm8k
from tokenskip.errors import InvalidInputError
from tokenskip.tasks.gsm8k import INSTRUCTION
from tokenskip.trainers.cot_data import (
    BuildConfig,
    CollectConfig,
    CompressConfig,
    build_examples,
    check_grid,
    collect_cots,
    compress_cots,
    read_jsonl,
)


def records(path):
    return list(read_jsonl(path))


def test_grid_is_checked_sorted_and_excludes_one():
    assert check_grid((0.9, 0.5, 0.5, 1.0)) == (0.5, 0.9)
    for bad in [(), (0.0,), (1.5,), (0.5, -0.1), (float("nan"),), (1.0,)]:
        with pytest.raises(InvalidInputError):
            check_grid(bad)


def test_reference_collection_strips_calculator_and_applies_the_length_limit(tmp_path, smol):
    data = write_gsm8k(tmp_path / "train.jsonl")
    out = tmp_path / "cots.jsonl"
    summary = collect_cots(
        CollectConfig(
            model="smollm2",
            out_file=str(out),
            data=str(data),
            source="reference",
            max_cot_tokens=25,
        ),
        progress=False,
        tokenizer=smol.tokenizer,
    )
    got = records(out)
    assert [r["index"] for r in got] == list(range(len(PROBLEMS)))
    assert all("<<" not in r["cot"] for r in got)
    assert (
        got[0]["cot"]
        == "Tom starts with 3 apples.\nHe buys 4 more, so he has 3+4 = 7 apples.\n#### 7"
    )
    too_long = [r for r in got if r["tokens"] > 25]
    assert too_long and all(not r["kept"] and "> 25" in r["reason"] for r in too_long)
    assert summary["kept"] == sum(r["kept"] for r in got) == len(got) - len(too_long)


def test_collection_resumes_and_reports_bad_lines(tmp_path, smol):
    data = write_gsm8k(tmp_path / "train.jsonl", extra_lines=['{"question": "no answer"}'])
    out = tmp_path / "cots.jsonl"
    config = CollectConfig(model="smollm2", out_file=str(out), data=str(data), source="reference")
    with pytest.raises(InvalidInputError, match=r"train\.jsonl:7"):
        collect_cots(config, progress=False, tokenizer=smol.tokenizer)
    assert not out.exists()  # the error came before any work

    config.on_bad_record = "skip"
    config.limit = 2
    collect_cots(config, progress=False, tokenizer=smol.tokenizer)
    with out.open("a") as f:
        f.write('{"index": 2, "cot": "torn')  # a crash mid-write
    config.limit = None
    summary = collect_cots(config, progress=False, tokenizer=smol.tokenizer)
    assert [r["index"] for r in records(out)] == list(range(len(PROBLEMS)))
    assert summary["skipped_records"] and "train.jsonl:7" in summary["skipped_records"][0]


def test_model_collection_keeps_only_correct_finished_cots(tmp_path, smol):
    data = write_gsm8k(tmp_path / "train.jsonl", problems=PROBLEMS[:2])
    out = tmp_path / "cots.jsonl"
    collect_cots(
        CollectConfig(
            model="smollm2",
            out_file=str(out),
            data=str(data),
            source="model",
            max_new_tokens=8,
            batch_size=2,
        ),
        progress=False,
    )
    got = records(out)
    assert len(got) == 2 and all(r["source"] == "model" for r in got)
    # 8 tokens cannot finish a worked answer: every one is cut off and not kept.
    assert all(not r["kept"] and r["reason"] == "cut off at max_new_tokens" for r in got)


def cots_file(tmp_path, smol):
    data = write_gsm8k(tmp_path / "train.jsonl")
    out = tmp_path / "cots.jsonl"
    collect_cots(
        CollectConfig(model="smollm2", out_file=str(out), data=str(data), source="reference"),
        progress=False,
        tokenizer=smol.tokenizer,
    )
    return out


def test_compression_covers_the_grid_keeps_the_answer_and_resumes(tmp_path, smol):
    cots = cots_file(tmp_path, smol)
    out = tmp_path / "compressed.jsonl"
    config = CompressConfig(
        model="smollm2",
        cots_file=str(cots),
        out_file=str(out),
        grid=(0.5, 0.8),
        scorer="heuristic",
    )
    first = records(cots)[0]
    out.write_text(
        json.dumps(
            {
                "index": 0,
                "question": "q",
                "answer": "7",
                "cot": first["cot"],
                "compressed": {
                    "0.5": {"text": "x", "achieved_ratio": 0.5},
                    "0.8": {"text": "y", "achieved_ratio": 0.8},
                },
            }
        )
        + "\n"
        + '{"index": 1, "ques'
    )  # one done, one torn by a crash
    summary = compress_cots(config, progress=False)
    got = records(out)
    assert [r["index"] for r in got] == list(range(len(PROBLEMS)))
    assert got[0]["compressed"]["0.5"]["text"] == "x"  # not redone
    for r in got[1:]:
        assert set(r["compressed"]) == {"0.5", "0.8"}
        short, long = r["compressed"]["0.5"], r["compressed"]["0.8"]
        assert short["kept_tokens"] < long["kept_tokens"] <= long["reasoning_tokens"]
        assert short["text"].endswith("#### " + r["answer"])
    assert set(summary["mean_achieved_ratio"]) == {"0.5", "0.8"}


def test_examples_have_the_exact_ratio_prompt_format(tmp_path, smol):
    compressed = tmp_path / "compressed.jsonl"
    compressed.write_text(
        json.dumps(
            {
                "index": 3,
                "question": "What is 2+2?",
                "answer": "4",
                "cot": "Two plus two is 2+2 = 4.\n#### 4",
                "compressed": {"0.5": {"text": "2+2 = 4\n#### 4", "achieved_ratio": 0.5}},
            }
        )
        + "\n"
    )
    out = tmp_path / "train.jsonl"
    summary = build_examples(
        BuildConfig(
            model="smollm2",
            compressed_file=str(compressed),
            out_file=str(out),
            include_original=False,
        ),
        tokenizer=smol.tokenizer,
    )
    [example] = records(out)
    assert example == {
        "index": 3,
        "gamma": 0.5,
        "prompt": f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>0.5<|im_end|><|im_end|>\n"
        "<|im_start|>assistant\n",
        "completion": "2+2 = 4\n#### 4<|im_end|>\n",
    }
    assert summary["delimiter"] == "<|im_end|>" and summary["gamma_counts"] == {"0.5": 1}

    # With the original included, γ = 1.0 appends nothing and keeps the CoT whole; the other
    # draw uses the configured delimiter. Seeds are tried until both draws have been seen.
    seen = {}
    for seed in range(20):
        build_examples(
            BuildConfig(
                model="smollm2",
                compressed_file=str(compressed),
                out_file=str(out),
                delimiter="<|endoftext|>",
                seed=seed,
            ),
            tokenizer=smol.tokenizer,
        )
        [example] = records(out)
        seen.setdefault(example["gamma"], example)
    assert set(seen) == {0.5, 1.0}
    assert "What is 2+2?<|im_end|>\n" in seen[1.0]["prompt"]
    assert seen[1.0]["completion"] == "Two plus two is 2+2 = 4.\n#### 4<|im_end|>\n"
    assert "What is 2+2?<|endoftext|>0.5<|endoftext|><|im_end|>" in seen[0.5]["prompt"]
    assert seen[0.5]["completion"] == "2+2 = 4\n#### 4<|im_end|>\n"


def test_gamma_is_drawn_over_the_grid_and_one(tmp_path, smol):
    compressed = tmp_path / "compressed.jsonl"
    with compressed.open("w") as f:
        for i in range(60):
            versions = {
                g: {"text": f"short {g}\n#### 1", "achieved_ratio": float(g)}
                for g in ("0.5", "0.7")
            }
            f.write(
                json.dumps(
                    {
                        "index": i,
                        "question": f"Q{i}?",
                        "answer": "1",
                        "cot": "long\n#### 1",
                        "compressed": versions,
                    }
                )
                + "\n"
            )
    out = tmp_path / "train.jsonl"
    summary = build_examples(
        BuildConfig(model="smollm2", compressed_file=str(compressed), out_file=str(out)),
        tokenizer=smol.tokenizer,
    )
    assert set(summary["gamma_counts"]) == {"0.5", "0.7", "1"}
    assert sum(summary["gamma_counts"].values()) == 60


def test_a_delimiter_the_tokenizer_cannot_encode_is_refused(tmp_path, smol):
    compressed = tmp_path / "compressed.jsonl"
    compressed.write_text(
        json.dumps(
            {
                "index": 0,
                "question": "Q?",
                "answer": "1",
                "cot": "c",
                "compressed": {"0.5": {"text": "c"}},
            }
        )
        + "\n"
    )
    with pytest.raises(InvalidInputError, match="delimiter"):
        build_examples(
            BuildConfig(
                model="smollm2",
                compressed_file=str(compressed),
                out_file=str(tmp_path / "t.jsonl"),
                delimiter="\ud800",
            ),
            tokenizer=smol.tokenizer,
        )
    assert not (tmp_path / "t.jsonl").exists()
