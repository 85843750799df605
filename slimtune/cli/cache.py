"""`slimtune cache ls|clean|verify`: pass outputs kept by content key."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from slimtune.units import fmt_bytes


def register(sub) -> None:
    p = sub.add_parser("cache", help="inspect or clean the pass cache")
    p.add_argument(
        "--cache-dir",
        default=".slimtune-cache",
        help="cache folder, or a shared cache URL (its local mirror); default .slimtune-cache",
    )
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
    from slimtune.engine.shared_cache import open_cache

    cache = open_cache(args.cache_dir)  # a shared cache: its local mirror
    rows = [
        {
            "key": e.key,
            "pass_type": e.info.get("pass_type"),
            "pass_name": e.info.get("pass_name"),
            "size_bytes": e.info.get("size_bytes"),
            "created": e.info.get("created"),
            "path": str(e.output),
        }
        for e in cache.entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"cache {cache.root}: empty")
        return 0
    print(f"{'key':14} {'pass':22} {'size':>10}  created")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
        print(f"{r['key'][:12]}.. {str(r['pass_type']):22} {fmt_bytes(r['size_bytes']):>10}  {created}")
    leftovers = cache.leftovers()
    if leftovers:
        print(f"{len(leftovers)} leftover folders of interrupted passes (`slimtune cache clean --partial`)")
    return 0


def _verify(args) -> int:
    """Compare every entry's files with its manifest (sizes and sha256) and list the changed ones, with the
    files and their paths, and the entries runs set aside; with --remove, delete them."""
    from slimtune.engine.cache import Entry
    from slimtune.engine.shared_cache import open_cache

    cache = open_cache(args.cache_dir)  # a shared cache: its local mirror
    broken = 0
    folders = sorted((cache.root / "entries").glob("*"))
    for folder in folders:
        try:
            entry = Entry(folder.name, folder, json.loads((folder / "entry.json").read_text()))
            problems = cache.problems(entry)
        except (OSError, ValueError) as err:
            entry, problems = Entry(folder.name, folder, {}), [f"{folder / 'entry.json'}: {err}"]
        if problems:
            broken += 1
            print(f"{folder.name[:12]}.. changed: {'; '.join(problems[:5])}")
            if args.remove:
                cache.remove(entry)
    aside = cache.set_aside()
    for folder in aside:
        print(f"{folder.name[:12]}.. changed, set aside by a run that rebuilt it: {folder}")
        if args.remove:
            shutil.rmtree(folder, ignore_errors=True)
    action = "removed" if args.remove else "a re-run rebuilds them; --remove deletes them"
    found = broken + len(aside)
    print(
        f"{len(folders)} entries checked, {broken} changed"
        + (f", {len(aside)} set aside" if aside else "")
        + (f" ({action})" if found else "")
    )
    return 2 if found and not args.remove else 0


def _clean(args) -> int:
    """Remove leftovers of interrupted passes and changed entries set aside (and, without --partial, the
    entries), then say what went: count and bytes, or that there was nothing to remove."""
    from slimtune.engine.shared_cache import open_cache
    from slimtune.files import folder_size

    cache = open_cache(args.cache_dir)  # a shared cache: its local mirror
    doomed = [*cache.leftovers(), *cache.set_aside()]
    if not args.partial:
        doomed += [
            e.path for e in cache.entries() if not args.pass_type or e.info.get("pass_type") == args.pass_type
        ]
    removed, freed, failed = 0, 0, []
    for path in doomed:
        size = folder_size(path) if path.exists() else 0
        problem = _remove_folder(path)
        if problem:
            failed.append(f"{path}: {problem}")
        else:
            removed, freed = removed + 1, freed + size
    if removed:
        print(f"removed {removed} folder{'s' if removed != 1 else ''} ({fmt_bytes(freed)}) from {cache.root}")
    elif not failed:
        print(f"nothing to remove in {cache.root}")
    for line in failed:
        print(f"could not remove {line}")
    return 2 if failed else 0


def _remove_folder(path: Path) -> str | None:
    """Delete `path`; None when it is gone, else why not (the first error)."""
    errors: list[str] = []
    shutil.rmtree(path, onerror=lambda _func, name, exc: errors.append(f"{name}: {exc[1]}"))
    if not path.exists():
        return None
    return errors[0] if errors else "still there"
