"""`slimtune config upgrade FILE`: the same config in the current form."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("config", help="config file tools")
    verbs = p.add_subparsers(dest="config_verb", metavar="VERB")
    up = verbs.add_parser("upgrade", help="print the config in the current schema")
    up.add_argument("config")
    up.add_argument(
        "--format", choices=["json", "yaml"], default=None, help="default: the input file's format"
    )
    up.set_defaults(func=_upgrade)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _upgrade(args) -> int:
    from slimtune.config.load import load_config

    loaded = load_config(args.config)  # validates; the printed form keeps paths as written
    fmt = args.format or ("yaml" if str(args.config).endswith((".yaml", ".yml")) else "json")
    if fmt == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(loaded.migrated, sort_keys=False, allow_unicode=True))
    else:
        print(json.dumps(loaded.migrated, indent=2, ensure_ascii=False))
    for note in loaded.notes:
        print(f"# {note}", file=sys.stderr)
    return 0
