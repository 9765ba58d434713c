"""``tokenskip compress``: text in, compressed text (or JSON with the counts) out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tokenskip.cli.args import DEFAULT_MAX_CHARS, positive_int, ratio_type, read_text
from tokenskip.errors import InvalidInputError


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
        "--ratio",
        type=ratio_type,
        required=True,
        help="keep ratio γ in (0, 1]: kept/original tokens",
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
        help="the request the text is context for: its documents (<document> markup, else "
        "paragraphs) are ranked against it, the relevant kept, the rest dropped with a marker "
        "(coarse to fine); with --scorer self-info the words are also scored conditioned on it "
        "(LongLLMLingua's contrastive form)",
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
        type=positive_int,
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
    from tokenskip.compress import compress, compress_context, compress_cot
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
        if not args.question.strip():
            raise InvalidInputError("--question is empty")
        if args.cot:
            raise InvalidInputError(
                "--question ranks a text's documents; it does not apply to --cot"
            )
        if args.scorer == "self-info":
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
    elif args.question is not None:
        result = compress_context(
            text,
            args.ratio,
            args.question,
            tokenizer=tokenizer,
            scorer=scorer,
            force=force,
            guards=guards or GUARDS,
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
