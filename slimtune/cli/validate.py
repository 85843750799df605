"""`slimtune validate FILE`: every problem at once (exit 2), or a summary of the plan (exit 0), with warnings
about settings known to keep a fine-tune from learning (`--strict`: they fail validation; `--quiet`: hidden)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("validate", help="check a config and show what it will do")
    p.add_argument("config", help="config file (.json or .yaml)")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    p.add_argument("--quiet", action="store_true", help="do not show warnings")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.config.load import load_config
    from slimtune.config.summary import plan_summary
    from slimtune.engine.advice import config_advice, fix_snippet
    from slimtune.engine.input_checks import check_plan
    from slimtune.errors import EXIT_USER

    loaded = load_config(args.config)
    check_plan(loaded)
    print(plan_summary(loaded, verbose=args.verbose, warnings=not args.quiet))
    advice = config_advice(loaded)
    if advice and not args.quiet:
        out = sys.stderr if args.strict else sys.stdout
        for item in advice:
            print(f"warning: {item.text}", file=out)
        print("What learns such a task (merge into the config):", file=out)
        print("\n".join(f"  {line}" for line in fix_snippet(loaded).splitlines()), file=out)
    count = len(advice) + len(loaded.warnings)
    if count and args.strict:
        print(f"error: {count} warning(s) and --strict: exit code {EXIT_USER}", file=sys.stderr)
        return EXIT_USER
    print("ok: config is valid" + (f" ({count} warning(s))" if count else ""))
    return 0
