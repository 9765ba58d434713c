"""evaluation/gsm8k.py: the answer extractor, the grader, the loader and the prompt format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenskip.errors import InvalidInputError
from tokenskip.tasks.gsm8k import (
    DEFAULT_DIR,
    INSTRUCTION,
    Dataset,
    Problem,
    build_messages,
    build_prompt,
    cot_and_answer,
    extract_answer,
    is_correct,
    load_gsm8k,
    normalize_number,
    shots_from,
    strip_calculator,
)

# ---------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        # #### lines
        ("She sold 24.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("#### 1,000,000", "1000000"),
        ("#### -5", "-5"),
        ("#### −5", "-5"),
        ("#### 3/4", "0.75"),
        ("#### 18 dollars", "18"),
        ("#### $18.00", "18"),
        ("#### 25%", "25"),
        ("#### 0.50", "0.5"),
        ("#### .5", "0.5"),
        ("#### 12kg", "12"),
        ("#### 5 + 3 = 8", "8"),
        ("#### **42**", "42"),
        ("####\n18", "18"),
        # the last #### wins over everything, later stray numbers included
        ("#### 18\nThat took 3 steps and 2 minutes.", "18"),
        ("#### 7\n#### 9", "9"),
        ("The answer is 5.\n\\boxed{6}\n#### 7\nThe answer is 8.", "7"),
        # a markdown heading is not an answer marker
        ("#### Step 1: eggs\n16 - 3 - 4 = 9 eggs, 9 * 2 = 18.", "18"),
        ("#### Step 2\nThe answer is 20.", "20"),
        # \boxed{} with nested braces
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("\\boxed{\\dfrac{1}{8}}", "0.125"),
        ("\\boxed{-\\frac{1}{2}}", "-0.5"),
        ("\\boxed{{12}}", "12"),
        ("\\boxed{1,234}", "1234"),
        ("\\boxed{\\$18}", "18"),
        ("\\boxed{25\\%}", "25"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("\\boxed{x = 5}", "5"),
        ("So $\\boxed{3}$ first, then \\boxed{4} is final. 99 reasons.", "4"),
        ("\\boxed{\\frac{3}{4}", "0.75"),  # never closed: not a box, read as the last number
        # "The (final) answer is"
        ("The answer is $18.00.", "18"),
        ("so the answer is -3.", "-3"),
        ("the answer is −7", "-7"),
        ("The answer is 5 apples.", "5"),
        ("The answer is therefore unclear.\nShe has 6 eggs left.", "6"),
        ("The final answer is 1,234 dollars.", "1234"),
        ("Final answer: 42", "42"),
        ("The answer is:\n\n$18", "18"),
        ("The answer is 5 + 3 = 8 apples.", "8"),
        ("The answer is 18, since 9 eggs sell at $2.", "18"),
        ("The answer is 18. Let me check: 9 * 2 = 18.\nYes, the answer is right. 7 days.", "18"),
        # the last number of the text
        ("So 5 + 3 = 8 apples", "8"),
        ("She has 3, 4 apples", "4"),
        ("She has 3/4 of a pie left", "0.75"),
        ("Total: 10 - 5 = 5.\nDone in 2 hours", "2"),
        ("It fell 10 -5 feet", "5"),
        ("Paid $1,234.50 in total.", "1234.5"),
        ("She ate 2 1/2 pies", "0.5"),  # mixed numbers are not recognized
        ("x is −12 now", "-12"),
        ("COVID19 costs nothing", None),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("18", "18"),
        ("18.0", "18"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("-3", "-3"),
        ("−3", "-3"),
        ("1,234", "1234"),
        ("$18.00.", "18"),
        ("25%", "25"),
        ("3/4", "0.75"),
        ("1/3", "0.3333333333"),
        ("\\frac{3}{4}", "0.75"),
        ("18 dollars", "18"),
        ("12kg", "12"),
        ("123456789012345.5", "123456789012345.5"),
        ("1/0", None),
        ("5 + 3", None),
        ("3, 4", None),
        ("", None),
        ("abc", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "predicted, reference, expected",
    [
        ("18", "18", True),
        ("18.0004", "18", True),
        ("18.01", "18", False),
        ("18", "18.0004", True),
        ("-5", "-5", True),
        ("5", "-5", False),
        ("0.75", "0.75", True),
        ("1000000", "1000000", True),
        ("18.001", "18", True),
        ("17.998", "18", False),
        ("1000000.0009", "1000000", True),
        ("1000001", "1000000", False),  # absolute: 1e-3 of a million would accept this
        ("123456789012345", "123456789012345.01", True),  # relative 1e-9 for huge numbers
        ("1,234", "1234", True),
        (None, "18", False),
        ("eighteen", "18", False),
    ],
)
def test_is_correct(predicted, reference, expected):
    assert is_correct(predicted, reference) is expected


def test_is_correct_refuses_a_reference_that_is_not_a_number():
    with pytest.raises(InvalidInputError, match="not a number"):
        is_correct("18", "eighteen")


@pytest.mark.parametrize(
    "text, reasoning, answer",
    [
        ("She sold 24.\nThen 48.\n#### 72", "She sold 24.\nThen 48.", "#### 72"),
        ("9 * 2 = 18.\nThe answer is 18.", "9 * 2 = 18.", "The answer is 18."),
        ("Just reasoning, 5 eggs.", "Just reasoning, 5 eggs.", ""),
    ],
)
def test_cot_and_answer(text, reasoning, answer):
    assert cot_and_answer(text) == (reasoning, answer)


def test_strip_calculator():
    text = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    assert strip_calculator(text) == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs.\nShe makes 9 * 2 = $18.\n#### 18"
    )


# ---------------------------------------------------------------------------- loading

RECORDS = [
    {"question": "Q0: 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"},
    {
        "question": "Q1: how much?",
        "answer": "It is 1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234",
    },
    {"question": "Q2: debt?", "answer": "0 - 5 = -5\n#### -5"},
    {"question": "Q3: 3 * 3?", "answer": "3 * 3 = 9\n#### 9"},
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good_lines() -> list[str]:
    return [json.dumps(r) for r in RECORDS]


def test_load_good_file(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", good_lines())
    data = load_gsm8k(path)
    assert isinstance(data, Dataset)
    assert len(data) == 4
    assert [p.answer for p in data] == ["2", "1234", "-5", "9"]
    assert [p.index for p in data] == [0, 1, 2, 3]
    assert data.problems[1] == Problem(
        index=1,
        question=RECORDS[1]["question"],
        solution=RECORDS[1]["answer"],
        answer="1234",
    )
    assert data.source == str(path)
    assert data.skipped == ()


@pytest.mark.parametrize("limit, expected", [(1, ["2"]), (3, ["2", "1234", "-5"]), (10, None)])
def test_load_limit(tmp_path, limit, expected):
    path = write_jsonl(tmp_path / "test.jsonl", good_lines())
    answers = [p.answer for p in load_gsm8k(path, limit=limit)]
    assert answers == (expected or ["2", "1234", "-5", "9"])


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_load_refuses_a_bad_limit(tmp_path, limit):
    path = write_jsonl(tmp_path / "test.jsonl", good_lines())
    with pytest.raises(InvalidInputError, match="limit"):
        load_gsm8k(path, limit=limit)


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"question": "Q", "answer": "#### 3"', "not valid JSON"),
        ('{"answer": "1 + 2 = 3\\n#### 3"}', "missing or empty 'question'"),
        ('{"question": "Q"}', "missing or empty 'answer'"),
        ('{"question": "", "answer": "#### 3"}', "missing or empty 'question'"),
        ('{"question": "Q", "answer": "it is 3"}', "no '#### <number>' line"),
        ('{"question": "Q", "answer": "#### three"}', "'three' is not a number"),
        ('["Q", "#### 3"]', "expected a JSON object"),
    ],
)
def test_load_malformed_line_names_file_and_line(tmp_path, bad_line, reason):
    lines = good_lines()
    lines.insert(2, bad_line)  # line 3 of the file
    path = write_jsonl(tmp_path / "test.jsonl", lines)
    with pytest.raises(InvalidInputError) as info:
        load_gsm8k(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert "test.jsonl:3: " in message
    assert reason in message


def test_load_skip_mode_collects_messages(tmp_path):
    lines = good_lines()
    lines.insert(1, "{not json")
    lines.insert(3, "")  # blank lines are ignored, not malformed
    lines.append('{"question": "Q", "answer": "no marker"}')
    path = write_jsonl(tmp_path / "test.jsonl", lines)
    data = load_gsm8k(path, on_error="skip")
    assert [p.answer for p in data] == ["2", "1234", "-5", "9"]
    # skipped records keep their positions: indices are positions among the records
    assert [p.index for p in data] == [0, 2, 3, 4]
    assert len(data.skipped) == 2
    assert data.skipped[0].startswith(f"{path}:2: not valid JSON")
    assert data.skipped[1].startswith(f"{path}:7: ")
    assert "no '#### <number>' line" in data.skipped[1]


def test_load_limit_stops_before_later_malformed_lines(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [*good_lines(), "{broken"])
    assert len(load_gsm8k(path, limit=4)) == 4
    with pytest.raises(InvalidInputError, match=":5: not valid JSON"):
        load_gsm8k(path)


def test_load_all_malformed_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", ["{bad", "{worse"])
    with pytest.raises(InvalidInputError, match="no GSM8K problems .2 malformed"):
        load_gsm8k(path, on_error="skip")


@pytest.mark.parametrize("source", ["missing.jsonl", "missing_dir/test.jsonl"])
def test_load_missing_path(tmp_path, source):
    with pytest.raises(InvalidInputError, match="no such file or directory.*openai/gsm8k"):
        load_gsm8k(tmp_path / source)


def test_load_unreadable_path(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(b'{"question": "Q", "answer": "#### 3"}\n\xff\xfe\n')
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_gsm8k(path)


def test_load_directory_resolves_the_split(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", good_lines())
    write_jsonl(tmp_path / "train.jsonl", good_lines()[:2])
    assert len(load_gsm8k(tmp_path)) == 4
    assert len(load_gsm8k(str(tmp_path), split="train")) == 2
    assert load_gsm8k(tmp_path, split="train").source == str(tmp_path / "train.jsonl")
    with pytest.raises(InvalidInputError, match="has no validation.jsonl"):
        load_gsm8k(tmp_path, split="validation")


@pytest.mark.parametrize("split", ["", "../test", "a/b"])
def test_load_refuses_a_bad_split(tmp_path, split):
    with pytest.raises(InvalidInputError, match="split"):
        load_gsm8k(tmp_path, split=split)


def test_load_refuses_a_bad_on_error(tmp_path):
    with pytest.raises(InvalidInputError, match="on_error"):
        load_gsm8k(tmp_path, on_error="ignore")


def test_load_sha256_is_the_file_hash_and_stable(tmp_path):
    import hashlib

    path = write_jsonl(tmp_path / "test.jsonl", good_lines())
    first = load_gsm8k(path)
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_gsm8k(path, limit=1).sha256 == first.sha256
    copy = write_jsonl(tmp_path / "copy.jsonl", good_lines())
    assert load_gsm8k(copy).sha256 == first.sha256
    changed = write_jsonl(tmp_path / "changed.jsonl", good_lines()[::-1])
    assert load_gsm8k(changed).sha256 != first.sha256


def test_the_data_folder_can_be_named_by_the_environment(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "test.jsonl", good_lines())
    monkeypatch.setenv("TOKENSKIP_GSM8K_DIR", str(tmp_path))
    monkeypatch.setattr("tokenskip.tasks.gsm8k.DEFAULT_DIR", tmp_path / "nowhere")
    assert len(load_gsm8k()) == len(good_lines())


def test_load_default_dir_missing_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENSKIP_GSM8K_DIR", raising=False)
    monkeypatch.setattr("tokenskip.tasks.gsm8k.DEFAULT_DIR", tmp_path / "nowhere")
    with pytest.raises(InvalidInputError) as info:
        load_gsm8k()
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "test.jsonl") in message
    assert "openai/gsm8k" in message


@pytest.mark.skipif(
    not (DEFAULT_DIR / "test.jsonl").is_file(),
    reason=f"GSM8K data is external and not present at {DEFAULT_DIR}",
)
@pytest.mark.parametrize("split, count", [("test", 1319), ("train", 7473)])
def test_load_shared_data(split, count):
    data = load_gsm8k(split=split)
    assert len(data) == count
    assert data.skipped == ()
    assert all(p.index == i for i, p in enumerate(data))
    # the reference solution's own final line reads back as the reference answer
    assert all(is_correct(extract_answer(p.solution), p.answer) for p in data)


@pytest.mark.network
def test_load_from_hub_matches_the_shared_file():
    hub = load_gsm8k("openai/gsm8k", split="test", limit=5)
    assert len(hub) == 5
    assert hub.source.startswith("hf:openai/gsm8k")
    if (DEFAULT_DIR / "test.jsonl").is_file():
        assert hub.problems == load_gsm8k(split="test", limit=5).problems


# ---------------------------------------------------------------------------- prompts

SHOT_DATA = Dataset(
    problems=tuple(
        Problem(index=i, question=r["question"], solution=r["answer"], answer="0")
        for i, r in enumerate(RECORDS)
    ),
    source="inline",
    sha256="",
)
QUESTION = "Janet's ducks lay 16 eggs per day. How many are left after she eats 3?"


@pytest.mark.parametrize("k", [0, 1, 3])
def test_shots_from_is_deterministic(k):
    shots = shots_from(SHOT_DATA, k, seed=1)
    assert len(shots) == k
    assert len({p.index for p in shots}) == k
    assert shots == shots_from(SHOT_DATA, k, seed=1)


def test_shots_from_depends_on_the_seed():
    draws = {shots_from(SHOT_DATA, 2, seed=s) for s in range(10)}
    assert len(draws) > 1


@pytest.mark.parametrize("k", [-1, 5])
def test_shots_from_refuses_a_bad_k(k):
    with pytest.raises(InvalidInputError, match="k must be"):
        shots_from(SHOT_DATA, k)


def test_build_messages_turns():
    shots = SHOT_DATA.problems[:2]
    messages = build_messages(QUESTION, shots=shots)
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[0]["content"] == INSTRUCTION
    assert messages[2]["content"] == "1 + 1 = 2\n#### 2"
    assert messages[-1] == {"role": "user", "content": QUESTION}
    assert build_messages(QUESTION, instruction="")[0] == {"role": "user", "content": QUESTION}
    with pytest.raises(InvalidInputError):
        build_messages("  ")


def test_build_prompt_zero_shot(smol):
    prompt = build_prompt(smol.tokenizer, QUESTION)
    assert QUESTION in prompt
    assert INSTRUCTION in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>assistant") == 1


@pytest.mark.parametrize("k", [1, 3])
def test_build_prompt_k_shot(smol, k):
    shots = shots_from(SHOT_DATA, k)
    prompt = build_prompt(smol.tokenizer, QUESTION, shots=shots)
    # k exemplar answers plus the generation header
    assert prompt.count("<|im_start|>assistant\n") == k + 1
    for shot in shots:
        assert f"<|im_start|>assistant\n{strip_calculator(shot.solution)}<|im_end|>" in prompt
        assert "<<" not in strip_calculator(shot.solution)
    assert "<<" not in prompt
    assert prompt.rindex(QUESTION) > max(prompt.index(s.question) for s in shots)
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("suffix", ["<|im_end|>0.5<|im_end|>", "<|im_end|>0.9<|im_end|>", ""])
def test_build_prompt_suffix_follows_the_question_in_its_user_turn(smol, suffix):
    prompt = build_prompt(smol.tokenizer, QUESTION, suffix=suffix)
    assert f"<|im_start|>user\n{QUESTION}{suffix}<|im_end|>\n<|im_start|>assistant\n" in prompt
    assert prompt.count(QUESTION) == 1
