import pytest

from tokenskip.cot import answer_start, split_cot


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She sold 24.\nThen 48.\n#### 72", "#### 72"),
        (
            "Add them: 3 + 4 = 7.\nSo the total is \\boxed{\\frac{7}{1}}.",
            "So the total is \\boxed{\\frac{7}{1}}.",
        ),
        ("We get 18 dollars. The answer is $18.00.", "The answer is $18.00."),
        ("Steps...\nFinal answer: 42", "Final answer: 42"),
        ("the answer is 3, wait. Recount: 4.\nThe answer is 4", "The answer is 4"),
    ],
)
def test_split_finds_the_last_final_answer(text, answer):
    parts = split_cot(text)
    assert parts.answer == answer
    assert parts.reasoning + parts.separator + parts.answer == text
    assert not parts.reasoning.endswith((" ", "\n"))


def test_text_without_answer_is_all_reasoning():
    parts = split_cot("just thinking out loud")
    assert parts.answer == "" and parts.reasoning == "just thinking out loud"
    assert answer_start("no marker here") is None


def test_hashes_inside_a_line_are_not_an_answer():
    assert answer_start("C# uses #### rarely") is None
