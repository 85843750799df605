"""`slimtune cache ls|clean|verify`: pass outputs kept by content key."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("cache", help="inspect or clean the pass cache")
    p.add_argument("--cache-dir", default=".slimtune-cache", help="cache folder (default .slimtune-cache)")
    verbs = p.add_subparsers(dest="cache_verb", metavar="VERB")
    ls = verbs.add_parser("ls", help="list cache entries")
    ls.add_argument("--json", action="store_true", help="a JSON list: key, pass_type, size_bytes, ...")
    ls.set_defaults(func=_ls)
    clean = verbs.add_parser("clean", help="remove cache entries")
    clean.add_argument("--pass-type", help="only entries of this pass type")
    clean.add_argument("--partial", action="store_true", help="only leftovers of interrupted passes")
    clean.set_defaults(func=_clean)
    verify = verbs.add_parser("verify", help="check every entry's files against its manifest (sha256)")
    verify.add_argument("--remove", action="store_true", help="remove the entries that fail")
    verify.set_defaults(func=_verify)
    for verb in (ls, clean, verify):  # also accepted after the verb: `slimtune cache ls --cache-dir DIR`
        verb.add_argument("--cache-dir", default=argparse.SUPPRESS, help="cache folder")
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _ls(args) -> int:
    from slimtune.engine.cache import ls_command

    return ls_command(args)


def _clean(args) -> int:
    from slimtune.engine.cache import clean_command

    return clean_command(args)


def _verify(args) -> int:
    from slimtune.engine.cache import verify_command

    return verify_command(args)
