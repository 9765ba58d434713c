"""The ``tokenskip`` command: the top of the house, composing every subcommand.

Subcommands only parse arguments and wire library calls (``compress``, ``serve`` here;
``eval`` and ``train`` in their modules).

Usage errors and bad input exit with code 2 and one line on stderr; nothing prints a
traceback unless ``TOKENSKIP_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tokenskip.cli.args import EXIT_USAGE, positive
from tokenskip.cli.compress import add_compress_parser
from tokenskip.cli.serve import add_serve_parser
from tokenskip.errors import TokenskipError

__all__ = ["EXIT_USAGE", "build_parser", "main", "positive"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenskip",
        description="Make LLM reasoning cheaper without losing answers.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_compress_parser(subparsers)
    add_serve_parser(subparsers)
    from tokenskip.cli.eval import add_eval_parser

    add_eval_parser(subparsers)
    from tokenskip.cli.train import add_train_parser

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
