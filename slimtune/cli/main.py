"""Entry point: builds the argument parser from one module per verb and maps errors to exit codes.

Every module imported here must stay light (no torch, transformers, datasets): `slimtune --help` and
`slimtune validate` never load them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from slimtune import __version__
from slimtune.errors import EXIT_INTERNAL, EXIT_USER, SlimtuneError
from slimtune.redact import RedactingFilter, RedactingStream, redact_text

# verb -> module under slimtune.cli exposing `register(subparsers)`; each sets `func` on its parser
VERBS = [
    "run",
    "finetune",
    "validate",
    "config",
    "passes",
    "data",
    "models",
    "cache",
    "generate",
    "evaluate",
    "optimize",
    "report",
    "jobs",
    "runs",
    "serve",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 on bad arguments, which is our user-error code too
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER, f"slimtune: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slimtune",
        description="Fine-tune a small language model, merge the adapter, export int4 ONNX, evaluate: one config.",
    )
    parser.add_argument("--version", action="version", version=f"slimtune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show more detail (e.g. config key mappings)"
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for verb in VERBS:
        importlib.import_module(f"slimtune.cli.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER if args.verb else 0
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # secrets from the config never reach a log line
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        return _call(args)
    finally:
        sys.stdout, sys.stderr = streams


def _call(args) -> int:
    try:
        return int(args.func(args) or 0)
    except SlimtuneError as err:
        if args.debug:
            raise
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in slimtune, or an environment problem we did not name
        if args.debug:
            raise
        from slimtune.engine.resources import named_error

        named = named_error(err, what=f"slimtune {args.verb}", memory_advice="Free memory.", watched=[])
        if named is not None:  # out of memory or disk outside a pass (evaluation, reports...)
            print(f"error: {redact_text(str(named))}", file=sys.stderr)
            return named.exit_code
        import traceback

        print(redact_text(traceback.format_exc()), end="", file=sys.stderr)
        print(
            redact_text(
                f"internal error: {type(err).__name__}: {err}\n(please report this; --debug shows more)"
            ),
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
