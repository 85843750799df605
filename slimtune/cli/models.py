"""`slimtune models path|list|prepare`: the local model store (GGUF files converted once)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="prepared models")
    verbs = p.add_subparsers(dest="models_verb", metavar="VERB")
    path = verbs.add_parser("path", help="print the folder of a ready Hugging Face model (prepares it first)")
    path.add_argument("model", help="a known model name (e.g. smollm2-135m-instruct) or a .gguf file")
    path.set_defaults(func=_path)
    prep = verbs.add_parser("prepare", help="convert a known model or .gguf file to a Hugging Face folder")
    prep.add_argument("model")
    prep.set_defaults(func=_prepare)
    ls = verbs.add_parser("list", help="known and prepared models")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _path(args) -> int:
    from slimtune.models.store import prepared_path

    print(prepared_path(args.model))
    return 0


def _prepare(args) -> int:
    from slimtune.models.store import prepared_path

    path = prepared_path(args.model, announce=True)
    print(f"ready: {path}")
    return 0


def _list(args) -> int:
    from slimtune.models.store import list_models

    return list_models(as_json=args.json)
