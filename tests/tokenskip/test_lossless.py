"""Lossless transforms: fewer tokens, and the data comes back exactly."""

import json
import random

import pytest

from tokenskip.lossless import (
    collapse_repeats,
    compact_json,
    expand_tables,
    lossless,
    normalize_whitespace,
)


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    titles = ["Fix crash, on start", "Add docs", "1.5", "true", "", "  padded", 'say "hi"', "a\nb"]
    return [
        {
            "id": 1000 + i,
            "title": rng.choice(titles),
            "state": rng.choice(["open", "closed"]),
            "user": {
                "login": rng.choice(["alice", "bob"]),
                "id": rng.randint(1, 99),
                "type": "User",
            },
            "labels": rng.sample(["bug", "docs", "perf"], rng.randint(0, 2)),
            "score": round(rng.random() * 10, 3),
            "ratio": 1.50,
            "big": 12345678901234567890,
            "draft": False,
            "assignee": None if rng.random() < 0.5 else "alice",
            "repo": "org/tokenskip",
            "meta": {},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_tables_round_trip_exactly(seed):
    data = {"total": 40, "items": records(40, seed), "next": None}
    text = json.dumps(data, indent=2)
    out = compact_json(text)
    assert "items[40]{" in out
    assert expand_tables(out) == data


def test_a_top_level_array_becomes_one_table_with_constant_columns_factored():
    rows = records(10)
    out = compact_json(json.dumps(rows))
    header = out.splitlines()[0]
    assert (
        header.startswith("[10]{")
        and "every row also" in header
        and '"repo":"org/tokenskip"' in header
    )
    assert len(out.splitlines()) == 11
    assert expand_tables(out) == rows


def test_numbers_are_kept_as_written():
    text = '{"price": 1.50, "exp": 1e5, "neg": -0.0}'
    assert compact_json(text) == '{"price":1.50,"exp":1e5,"neg":-0.0}'


@pytest.mark.parametrize(
    "value",
    [
        [{"a": 1}, {"b": 2}, {"a": 3}],  # different keys: not a table
        [{"a.b": 1}, {"a.b": 2}, {"a.b": 3}],  # a key that cannot be a column name
        [1, 2, 3],
        [{"a": 1}, {"a": 2}],  # too few rows
    ],
)
def test_what_cannot_be_a_table_is_only_minified(value):
    out = compact_json(json.dumps(value, indent=2))
    assert json.loads(out) == value


def test_json_blocks_inside_prose_are_compacted_and_the_prose_kept():
    rows = records(5)
    text = "Here is the result:\n" + json.dumps(rows, indent=2) + "\nPlease summarise it."
    out = lossless(text)
    assert out.transforms[0] == "json"
    assert out.text.startswith("Here is the result:\n[5]{")
    assert out.text.endswith("\nPlease summarise it.")
    ((start, end),) = out.data_spans
    assert expand_tables(out.text[start:end]) == rows
    assert not out.is_data and lossless(json.dumps(rows)).is_data


def test_whitespace_is_normalised_outside_code_and_quotes():
    text = 'a  b   c  \n\n\n\nnext\t\tline\n```\nx  =  1\n```\nsaid "two  spaces"  here'
    out = normalize_whitespace(text)
    assert out.startswith("a b c\n\nnext line\n```\nx  =  1\n```")
    assert 'said "two  spaces"  here' in out


def test_repeated_lines_and_blocks_are_counted():
    log = "start\n" + "ERROR connection refused\n" * 5 + "a\nb\n" * 4 + "end"
    out = collapse_repeats(log)
    assert out.splitlines() == [
        "start",
        "ERROR connection refused",
        "[previous line repeated 4 more times]",
        "a",
        "b",
        "[previous 2 lines repeated 3 more times]",
        "end",
    ]
    assert collapse_repeats("x\nx\ny") == "x\nx\ny"  # two is no run


def test_lossless_names_what_changed_and_leaves_clean_text_alone():
    assert lossless("Already clean text.").transforms == ()
    assert lossless("Two  spaces.").transforms == ("whitespace",)


def test_table_beats_minified_json_and_csv_in_tokens(tokenizer):
    import csv
    import io

    rows = records(100)
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items() if not isinstance(v, dict)}
        row.update({f"user.{k}": v for k, v in r["user"].items()})
        row["labels"] = json.dumps(r["labels"])
        row["meta"] = "{}"
        flat.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    table = tokenizer.count(compact_json(json.dumps(rows, indent=2)))
    minified = tokenizer.count(json.dumps(rows, separators=(",", ":")))
    assert table < tokenizer.count(buf.getvalue()) < minified
