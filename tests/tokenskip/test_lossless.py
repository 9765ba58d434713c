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


# -- nested values, optional keys, mixed and nested arrays -------------------------------


def same(a, b) -> bool:
    """Equal as JSON, types included (``==`` takes ``1 == 1.0 == True``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_lists_of_scalars_are_cells_that_read_back_exactly():
    tags = [
        ["prod", "stable"],
        [],
        ["prod"],
        [""],
        ["a|b", "c,d", 'say "hi"'],
        [None, True, 1.50, "1", "null", "true"],
        [[1, 2], {"k": "v"}],
        [" padded", "[x", "é ü"],
    ]
    rows = [{"id": i, "tags": t} for i, t in enumerate(tags)]
    out = compact_json(json.dumps(rows, indent=2))
    lines = out.splitlines()
    assert lines[0] == "[8]{id,tags[]}:"
    assert lines[1:4] == ["0,prod|stable", "1,", "2,prod"]
    assert lines[4] == '3,""'
    assert lines[5] == '4,"a|b"|"c,d"|"say \\"hi\\""'
    assert lines[6] == '5,null|true|1.5|"1"|"null"|"true"'
    assert lines[7] == '6,[[1,2],{k:"v"}]'
    assert same(expand_tables(out), rows)
    assert "1.50" in compact_json('[{"a":[1.50,1e5]},{"a":[2]},{"a":[3]}]')  # kept as written


def test_a_missing_key_reads_back_missing_and_null_reads_back_null():
    rows = [{"id": 1, "note": "x"}, {"id": 2}, {"id": 3, "note": None}, {"id": 4, "note": "y"}]
    out = compact_json(json.dumps(rows))
    assert out.splitlines() == ["[4]{id,note?}:", "1,x", "2,", "3,null", "4,y"]
    back = expand_tables(out)
    assert "note" not in back[1] and back[2]["note"] is None
    assert same(back, rows)


def test_an_optional_list_column_tells_missing_from_empty():
    rows = [{"t": ["a"]}, {"t": []}, {}, {"t": ["b", "c"]}] + [{"t": ["x"]}] * 6
    out = compact_json(json.dumps(rows))
    assert out.splitlines()[:5] == ["[10]{t[]?}:", "a", "[]", "", "b|c"]
    assert same(expand_tables(out), rows)


def test_rare_keys_ride_in_a_last_json_cell():
    rows = [{"ts": i, "level": "INFO", "msg": f"ok {i}"} for i in range(10)]
    rows[4] = {"ts": 4, "level": "ERROR", "msg": "boom", "error": {"type": "Timeout", "ms": 50}}
    out = compact_json(json.dumps(rows, indent=2))
    lines = out.splitlines()
    assert lines[0] == "[10]{ts,level,msg,...}:"
    assert lines[5] == '4,ERROR,boom,{error:{type:"Timeout",ms:50}}'
    assert lines[6] == "5,INFO,ok 5"
    assert same(expand_tables(out), rows)


@pytest.mark.parametrize(("num_odd", "is_table"), [(0, True), (2, True), (3, False)])
def test_mixed_arrays_are_tables_while_most_rows_share_keys(num_odd, is_table):
    rows: list = [{"id": i, "name": f"n{i}", "ok": True} for i in range(20)]
    for i in range(num_odd):
        rows[3 + 5 * i] = {"marker": i}  # shares no key with the others
    out = compact_json(json.dumps(rows, indent=2))
    assert out.startswith("[20]{") is is_table
    assert same(expand_tables(out), rows)


def test_arrays_nested_in_objects_are_tables_named_by_their_path():
    data = {
        "data": {"results": records(6, seed=1), "page": 1},
        "meta": {"hits": {"items": [{"k": i, "v": [i]} for i in range(4)]}},
        "total": 6,
    }
    out = compact_json(json.dumps(data, indent=2))
    lines = out.splitlines()
    assert lines[0] == '{"data":{"page":1},"total":6}'  # "meta" held only a table
    assert lines[1].startswith("data.results[6]{")
    assert "meta.hits.items[4]{k,v[]}:" in lines
    assert same(expand_tables(out), data)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"": records(4)}),  # no name to give the table
        json.dumps({"a.b": records(4)}),  # a name that reads as a path
        json.dumps([{"x?": i} for i in range(4)]),  # a key that reads as an optional column
        "[" + ",".join(['{"a":{"b":1},"a":2}'] * 4) + "]",  # a repeated key
    ],
)
def test_names_that_would_read_back_differently_are_not_tables(text):
    out = compact_json(text)
    assert "\n" not in out and json.loads(out) == json.loads(text)


def test_keys_in_json_cells_are_bare_where_they_read_as_names():
    odd = {"a b": 1, "1x": 2, "": 3, 'q"': 4, "true": 5, "math.hypot": 6, "é-1": 7}
    rows = [{"id": i, "calls": [{**odd, "s": ',x:{y:"z"}', "n": i}]} for i in range(3)]
    out = compact_json(json.dumps(rows))
    assert out.splitlines()[1] == (
        '0,[{"a b":1,"1x":2,"":3,"q\\"":4,true:5,math.hypot:6,"é-1":7,s:",x:{y:\\"z\\"}",n:0}]'
    )
    assert same(expand_tables(out), rows)


def random_value(rng: random.Random, depth: int = 0):
    tricky = [
        "",
        " ",
        "a",
        "a|b",
        "|",
        "a,b",
        'q"',
        "x\ny",
        "null",
        "true",
        "1",
        "-0.5",
        " lead",
        "trail ",
        "[x",
        "{x",
        "...",
        "a  b",
        "é",
        "\t",
        "?",
        "\u2028",
        ",k:1",
        "{k:",
        "\\",
        'a\\"b',
    ]
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -7, 10**20, 1.5, -0.0, 1e-7, rng.randint(-999, 999)])
    if kind in (3, 4):
        return rng.choice(tricky)
    if kind in (5, 6):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = rng.sample(["p", "q r", "true", "", "k.v"], rng.randrange(4))
    return {k: random_value(rng, depth + 1) for k in keys}


def random_records(rng: random.Random) -> list[dict]:
    keys = rng.sample(["id", "tags", "user", "v", "n"], rng.randint(1, 5))
    p_missing = rng.choice([0.0, 0.05, 0.3, 0.6])
    rows = []
    for _ in range(rng.randrange(25)):
        row = {}
        for key in keys:
            if rng.random() >= p_missing:
                if key == "tags":
                    row[key] = [random_value(rng, 2) for _ in range(rng.randrange(4))]
                elif key == "user":
                    row[key] = {"login": random_value(rng, 2), "id": random_value(rng, 1)}
                else:
                    row[key] = random_value(rng, 1)
        if rng.random() < 0.1:
            row[rng.choice(["rare", "odd"])] = random_value(rng)
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(300))
def test_random_records_round_trip_exactly(seed):
    rng = random.Random(seed)
    rows = random_records(rng)
    data = rows if seed % 3 else {"results": rows, "meta": {"page": {"items": random_records(rng)}}}
    text = json.dumps(data, indent=2 if seed % 2 else None)
    assert same(expand_tables(compact_json(text)), data)


def log_records(n: int, seed: int = 11) -> list[dict]:
    """Structured log lines as a log-search tool returns them (``bench/tool_outputs.py``)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        level = rng.choices(["INFO", "WARN", "ERROR"], weights=[14, 4, 2])[0]
        record = {
            "timestamp": f"2026-03-14T09:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "level": level,
            "service": rng.choice(["checkout-api", "payments", "auth", "search"]),
            "message": f"{rng.choice(['GET', 'POST'])} /api/v1/orders {rng.choice([200, 404])}",
            "http": {
                "status": rng.choice([200, 201, 404]),
                "duration_ms": rng.randint(1, 999) / 10,
            },
            "tags": rng.choice([["prod", "stable"], ["prod", "canary"], ["prod"]]),
        }
        if rng.random() < 0.6:
            record["user_id"] = rng.randint(10_000, 99_999)
        if level == "ERROR":
            record["error"] = {"type": "TimeoutError", "retryable": rng.random() < 0.5}
        out.append(record)
    return out


def test_a_log_output_with_a_list_field_saves_far_more_than_minified_json(tokenizer):
    rows = log_records(300)
    pretty = json.dumps(rows, indent=2)
    done = lossless(pretty)
    assert done.is_data and same(expand_tables(done.text), rows)
    before = tokenizer.count(pretty)
    minified = tokenizer.count(json.dumps(rows, separators=(",", ":")))
    table = tokenizer.count(done.text)
    assert table < 0.75 * minified
    assert 1 - table / before > 0.45
