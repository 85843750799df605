"""Running functions from a user's own Python file (Olive's `user_script`).

A config names a script (`user_script`, resolved against the config file's folder like every other path) and a
function in it (`evaluate_func`, `metric_func`, `pre_process_data_config.type`, ...). Code runs only from a
path the config gives, never from a module name, and slimtune says so before it runs it. `script_dir`, as in
Olive, is put on `sys.path` so the script can import its neighbours.

Checks made when the config loads import nothing: the file must exist, and the function must be defined at
the top level of the script (read with `ast`), so `slimtune validate` never runs user code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimtune.errors import UserError

_modules: dict[str, Any] = {}  # script path -> module, once per process
_announced: set[tuple[str, str]] = set()


METRICS_GROUP = "slimtune.metrics"  # entry points of installed packages: NAME = "module:function"


def installed_metrics() -> dict[str, Any]:
    """{name: entry point} of the metric functions installed packages register (reading metadata only)."""
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=METRICS_GROUP)}


def script_problem(
    script: str | None, functions: dict[str, str | None], installed: bool = False
) -> list[tuple[str, str]]:
    """[(key, message)] for a resolved `script` and {key: function name} that it must define. Keys are the
    config keys the user wrote, e.g. `user_config.evaluate_func`. `installed`: without a script, the names may
    be metrics of installed packages (the `slimtune.metrics` entry-point group)."""
    names = {k: v for k, v in functions.items() if v}
    if script is None and installed:
        known = installed_metrics()
        return [
            (
                key,
                f"names {name!r}, but no user_script is given and no installed package registers a metric "
                f"{name!r} in the {METRICS_GROUP} entry-point group"
                + (f" (installed: {', '.join(sorted(known))})" if known else ""),
            )
            for key, name in names.items()
            if name not in known
        ]
    if script is None:
        return [(key, f"names function {name!r} but no user_script is given") for key, name in names.items()]
    path = Path(script)
    if not path.is_file():
        what = "is a folder, not a Python file" if path.is_dir() else "does not exist"
        return [
            ("user_script", f"{script} {what}; give the path of a .py file (relative to the config file)")
        ]
    defined = defined_names(path)
    if defined is None:  # a syntax error, or a star import: found out when the script runs
        return []
    return [
        (key, f"{name!r} is not defined in {script}; it defines: {', '.join(sorted(defined)) or 'nothing'}")
        for key, name in names.items()
        if name not in defined
    ]


def defined_names(path: Path) -> set[str] | None:
    """Names bound at the top level of a Python file (None when that cannot be known without running it)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def load_function(
    script: str | None, name: str, where: str, script_dir: str | None = None
) -> Callable[..., Any]:
    """The function `name` of the user's `script`, importing the script once per process (without a script:
    the metric `name` an installed package registers). `where` names the config key (printed before the code
    runs, and in errors)."""
    if script is None:
        return _installed_metric(name, where)
    path = str(Path(script).resolve())
    if (path, where) not in _announced:
        _announced.add((path, where))
        print(f"running user code from {path} ({where})", flush=True)
    module = _modules.get(path)
    if module is None:
        if not Path(path).is_file():
            raise UserError(f"{where}: user_script {path} does not exist")
        if script_dir and script_dir not in sys.path:
            sys.path.insert(0, script_dir)
        unique = hashlib.sha256(path.encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(f"slimtune_user_script_{unique}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise UserError(f"{where}: importing {path} failed: {type(err).__name__}: {err}") from err
        _modules[path] = module
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise UserError(f"{where}: {path} defines no function {name!r}; its functions: {', '.join(found)}")
    return function


def call(function: Callable[..., Any], where: str, *args: Any, **kwargs: Any) -> Any:
    """Call a user function; its exceptions become a UserError naming the config key (traceback on stderr)."""
    try:
        return function(*args, **kwargs)
    except Exception as err:
        import traceback

        traceback.print_exc(file=sys.stderr)
        raise UserError(f"{where}: {function.__name__} raised {type(err).__name__}: {err}") from err


def _installed_metric(name: str, where: str) -> Callable[..., Any]:
    point = installed_metrics().get(name)
    if point is None:
        raise UserError(f"{where}: no installed package registers a metric {name!r} ({METRICS_GROUP})")
    origin = f"{point.dist.name} {point.dist.version}" if point.dist is not None else point.value
    if (origin, where) not in _announced:
        _announced.add((origin, where))
        print(
            f"running metric {name!r} of the installed package {origin} ({point.value}; {where})", flush=True
        )
    try:
        function = point.load()
    except Exception as err:
        raise UserError(f"{where}: loading {point.value} failed: {type(err).__name__}: {err}") from err
    if not callable(function):
        raise UserError(f"{where}: {point.value} is not a function")
    return function


def origin_of(script: str | None, name: str) -> str:
    """What identifies the code of a function for cache keys: the script's content hash, or the installed
    package's name and version."""
    if script is not None:
        from slimtune.files import sha256_remembered

        return sha256_remembered(script)
    point = installed_metrics().get(name)
    return f"{point.dist.name} {point.dist.version}" if point is not None and point.dist is not None else name
