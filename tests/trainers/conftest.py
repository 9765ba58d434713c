"""A tiny GSM8K-format training set written to disk (the pipeline reads files)."""

import json

import pytest

PROBLEMS = [
    (
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "Tom starts with 3 apples.\nHe buys 4 more, so he has 3+4 = <<3+4=7>>7 apples.\n#### 7",
    ),
    (
        "A box holds 6 eggs. How many eggs are in 5 boxes?",
        "Each box holds 6 eggs.\nFive boxes hold 6*5 = <<6*5=30>>30 eggs.\n#### 30",
    ),
    (
        "Sara reads 12 pages a day. How many pages does she read in a week?",
        "A week has 7 days.\nShe reads 12*7 = <<12*7=84>>84 pages.\n#### 84",
    ),
    (
        "A shirt costs $20 and is on sale for half price. What does it cost?",
        "Half of the price is 20/2 = <<20/2=10>>10 dollars.\nThe shirt costs $10.\n#### 10",
    ),
    (
        "Ben ran 5 km on Monday and twice as far on Tuesday. How far did he run in total?",
        "On Tuesday he ran 5*2 = <<5*2=10>>10 km.\nIn total he ran 5+10 = <<5+10=15>>15 km.\n#### 15",
    ),
    (
        "There are 40 students and 8 leave. How many students stay?",
        "The students who stay are 40-8 = <<40-8=32>>32.\nSo 32 students stay.\n#### 32",
    ),
]


def write_gsm8k(path, problems=PROBLEMS, extra_lines=()):
    lines = [json.dumps({"question": q, "answer": a}) for q, a in problems]
    lines.extend(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def train_file(tmp_path):
    return write_gsm8k(tmp_path / "train.jsonl")
