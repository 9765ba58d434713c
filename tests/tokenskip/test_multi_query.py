"""Query-OPT prompt building and robust, never-guessing answer parsing."""

import json

import pytest

from tokenskip.errors import InvalidInputError
from tokenskip.multi_query import (
    BEGIN,
    END,
    Query,
    TailCheck,
    build_messages,
    format_answers,
    make_queries,
    parse_answers,
    queries_block,
    repeating,
)


def test_queries_are_numbered_and_checked():
    assert make_queries(["a?", "b?"]) == [Query(1, "a?"), Query(2, "b?")]
    assert make_queries([{"id": 7, "query": "x?"}, {"query": "y?"}]) == [
        Query(7, "x?"),
        Query(2, "y?"),
    ]
    with pytest.raises(InvalidInputError, match="non-empty list"):
        make_queries([])
    with pytest.raises(InvalidInputError, match=r"duplicate query ids: \[3\]"):
        make_queries([{"id": 3, "query": "a"}, {"id": 3, "query": "b"}])
    with pytest.raises(InvalidInputError, match="query 2 is empty"):
        make_queries(["a", "  "])
    with pytest.raises(InvalidInputError, match="id must be"):
        make_queries([{"id": "x", "query": "a"}])
    with pytest.raises(InvalidInputError, match="expected a string"):
        make_queries([42])


def test_prompt_puts_the_context_first_then_numbered_queries():
    qs = make_queries(["How many apples?", "Who is Tom?"])
    [msg] = build_messages("Tom has 3 apples.", qs)
    assert msg["role"] == "user"
    assert msg["content"].startswith("Tom has 3 apples.\n\n")
    assert msg["content"].endswith("1. How many apples?\n2. Who is Tom?")
    assert BEGIN in msg["content"] and END in msg["content"] and "2 questions" in msg["content"]
    shared = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Doc."},
        {"role": "assistant", "content": "Read."},
    ]
    messages = build_messages(shared, qs)
    assert messages[:3] == shared and messages[3] == {"role": "user", "content": queries_block(qs)}
    with pytest.raises(InvalidInputError):
        build_messages("   ", qs)


def test_round_trip_of_the_trained_format():
    text = format_answers([(1, "7"), (2, 'He said "hi"\nthen left')])
    parsed = parse_answers(text, [1, 2])
    assert parsed.complete and parsed.answers == {1: "7", 2: 'He said "hi"\nthen left'}


@pytest.mark.parametrize(
    "text, answers, missing",
    [
        # code fence and chatter around it; a string id; a numeric answer; a trailing comma
        (
            'Sure!\n```json\n[{"id": 1, "answer": "7"}, {"id": "2", "answer": 12},]\n```\nDone.',
            {1: "7", 2: "12"},
            [],
        ),
        # markers win over another array elsewhere in the text
        ('[1, 2] <answers>[{"id": 1, "answer": "yes"}]</answers>', {1: "yes"}, [2]),
        # a raw newline inside a string
        (
            '<answers>[{"id": 1, "answer": "a\nb"}, {"id": 2, "answer": "c"}]</answers>',
            {1: "a\nb", 2: "c"},
            [],
        ),
        # cut off mid-answer: the truncated answer is dropped, not completed
        ('<answers>[{"id": 1, "answer": "7"}, {"id": 2, "answer": "1', {1: "7"}, [2]),
        # the object form {"answers": [...]}
        ('{"answers": [{"id": 2, "answer": "b"}]}', {2: "b"}, [1]),
        # unknown ids and non-objects are ignored; the asked ids stay missing
        ('[{"id": 9, "answer": "x"}, "junk", {"id": 1, "answer": ""}]', {}, [1, 2]),
        # two different answers for one id: neither is trusted
        (
            '[{"id": 1, "answer": "7"}, {"id": 1, "answer": "8"}, {"id": 2, "answer": "z"}]',
            {2: "z"},
            [1],
        ),
        # no JSON at all
        ("I think the answers are 7 and 8.", {}, [1, 2]),
        ("", {}, [1, 2]),
        # a broken array: complete pairs are salvaged, the rest is missing
        ('[{"id": 1, "answer": "7"} {"id": 2 "answer": "8"}', {1: "7"}, [2]),
    ],
)
def test_damaged_responses_are_read_or_reported_missing(text, answers, missing):
    parsed = parse_answers(text, [1, 2])
    assert parsed.answers == answers
    assert parsed.missing == missing
    assert parsed.complete == (not missing)


def test_answers_are_matched_by_id_not_position():
    text = json.dumps([{"id": 3, "answer": "c"}, {"id": 1, "answer": "a"}])
    assert parse_answers(text, [1, 3]).answers == {1: "a", 3: "c"}


# -- loop detection (stop a merged reply that will never close) ------------------------

OPEN = '<answers>[{"id": 1, "answer": "72"}, {"id": 2, "answer": "'


@pytest.mark.parametrize(
    "tail",
    [
        "In the evening, she gives her chickens another 15 cups of feed. " * 5,
        # a sum counting up: only the numbers change
        " ".join(f"He drove {n} hours, so he drove {n} + 3 = {n + 3} hours." for n in range(6)),
        # ... and the operator
        " ".join(f"He has {n} {op} 100 = {n + 1} candles." for n, op in zip(range(6), "+-+-+-")),
        "The answer is 0." + "0" * 140,  # one character running away
    ],
)
def test_a_looping_answer_is_detected(tail):
    assert repeating(OPEN + tail)


@pytest.mark.parametrize(
    "text",
    [
        OPEN + "Natalia sold 48/2 = 24 clips in May. She sold 48+24 = 72 clips. #### 72",
        # a legitimate enumeration, four similar lines
        OPEN + "".join(f"In year {y} he pays {80 + 10 * y}+10={90 + 10 * y}.\n" for y in range(4)),
        # many short identical answers: the JSON between them is not a loop
        "<answers>[" + ", ".join(f'{{"id": {i}, "answer": "yes"}}' for i in range(1, 9)) + "]",
        OPEN + ", ".join(str(n) for n in range(1, 101)),  # a list of numbers
        OPEN + "-" * 100,
        "",
    ],
)
def test_ordinary_answers_are_not_loops(text):
    assert not repeating(text)


def test_only_the_answer_being_written_counts():
    looped = '"answer": "' + "same words again and again. " * 6
    assert repeating(looped)
    assert not repeating(looped + '"}, {"id": 3, "answer": "A fresh start.')


def test_tail_check_runs_every_so_many_characters_on_the_tail():
    seen: list[str] = []
    watch = TailCheck(lambda t: seen.append(t) or t.endswith("!"), every=10, window=15)
    assert not any(watch.feed(p) for p in ["abcd", "efgh"])  # 8 characters: not checked yet
    assert seen == []
    assert not watch.feed("ijk")  # 11: checked once, on the whole text
    assert seen == ["abcdefghijk"]
    assert not watch.feed("lmnopqr")  # 7 more: not checked
    assert watch.feed("stu!")  # 11 since the last check: checked on the last 15 characters
    assert seen[-1] == "hijklmnopqrstu!" and len(seen) == 2


def test_answers_that_copy_the_instructions_shape_are_missing():
    echo = '<answers>[{"id": 1, "answer": "1"}, {"id": 2, "answer": "2"}, {"id": 3, "answer": "3"}, {"id": 4, "answer": "4"}]</answers>'
    parsed = parse_answers(echo, [1, 2, 3, 4])
    assert parsed.missing == [1, 2, 3, 4] and not parsed.answers
    assert any("repeats its id" in p for p in parsed.problems)
    example = '<answers>[{"id": 1, "answer": "..."}, {"id": 2, "answer": "Paris"}]</answers>'
    parsed = parse_answers(example, [1, 2])
    assert parsed.answers == {2: "Paris"} and parsed.missing == [1]
    same = '<answers>[{"id": 1, "answer": "42 apples"}, {"id": 2, "answer": "42 apples"}, {"id": 3, "answer": "42 apples"}]</answers>'
    questions = ["How many apples?", "What colour is the sky?", "Who wrote it?"]
    assert parse_answers(same, [1, 2, 3], questions).missing == [1, 2, 3]
    assert parse_answers(same, [1, 2, 3]).missing == []  # without the queries it cannot tell


def test_real_answers_that_look_alike_are_kept():
    # one answer equal to its id is a real answer (question 3's answer may be 3)
    one = '<answers>[{"id": 1, "answer": "7"}, {"id": 2, "answer": "11"}, {"id": 3, "answer": "3"}]</answers>'
    assert parse_answers(one, [1, 2, 3]).answers == {1: "7", 2: "11", 3: "3"}
    # yes/no questions share answers honestly
    yes = '<answers>[{"id": 1, "answer": "Yes"}, {"id": 2, "answer": "Yes"}, {"id": 3, "answer": "Yes"}]</answers>'
    assert parse_answers(yes, [1, 2, 3], ["Is it red?", "Is it big?", "Is it old?"]).complete
    # the same question asked twice may get the same answer
    twice = '<answers>[{"id": 1, "answer": "Paris"}, {"id": 2, "answer": "Paris"}, {"id": 3, "answer": "Paris"}]</answers>'
    assert parse_answers(twice, [1, 2, 3], ["Capital?", "Capital?", "capital?"]).complete
