"""`slimtune validate FILE`: what `slimtune run` would refuse, refused the same way (exit 2), or a summary of the
plan (exit 0). It makes every check run makes before loading weights (engine.input_checks.check_before_run):
the config, the data files through their templates, the model's headers, devices, the memory estimate. It also
warns about settings known to keep a fine-tune from learning (`--strict`: they fail validation; `--quiet`:
hidden). `--config-only` checks the config alone (for a config written for another machine)."""

from __future__ import annotations

import sys

from slimtune.cli.run import add_overrides, load_with_overrides


def register(sub) -> None:
    p = sub.add_parser("validate", help="check a config and show what it will do (what `run` would refuse)")
    p.add_argument("config", help="config file (.json or .yaml)")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2)")
    p.add_argument("--quiet", action="store_true", help="do not show warnings")
    add_overrides(p)  # as `slimtune run` takes them
    p.add_argument(
        "--config-only",
        action="store_true",
        help="check the config alone, not its files, model, devices or memory on this machine",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:

    from slimtune.config.summary import plan_summary
    from slimtune.engine.advice import config_advice, fix_snippet
    from slimtune.engine.input_checks import check_before_run, check_plan
    from slimtune.errors import EXIT_USER
    from slimtune.systems.azureml import remote_system

    loaded = load_with_overrides(args)
    remote = remote_system(loaded.config)
    if args.config_only:
        check_plan(loaded)
    elif remote:  # the run goes to an Azure ML job: the job is checked here, the machine there
        from slimtune.systems.azureml.remote import check_job

        check_job(loaded, *remote)
    else:
        check_before_run(loaded)
    from slimtune.engine.evaluation import describe_evaluation

    evaluation = describe_evaluation(loaded)  # an evaluator's metric the data cannot give fails here
    print(plan_summary(loaded, verbose=args.verbose, warnings=not args.quiet))
    print(evaluation)
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
    ok = "ok: config is valid" if args.config_only else "ok: config is valid, and `slimtune run` would start"
    print(ok + (f" ({count} warning(s))" if count else ""))
    return 0
