"""`slimtune validate FILE`: every problem at once (exit 2), or a summary of the plan (exit 0)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("validate", help="check a config and show what it will do")
    p.add_argument("config", help="config file (.json or .yaml)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.config.load import load_config
    from slimtune.config.summary import plan_summary
    from slimtune.engine.input_checks import check_plan

    loaded = load_config(args.config)
    check_plan(loaded)
    from slimtune.engine.evaluation import describe_evaluation

    evaluation = describe_evaluation(loaded)  # an evaluator's metric the data cannot give fails here
    print(plan_summary(loaded, verbose=args.verbose))
    print(evaluation)
    print("ok: config is valid")
    return 0
