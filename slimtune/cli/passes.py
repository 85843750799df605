"""`slimtune passes`: the registered passes with their parameters and defaults, and the package that registered
each one that slimtune does not ship (a plugin of the `slimtune.passes` entry-point group)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("passes", help="list passes and their parameters")
    p.add_argument("name", nargs="?", help="show one pass")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pydantic_core import PydanticUndefined

    from slimtune.errors import UserError
    from slimtune.passes.registry import all_passes

    passes = all_passes()
    if args.name and args.name not in passes:
        raise UserError(f"unknown pass {args.name!r}; known: {', '.join(passes)}")
    for name, spec in passes.items():
        if args.name and name != args.name:
            continue
        print(f"{name} (v{spec.version}, from {spec.origin}): {spec.summary}")
        for field_name, info in spec.params.model_fields.items():
            default = (
                "required"
                if info.default is PydanticUndefined and info.default_factory is None
                else (f"default {info.get_default(call_default_factory=True)!r}")
            )
            old = [o for o, n in spec.params.renamed.items() if n == field_name]
            alias = f" (old name: {', '.join(old)})" if old else ""
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            searched = (
                f" SEARCHABLE_VALUES: {extra['search_defaults']}." if extra.get("search_defaults") else ""
            )
            text = (info.description or "").rstrip(".")
            print(f"  {field_name}{alias}: {default}. {text}{'.' if text else ''}{searched}".rstrip())
        print()
    return 0
