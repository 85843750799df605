"""ModelBuilder's run function: one call to onnxruntime-genai's model builder through its public entry points.

`parse_extra_options` + `create_model` are what `python -m onnxruntime_genai.models.builder` itself calls; we
never patch the builder's internals (Olive does, and broke with onnxruntime-genai 0.18). Options go in as the
CLI's KEY=VALUE strings, so the builder's own parsing and checks apply exactly as they do on its command line.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, PassFailed, ResourceError, UserError
from slimtune.files import folder_size
from slimtune.models.kind import is_adapter_folder
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.model_builder.params import ModelBuilderParams
from slimtune.units import fmt_bytes

LOG_NAME = "builder.log"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

# Precision + provider pairs the builder lists as valid (printed by its get_args in 0.18).
SUPPORTED = {
    "fp32": {"cpu", "cuda"},
    "fp16": {"cuda", "dml"},
    "bf16": {"cuda"},
    "int8": {"cpu", "cuda", "webgpu"},
    "int4": {"cpu", "cuda", "dml", "webgpu"},
}

# ModelBuilderParams field -> the builder's extra option (0.18 names; its `int4_`-prefixed names are
# documented as aliases but no longer read anywhere, so passing them would be silently ignored).
PARAM_OPTIONS = {
    "int4_block_size": "block_size",
    "int4_accuracy_level": "accuracy_level",
    "int4_algo_config": "algo_config",
    "int4_is_symmetric": "is_symmetric",
    "int4_op_types_to_quantize": "op_types_to_quantize",
    "exclude_embeds": "exclude_embeds",
    "exclude_lm_head": "exclude_lm_head",
    "enable_cuda_graph": "enable_cuda_graph",
}
LEGACY_ALIASES = {
    f"int4_{name}": name
    for name in (
        "block_size",
        "accuracy_level",
        "algo_config",
        "is_symmetric",
        "op_types_to_quantize",
        "nodes_to_exclude",
    )
}


def run(ctx: PassContext, params: ModelBuilderParams) -> ModelRef:
    input_path, adapter_path = _resolve_input(ctx, params)
    provider = params.execution_provider or ctx.execution_provider or "cpu"
    if provider not in SUPPORTED[params.precision]:
        valid = ", ".join(sorted(p for p, eps in SUPPORTED.items() if provider in eps)) or "none"
        raise UserError(
            f"ModelBuilder: precision {params.precision!r} is not supported on execution provider {provider!r} "
            f"(valid there: {valid}); change `precision` or the target system's accelerators"
        )

    extra = dict(params.extra_options)
    extra.pop("ignore_memory_check", None)  # the engine's memory check reads it (passes.model_builder)
    options = _builder_options(params, extra, adapter_path)

    output_dir = Path(ctx.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(ctx.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = work_dir / "builder_cache"
    log_path = work_dir / LOG_NAME  # outlives a failed attempt (output_dir does not); copied on success
    what = f"{params.precision} ONNX for {provider}" + (" (base + adapter)" if adapter_path else "")
    ctx.log(f"ModelBuilder: building {what} from {input_path} (builder output in {log_path.name})")

    start = time.perf_counter()
    _build(input_path, output_dir, params.precision, provider, cache_dir, options, log_path)
    seconds = time.perf_counter() - start
    shutil.rmtree(cache_dir, ignore_errors=True)  # only temporary external-data files live there
    shutil.copyfile(log_path, output_dir / LOG_NAME)

    _verify_output(output_dir, options, params.metadata_only, output_dir / LOG_NAME)
    if params.session_options:
        _add_session_options(output_dir / "genai_config.json", params.session_options)
    size = folder_size(output_dir) - (output_dir / LOG_NAME).stat().st_size
    ctx.log(f"ModelBuilder: done in {seconds:.1f} s, {fmt_bytes(size)}")
    ctx.metrics.update(
        output_size_bytes=size,
        precision=params.precision,
        execution_provider=provider,
        builder_options=dict(options),
        session_options=dict(params.session_options),
        build_seconds=round(seconds, 2),
        builder_version=_builder_version(),
    )
    return ModelRef(path=str(output_dir), kind="onnx")


def _resolve_input(ctx: PassContext, params: ModelBuilderParams) -> tuple[str, str | None]:
    """(base model folder, adapter folder or None)."""
    ref = ctx.input
    if ref.kind == "adapter":
        if not ref.base_path:
            raise ModelError(
                f"adapter {ref.path} does not say which base model it applies to (base_path is empty)"
            )
        if params.adapter_path:
            raise UserError(
                f"ModelBuilder: the input is already an adapter ({ref.path}); remove `adapter_path` "
                f"({params.adapter_path}) or add a MergeAdapterWeights pass before ModelBuilder"
            )
        input_path, adapter_path = ref.base_path, ref.path
    elif ref.kind == "hf":
        input_path, adapter_path = ref.path, params.adapter_path
    else:
        raise ModelError(
            f"ModelBuilder needs a Hugging Face folder or an adapter, got a {ref.kind!r} model: {ref.path}"
        )
    if not Path(input_path, "config.json").is_file():
        raise ModelError(f"{input_path} is not a Hugging Face model folder (no config.json)")
    if adapter_path and not is_adapter_folder(adapter_path):
        raise ModelError(f"{adapter_path} is not a PEFT adapter folder (no adapter_config.json)")
    return str(input_path), (str(adapter_path) if adapter_path else None)


def _builder_options(
    params: ModelBuilderParams, extra: dict[str, Any], adapter_path: str | None
) -> dict[str, str]:
    """The builder's extra options as KEY=VALUE strings (what its CLI passes), keyed for the run record."""
    options: dict[str, str] = {}
    for field, option in PARAM_OPTIONS.items():
        value = getattr(params, field)
        if value is not None:
            options[option] = _option_text(option, value)
    if adapter_path:
        options["adapter_path"] = adapter_path
    if params.metadata_only:
        options["config_only"] = "true"

    known = builder_option_names()
    unknown = []
    for key, value in extra.items():
        name = LEGACY_ALIASES.get(key, key)
        if known and name not in known:
            unknown.append(key)
            continue
        if name in options and options[name] != _option_text(name, value):
            raise UserError(
                f"ModelBuilder: extra_options.{key}={value!r} conflicts with the pass parameter that sets "
                f"{name}={options[name]!r}; set it in one place"
            )
        options[name] = _option_text(name, value)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(
            "ModelBuilder: extra_options not known to onnxruntime-genai's model builder "
            f"{_builder_version()}: {', '.join(hints)}"
        )
    return options


def _option_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ("," if name == "nodes_to_exclude" else "/").join(str(v) for v in value)
    return str(value)


def builder_option_names() -> set[str]:
    """Extra option names documented in the installed builder's --extra_options help (empty if unreadable).

    Read from the source of its `get_args`, since `builder --help` itself crashes in 0.18.
    """
    import inspect

    from onnxruntime_genai.models import builder

    try:
        source = inspect.getsource(builder.get_args)
    except (OSError, TypeError, AttributeError):
        return set()
    # the help's option lines are indented 16 spaces in the source; code lines (`parser = ...`) are not
    return set(re.findall(r"^ {16}(\w+) = ", source, flags=re.MULTILINE))


def _build(
    input_path: str,
    output_dir: Path,
    precision: str,
    provider: str,
    cache_dir: Path,
    options: dict[str, str],
    log_path: Path,
) -> None:
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    args = [f"{k}={v}" for k, v in options.items()]
    with _captured_output(log_path):
        try:
            prepared = parse_extra_options(
                None, input_path, str(output_dir), precision, provider, str(cache_dir), args
            )
            create_model(None, input_path, str(output_dir), precision, provider, str(cache_dir), **prepared)
        except MemoryError as err:
            raise ResourceError(
                "ModelBuilder ran out of memory; free memory, build on a larger machine, or export a smaller model"
            ) from err
        except NotImplementedError as err:
            raise PassFailed(f"ModelBuilder: {err} (see {log_path})") from err
        except ValueError as err:
            raise PassFailed(
                f"ModelBuilder: the builder rejected its options: {err} (see {log_path})"
            ) from err
        except Exception as err:
            traceback.print_exc()  # into the log: the builder's own failure, with its stack
            raise PassFailed(
                f"ModelBuilder failed: {type(err).__name__}: {err}. The builder's output and traceback are in {log_path}"
            ) from err


@contextlib.contextmanager
def _captured_output(log_path: Path):
    """Send everything the builder prints (Python, C++ and logging) to `log_path`, then restore the terminal.

    The builder imports onnxruntime's quantizer, which calls logging.basicConfig at import time; the root
    logger's handlers and level are restored afterwards so that it does not keep logging at INFO.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "w", buffering=1, encoding="utf-8", errors="replace") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            root.handlers[:] = handlers
            root.setLevel(level)
            log.flush()
            _mask_secrets(log_path)  # the builder prints its options, hf_token included


def _mask_secrets(path: Path) -> None:
    from slimtune.redact import redact_text

    text = path.read_text(encoding="utf-8", errors="replace")
    masked = redact_text(text)
    if masked != text:
        path.write_text(masked, encoding="utf-8")


def _verify_output(output_dir: Path, options: dict[str, str], metadata_only: bool, log_path: Path) -> None:
    missing = []
    config_path = output_dir / "genai_config.json"
    if not config_path.is_file():
        missing.append("genai_config.json")
    if not metadata_only:
        model_name = options.get("filename", "model.onnx")
        if not (output_dir / model_name).is_file():
            missing.append(model_name)
    if not any((output_dir / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files (" + " / ".join(TOKENIZER_FILES) + ")")
    if missing:
        raise ModelError(
            f"ModelBuilder finished without error but its output in {output_dir} lacks: {', '.join(missing)}. "
            f"The builder's log is {log_path}"
        )
    try:
        json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"the builder wrote an unreadable {config_path}: {err}") from err


def _add_session_options(config_path: Path, session: dict[str, Any]) -> None:
    """Add `session` to the decoder's session_options in genai_config.json (what onnxruntime-genai reads when it
    opens the model; a key it does not know by name goes to ONNX Runtime as a session config entry)."""
    from slimtune.files import write_json_atomic

    config = json.loads(config_path.read_text())
    config["model"]["decoder"].setdefault("session_options", {}).update(session)
    write_json_atomic(config_path, config, indent=4)


def _builder_version() -> str:
    try:
        import onnxruntime_genai

        return f"onnxruntime-genai {onnxruntime_genai.__version__}"
    except Exception:  # noqa: BLE001 - a version string is only decoration
        return "onnxruntime-genai (version unknown)"
