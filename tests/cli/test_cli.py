"""Tests for tokenskip/cli.py: ``tokenskip compress`` in-process, plus the installed console
script in a subprocess. Bad input must exit 2 with one clear line and no traceback."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokenskip.cli import build_parser, main

ERROR_PREFIX = "tokenskip compress: error:"
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
FILLER_TEXT = (
    "So basically the train leaves at noon and basically arrives at three in the afternoon, "
    "so basically the whole trip basically takes three hours."
)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``tokenskip ARGS`` in-process with ``stdin`` bytes; returns (exit code, stdout, stderr)."""

    def run(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help and usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def solution(solutions) -> str:
    """The longest sample GSM8K solution: reasoning lines and a ``#### N`` answer."""
    return max((s for s in solutions if "####" in s), key=len)


@pytest.fixture
def solution_file(tmp_path, solution) -> Path:
    path = tmp_path / "solution.txt"
    path.write_text(solution, encoding="utf-8")
    return path


def script() -> str:
    """The installed console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "tokenskip"
    found = str(beside) if beside.is_file() else shutil.which("tokenskip")
    assert found, "the tokenskip console script is not installed (pip install -e .)"
    return found


def script_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# --- compress -------------------------------------------------------------------------------


def assert_consistent(payload: dict, original: str, ratio: float, tokenizer) -> None:
    """Counts are in the target tokenizer and ``achieved_ratio`` is kept / original tokens."""
    assert {"text", "original_tokens", "kept_tokens", "ratio", "achieved_ratio"} <= payload.keys()
    assert payload["ratio"] == ratio
    assert payload["original_tokens"] == tokenizer.count(original)
    assert payload["kept_tokens"] == tokenizer.count(payload["text"])
    assert payload["achieved_ratio"] == payload["kept_tokens"] / payload["original_tokens"]
    assert 0 < payload["kept_tokens"] < payload["original_tokens"]
    assert len(payload["text"]) < len(original)


def test_json_output_reports_counts_and_ratios(cli, tokenizer, solution, solution_file):
    code, out, err = cli("compress", "--ratio", "0.6", "--no-guards", "--json", str(solution_file))

    assert code == 0, err
    payload = json.loads(out)
    assert_consistent(payload, solution, 0.6, tokenizer)
    # the math force-keep holds numbers: the achieved ratio is max(γ, forced share)
    floor = max(0.6, payload["forced_ratio"])
    assert payload["achieved_ratio"] == pytest.approx(floor, abs=0.05)
    assert payload["scorer"] == "heuristic"
    assert payload["model"] == "smollm2"


def test_self_info_scorer_on_a_short_text(cli, tokenizer):
    text = "The cat sat on the mat because the mat was warm and soft."
    code, out, err = cli(
        "compress", "--ratio", "0.5", "--scorer", "self-info", "--json", stdin=text.encode()
    )

    assert code == 0, err
    payload = json.loads(out)
    assert_consistent(payload, text, 0.5, tokenizer)
    assert payload["scorer"] == "self-info"
    assert set(re.findall(r"\w+", payload["text"])) <= set(re.findall(r"\w+", text))


@pytest.mark.parametrize("ratio", ["0.3", "0.6"])
def test_cot_keeps_the_answer_line_and_every_number(cli, solution, solution_file, ratio):
    code, out, err = cli("compress", "--ratio", ratio, "--cot", "--json", str(solution_file))

    assert code == 0, err
    payload = json.loads(out)
    answer_line = solution.rstrip().splitlines()[-1]
    assert answer_line.startswith("####")
    assert payload["text"].rstrip().endswith(answer_line)
    assert payload["answer"].strip() == answer_line
    assert NUMBER.findall(payload["text"]) == NUMBER.findall(solution)
    assert payload["kept_tokens"] < payload["original_tokens"]


@pytest.mark.parametrize("extra", [[], ["--cot"]])
def test_plain_output_is_the_compressed_text(cli, solution_file, extra):
    args = ["compress", "--ratio", "0.5", *extra, str(solution_file)]
    code, out, err = cli(*args)
    json_code, json_out, _ = cli(*args, "--json")

    assert (code, json_code) == (0, 0), err
    text = json.loads(json_out)["text"]
    assert text.strip()
    assert out == (text if text.endswith("\n") else text + "\n")


def test_reads_stdin_by_default(cli, solution, solution_file):
    from_stdin = cli("compress", "--ratio", "0.5", "--json", stdin=solution.encode())
    from_dash = cli("compress", "--ratio", "0.5", "--json", "-", stdin=solution.encode())
    from_file = cli("compress", "--ratio", "0.5", "--json", str(solution_file))

    assert from_stdin[0] == 0, from_stdin[2]
    assert from_stdin[1] == from_dash[1] == from_file[1]


@pytest.mark.parametrize("no_force", [[], ["--no-force"]])
@pytest.mark.parametrize(
    ("force", "num_expected"), [([], 0), (["--force-token", "basically"], 4)], ids=["off", "on"]
)
def test_force_token_keeps_every_occurrence_of_a_filler(cli, force, num_expected, no_force):
    assert FILLER_TEXT.count("basically") == 4
    code, out, err = cli(
        "compress",
        "--ratio",
        "0.3",
        "--no-guards",
        *force,
        *no_force,
        "--json",
        stdin=FILLER_TEXT.encode(),
    )

    assert code == 0, err
    text = json.loads(out)["text"]
    assert text.split().count("basically") == num_expected


def test_empty_input_keeps_nothing_at_ratio_one(cli):
    code, out, err = cli("compress", "--ratio", "0.5", "--json", stdin=b"")

    assert code == 0, err
    payload = json.loads(out)
    assert payload["text"] == ""
    assert payload["original_tokens"] == payload["kept_tokens"] == 0
    assert payload["achieved_ratio"] == 1.0


# --- bad input ------------------------------------------------------------------------------

OK = ["--ratio", "0.5"]
BAD_INPUTS = [
    # (id, arguments after "compress", stdin, part of the message, argparse usage error?)
    ("ratio-zero", ["--ratio", "0"], None, "(0, 1]", True),
    ("ratio-negative", ["--ratio", "-0.1"], None, "(0, 1]", True),
    ("ratio-above-one", ["--ratio", "1.5"], None, "(0, 1]", True),
    ("ratio-nan", ["--ratio", "nan"], None, "(0, 1]", True),
    ("ratio-inf", ["--ratio", "inf"], None, "(0, 1]", True),
    ("ratio-word", ["--ratio", "abc"], None, "'abc'", True),
    ("missing-ratio", [], None, "--ratio", True),
    ("unknown-scorer", [*OK, "--scorer", "bogus"], None, "invalid choice: 'bogus'", True),
    ("max-chars-zero", [*OK, "--max-chars", "0"], None, "positive integer", True),
    ("missing-file", [*OK, "/no/such/input.txt"], None, "cannot read /no/such/input.txt", False),
    ("binary", OK, b"ab\x00cd", "binary", False),
    ("not-utf8", OK, "café".encode("latin-1"), "not UTF-8", False),
    ("over-max-chars", [*OK, "--max-chars", "10"], b"x" * 11, "--max-chars", False),
    ("unknown-model", [*OK, "--model", "no-such-model-xyz"], None, "--allow-download", False),
    ("missing-gguf", [*OK, "--model", "./nope.gguf"], None, "'./nope.gguf' does not exist", False),
    ("missing-dir", [*OK, "--model", "/no/such/dir"], None, "'/no/such/dir' does not exist", False),
    ("classifier-alone", [*OK, "--scorer", "classifier"], None, "--scorer-model", False),
]


@pytest.mark.parametrize(
    ("args", "stdin", "message", "is_usage"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_exits_2_with_one_clear_line(
    cli, network_attempts, args, stdin, message, is_usage
):
    code, out, err = cli(
        "compress", *args, stdin=b"Some text to compress." if stdin is None else stdin
    )

    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(ERROR_PREFIX)
    assert message in lines[-1]
    if is_usage:
        assert lines[0].startswith("usage: tokenskip compress")
    else:
        assert len(lines) == 1
    assert network_attempts == []


def test_model_directory_without_a_model_exits_2(cli, tmp_path):
    code, _, err = cli("compress", "--ratio", "0.5", "--model", str(tmp_path), stdin=b"Some text.")

    assert code == 2, err
    assert err.startswith(ERROR_PREFIX)


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["compress", "--help"]])
def test_help_exits_0(cli, args):
    code, out, err = cli(*args)

    assert code == 0
    assert out.startswith("usage: tokenskip")
    assert err == ""


def test_every_option_has_help_text():
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if a.dest == "command"]
    compress = subparsers.choices["compress"]
    options = [a for a in compress._actions if a.option_strings]

    assert {"--ratio", "--scorer", "--model", "--json", "--max-chars"} <= {
        s for a in options for s in a.option_strings
    }
    undocumented = [a.option_strings for a in options if not (a.help or "").strip()]
    assert undocumented == []
    assert all((a.help or "").strip() for a in compress._actions if not a.option_strings)


# --- the installed console script -----------------------------------------------------------


def test_console_script_compresses_stdin(solution):
    proc = subprocess.run(
        [script(), "compress", "--ratio", "0.5", "--cot", "--json"],
        input=solution.encode(),
        capture_output=True,
        env=script_env(),
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr.decode()
    payload = json.loads(proc.stdout)
    assert payload["kept_tokens"] < payload["original_tokens"]
    assert payload["text"].rstrip().endswith(solution.rstrip().splitlines()[-1])


def test_console_script_bad_input_exits_2_without_traceback():
    proc = subprocess.run(
        [script(), "compress", "--ratio", "0.5"],
        input=b"\xff\xfe binary?\x00",
        capture_output=True,
        env=script_env(),
        timeout=120,
    )

    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"{ERROR_PREFIX} standard input looks binary (it contains NUL bytes); pass UTF-8 text"
    ]


def test_console_script_is_quiet_when_the_reader_goes_away(solution):
    proc = subprocess.Popen(
        [script(), "compress", "--ratio", "0.5", "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=script_env(),
    )
    proc.stdout.close()  # the reader is gone long before the script has imported torch
    proc.stdin.write(solution.encode())
    proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)

    assert "error" not in err.lower(), err


POLICY = (
    "Our agents help customers with their accounts every day and try to keep each call short. "
    "Do not ask for the customer's PIN under any circumstances. Refunds are sent by post, "
    "not by email, and they usually arrive within a week or so of the request being made."
)


def test_meaning_guards_are_on_by_default_and_can_be_turned_off(cli):
    code, out, err = cli("compress", "--ratio", "0.5", "--json", stdin=POLICY.encode())
    assert code == 0, err
    guarded = json.loads(out)
    assert "Do not ask for the customer's PIN" in guarded["text"]
    assert "not by email" in guarded["text"]
    assert 0.15 < guarded["forced_ratio"] < 0.5
    # the guards hold the constraints' cores, not their clauses: γ is the ratio reached
    assert guarded["achieved_ratio"] == pytest.approx(0.5, abs=0.05)
    code, out, err = cli(
        "compress", "--ratio", "0.5", "--no-guards", "--json", stdin=POLICY.encode()
    )
    assert code == 0, err
    bare = json.loads(out)
    assert bare["forced_ratio"] < guarded["forced_ratio"]
    assert "Do not ask for the customer's PIN" not in bare["text"]
    assert bare["achieved_ratio"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--guards", "negation,nonsense"], "unknown guard rules"),
        (["--guards", "negation", "--no-guards"], "exclude each other"),
    ],
)
def test_bad_guard_flags_exit_2(cli, flags, message):
    code, out, err = cli("compress", "--ratio", "0.5", *flags, stdin=POLICY.encode())
    assert code == 2 and message in err and "Traceback" not in err


def test_lossless_transforms_run_first_and_can_be_skipped(cli):
    rows = [{"id": i, "name": f"item {i}", "currency": "USD", "in_stock": True} for i in range(30)]
    data = json.dumps(rows, indent=2).encode()
    code, out, err = cli("compress", "--ratio", "0.9", "--json", stdin=data)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["transforms"] == ["json"]
    assert payload["achieved_ratio"] < 0.5  # the table alone beats γ, nothing else dropped
    from tokenskip.lossless import expand_tables

    assert expand_tables(payload["text"]) == rows
    code, out, err = cli("compress", "--ratio", "0.9", "--no-lossless", "--json", stdin=data)
    assert json.loads(out)["transforms"] == []


def test_a_busy_port_is_one_line_naming_the_flag(cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = cli("serve", "--port", str(port))
    assert code == 2
    assert err.count("\n") == 1 and "--port N" in err and str(port) in err


def test_question_must_not_be_empty_nor_used_with_cot(cli):
    code, _, err = cli("compress", "--ratio", "0.5", "--question", " ", stdin=POLICY.encode())
    assert code == 2 and "--question is empty" in err
    code, _, err = cli(
        "compress", "--ratio", "0.5", "--cot", "--question", "Why?", stdin=POLICY.encode()
    )
    assert code == 2 and "--cot" in err


RETRIEVAL = "\n".join(
    f'<document index="{i}"><source>{title}</source>\n{body}</document>'
    for i, (title, body) in enumerate(
        [
            ("Parking", "The staff car park opens at six and closes at ten every night."),
            ("Refunds", "Refunds are sent by post within a week; damaged goods within 48 hours."),
            ("Canteen", "The canteen serves soup and sandwiches at lunch, and fish on Fridays."),
        ],
        start=1,
    )
)


def test_question_ranks_the_documents_with_any_scorer(cli):
    question = "How soon are refunds for damaged goods sent?"
    code, out, err = cli(
        "compress", "--ratio", "0.4", "--question", question, "--json", stdin=RETRIEVAL.encode()
    )
    assert code == 0, err
    result = json.loads(out)
    assert "48 hours" in result["text"] and "Refunds" in result["text"]
    assert "fish on Fridays" not in result["text"] and "car park" not in result["text"]
    relevance = result["relevance"]
    assert relevance["mode"] == "ranked" and relevance["num_dropped"] == 2
    assert [d["ratio"] is not None for d in relevance["documents"]] == [False, True, False]


def test_question_aware_compression_runs(cli):
    code, out, err = cli(
        "compress",
        "--ratio",
        "0.7",
        "--scorer",
        "self-info",
        "--question",
        "How are refunds sent?",
        "--json",
        stdin=POLICY.encode(),
    )
    assert code == 0, err
    assert "not by email" in json.loads(out)["text"]
