"""The ``tokenskip`` command. Subcommands only parse arguments and wire library calls.

Usage errors and bad input exit with code 2 and one line on stderr; nothing prints a
traceback unless ``TOKENSKIP_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tokenskip.errors import InvalidInputError, TokenskipError

EXIT_USAGE = 2
DEFAULT_MAX_CHARS = 2_000_000


def read_text(source: str, max_chars: int) -> str:
    """UTF-8 text from a file path or ``-`` (stdin), refusing binary and oversized input."""
    if source == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidInputError(f"cannot read {source}: {exc.strerror}") from None
        where = source
    if b"\x00" in data:
        raise InvalidInputError(f"{where} looks binary (it contains NUL bytes); pass UTF-8 text")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{where} is not UTF-8 text (invalid byte at offset {exc.start}); convert it first, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from None
    if len(text) > max_chars:
        raise InvalidInputError(
            f"{where} has {len(text):,} characters, over the limit of {max_chars:,}; split it or "
            "raise --max-chars"
        )
    return text


def _ratio(value: str) -> float:
    from tokenskip.compress import check_ratio

    try:
        return check_ratio(value)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int, float) parsed and required to be > 0."""
    noun = "integer" if kind is int else "number"

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {value!r}")
        return number

    return parse


_positive_int = positive(int)


def add_compress_parser(subparsers: Any) -> None:
    from tokenskip.models import DEFAULT_MODEL
    from tokenskip.scorers import SCORER_NAMES

    p = subparsers.add_parser(
        "compress",
        help="compress text to a keep ratio",
        description="Compress text to about RATIO of its tokens (target model's tokenizer).",
    )
    p.add_argument("file", nargs="?", default="-", help="UTF-8 text file, or - for stdin (default)")
    p.add_argument(
        "--ratio", type=_ratio, required=True, help="keep ratio γ in (0, 1]: kept/original tokens"
    )
    p.add_argument(
        "--scorer",
        choices=SCORER_NAMES,
        default="heuristic",
        help="token-importance scorer (default: heuristic)",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"target model: tokens are counted in its tokenizer; the self-info scorer uses it (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--scorer-model",
        default=None,
        help="model to score with instead of --model (required for --scorer classifier)",
    )
    p.add_argument(
        "--question",
        default=None,
        metavar="TEXT",
        help="with --scorer self-info: score conditioned on this question (LongLLMLingua's "
        "contrastive form), so what the question is about is kept first",
    )
    p.add_argument(
        "--cot",
        action="store_true",
        help="treat the input as a reasoning answer: compress only the reasoning, keep the final answer",
    )
    p.add_argument(
        "--no-force",
        action="store_true",
        help="turn off force-keep of numbers, operators and the final-answer line",
    )
    p.add_argument(
        "--force-token",
        action="append",
        default=[],
        metavar="WORD",
        help="also keep every occurrence of WORD (repeatable)",
    )
    p.add_argument(
        "--no-guards",
        action="store_true",
        help="turn off the meaning guards (negations, limits, conditions, obligations, numbers "
        "with units, dates, quotes, identifiers, names are otherwise never dropped); for "
        "experiments that measure what they cost",
    )
    p.add_argument(
        "--guards",
        default=None,
        metavar="RULES",
        help="comma-separated guard rules to run instead of the default set (see "
        "tokenskip.guards.RULES), e.g. negation,condition",
    )
    p.add_argument(
        "--no-lossless",
        action="store_true",
        help="skip the lossless transforms (whitespace, JSON minified or as a table, repeated "
        "lines counted) that otherwise run before any word is dropped",
    )
    p.add_argument(
        "--json", action="store_true", help="print a JSON object with text, token counts and ratios"
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="allow fetching models from the Hugging Face hub",
    )
    p.add_argument(
        "--max-chars",
        type=_positive_int,
        default=DEFAULT_MAX_CHARS,
        help=f"refuse inputs longer than this (default: {DEFAULT_MAX_CHARS:,})",
    )
    p.set_defaults(run=run_compress)


def _guards(args: argparse.Namespace) -> Any:
    """The guard set the flags ask for, or None for the default of the mode."""
    from tokenskip.guards import NO_GUARDS, Guards

    if args.no_guards and args.guards:
        raise InvalidInputError("--no-guards and --guards exclude each other; give one")
    if args.no_guards:
        return NO_GUARDS
    if args.guards:
        names = [n.strip() for n in args.guards.split(",") if n.strip()]
        try:
            return Guards.only(names)
        except ValueError as exc:
            raise InvalidInputError(f"--guards: {exc}") from None
    return None


def run_compress(args: argparse.Namespace) -> int:
    from tokenskip.compress import compress, compress_cot
    from tokenskip.force import MATH, NONE, ForceKeep
    from tokenskip.guards import COT_GUARDS, GUARDS
    from tokenskip.models import load_model, load_tokenizer
    from tokenskip.scorers import build_scorer
    from tokenskip.tokens import TextTokenizer

    if args.scorer == "classifier" and not args.scorer_model:
        raise InvalidInputError(
            "--scorer classifier needs --scorer-model (a token-classification model)"
        )
    text = read_text(args.file, args.max_chars)
    force = NONE if args.no_force else MATH
    if args.force_token:
        force = ForceKeep(
            force.numbers, force.operators, tuple(args.force_token), force.answer_line
        )
    lm = None
    if args.scorer == "self-info" and not args.scorer_model:
        loaded = load_model(args.model, allow_download=args.allow_download)
        lm, hf_tokenizer = loaded.model, loaded.tokenizer
    else:
        hf_tokenizer = load_tokenizer(args.model, allow_download=args.allow_download)
    tokenizer = TextTokenizer(hf_tokenizer, name=args.model)
    scorer = build_scorer(
        args.scorer,
        tokenizer=tokenizer,
        lm=lm,
        scorer_model=args.scorer_model,
        allow_download=args.allow_download,
    )
    if args.question is not None:
        if args.scorer != "self-info":
            raise InvalidInputError("--question needs --scorer self-info")
        if not args.question.strip():
            raise InvalidInputError("--question is empty")
        scorer = scorer.conditioned(args.question)
    guards = _guards(args)
    if args.cot:
        result = compress_cot(
            text,
            args.ratio,
            tokenizer=tokenizer,
            scorer=scorer,
            force=force,
            guards=guards or COT_GUARDS,
        )
    else:
        result = compress(
            text,
            args.ratio,
            tokenizer=tokenizer,
            scorer=scorer,
            force=force,
            guards=guards or GUARDS,
            lossless=not args.no_lossless,
        )
    if args.json:
        payload = {**result.to_dict(), "model": args.model, "scorer": args.scorer}
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(result.text)
        if result.text and not result.text.endswith("\n"):
            sys.stdout.write("\n")
    return 0


def add_serve_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible compressing proxy",
        description="Serve /v1/chat/completions in front of local models and any litellm provider. "
        "Without --config, serves the embedded model (smollm2) with prompt compression on.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML config in LiteLLM's model_list form (env: TOKENSKIP_CONFIG)",
    )
    p.add_argument(
        "--host", default=None, help="interface to bind (default: 127.0.0.1; env: TOKENSKIP_HOST)"
    )
    p.add_argument(
        "--port", type=_positive_int, default=None, help="port (default: 8000; env: TOKENSKIP_PORT)"
    )
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="uvicorn worker processes (default: 1)"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require this client key (repeatable; env: TOKENSKIP_API_KEYS, comma-separated)",
    )
    p.add_argument(
        "--ledger-url",
        default=None,
        help="SQLAlchemy URL of the savings ledger (default: SQLite in the cache dir)",
    )
    p.add_argument(
        "--no-compression",
        action="store_true",
        help="turn every prompt and output transform off: requests pass through untouched "
        "and are still accounted (env: TOKENSKIP_COMPRESSION=false)",
    )
    p.add_argument(
        "--keep-alive",
        type=positive(float),
        default=None,
        metavar="SECONDS",
        help="idle keep-alive timeout (default: 75; env: TOKENSKIP_KEEP_ALIVE_S)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level",
    )
    p.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    # Settings travel through the environment so that every uvicorn worker sees the same.
    if args.config is not None:
        if not os.path.isfile(args.config):
            raise InvalidInputError(f"config file {args.config} does not exist")
        os.environ["TOKENSKIP_CONFIG"] = os.path.abspath(args.config)
    if args.host is not None:
        os.environ["TOKENSKIP_HOST"] = args.host
    if args.port is not None:
        os.environ["TOKENSKIP_PORT"] = str(args.port)
    if args.api_key:
        os.environ["TOKENSKIP_API_KEYS"] = ",".join(args.api_key)
    if args.ledger_url is not None:
        os.environ["TOKENSKIP_LEDGER_URL"] = args.ledger_url
    if args.no_compression:
        os.environ["TOKENSKIP_COMPRESSION"] = "false"
    if args.keep_alive is not None:
        os.environ["TOKENSKIP_KEEP_ALIVE_S"] = str(args.keep_alive)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    import uvicorn

    from proxy.config import Settings, load_config

    settings = Settings()
    try:
        load_config(settings)  # fail here, with one line, rather than inside a worker
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    _check_port(settings.host, settings.port)
    uvicorn.run(
        "proxy.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_keep_alive=settings.keep_alive_s,
    )
    return 0


def _check_port(host: str, port: int) -> None:
    """One clear line for a busy port, before any model loads."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidInputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another port with "
                f'--port N (make serve ARGS="--port N")'
            ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenskip",
        description="Make LLM reasoning cheaper without losing answers.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_compress_parser(subparsers)
    add_serve_parser(subparsers)
    from evaluation.cli import add_eval_parser

    add_eval_parser(subparsers)
    from trainers.cli import add_train_parser

    add_train_parser(subparsers)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.run(args)
    except TokenskipError as exc:
        print(f"tokenskip {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tokenskip: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (e.g. `| head`); point stdout at devnull so the exit flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("TOKENSKIP_DEBUG"):
            raise
        print(
            f"tokenskip {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set TOKENSKIP_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
