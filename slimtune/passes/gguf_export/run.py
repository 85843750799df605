"""GGUFExport's work: check, merge an adapter if given one, convert with llama.cpp's converter, quantize with
llama.cpp's quantizer, write the Modelfile and the tokenizer files beside the .gguf file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from slimtune.errors import ModelError, PassFailed, UserError
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.gguf_export.params import GGUFExportParams
from slimtune.passes.merge.run import TOKENIZER_FILES

GGUF_NAME = "model.gguf"
CONVERTER_ENV = "SLIMTUNE_GGUF_CONVERTER"
# Hugging Face architectures llama.cpp converts and slimtune trains and evaluates (config.json `architectures`)
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)
CONVERTER_TYPES = ("f16", "bf16", "f32", "q8_0")  # written by the converter itself
LLAMA_FTYPES = {"q4_0": 2, "q4_k_m": 15, "q5_k_m": 17}  # llama_ftype values the quantizer takes


def converter_dir() -> Path:
    """Where `scripts/install-llama-cpp.sh` put llama.cpp's converter (convert_hf_to_gguf.py, conversion/ and
    gguf-py/ from the llama-cpp-python source package it built): $SLIMTUNE_GGUF_CONVERTER, else
    <venv>/share/slimtune/llama.cpp."""
    return Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix, "share", "slimtune", "llama.cpp"))


def check_tools() -> Path:
    """The converter's folder; a UserError naming the fix when it or llama-cpp-python is missing."""
    import importlib.util

    folder = converter_dir()
    setup = "install slimtune's gguf extra: `SLIMTUNE_EXTRAS=gguf make setup` (or `bash scripts/install-llama-cpp.sh`)"
    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError(f"GGUFExport needs llama-cpp-python (llama.cpp's quantizer and runtime); {setup}")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise UserError(
            f"GGUFExport needs llama.cpp's converter (convert_hf_to_gguf.py), not found in {folder} "
            f"(${CONVERTER_ENV}); {setup}"
        )
    return folder


def check_architecture(folder: Path) -> str:
    """The model's architecture, refused (before any work) when it is not one GGUFExport handles."""
    config = json.loads((folder / "config.json").read_text())
    architectures = config.get("architectures") or []
    supported = [a for a in architectures if a in SUPPORTED_ARCHITECTURES]
    if not supported:
        given = ", ".join(architectures) or f"model_type {config.get('model_type')!r}"
        raise UserError(
            f"GGUFExport: {folder} is a {given}, which it does not export; supported architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return supported[0]


def run(ctx: PassContext, params: GGUFExportParams) -> ModelRef:
    ref = ctx.input
    if ref.kind not in ("hf", "adapter"):
        raise UserError(
            f"GGUFExport needs a Hugging Face model or an adapter, got a {ref.kind} model: {ref.path}"
        )
    if ref.kind == "adapter" and not ref.base_path:
        raise ModelError(
            f"adapter {ref.path} does not say which base model it applies to (base_path is empty)"
        )
    base = Path(ref.base_path if ref.kind == "adapter" else ref.path)
    architecture = check_architecture(base)
    converter = check_tools()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    source = _merged(ctx) if ref.kind == "adapter" else base

    out = Path(ctx.output_dir) / GGUF_NAME
    log_file = ctx.work_dir / "llama.cpp.log"
    started = time.perf_counter()
    direct = params.quant_type in CONVERTER_TYPES
    converted = out if direct else ctx.work_dir / "converted.gguf"
    meta_file = ctx.work_dir / "slimtune-meta.json"
    meta_file.write_text(json.dumps(gguf_metadata(ctx.meta), ensure_ascii=False))
    # a k-quant or q4_0 is made from the 16-bit file the converter picks for these weights (bf16 stays bf16)
    outtype = params.quant_type if direct else "auto"
    ctx.log(f"      converting {source} with llama.cpp's converter ({outtype})")
    _child(
        [
            "convert",
            str(converter),
            str(meta_file),
            "--",
            str(source),
            "--outfile",
            str(converted),
            "--outtype",
            outtype,
        ],
        log_file,
        "llama.cpp's converter",
    )
    convert_s = time.perf_counter() - started
    if not direct:
        ctx.log(f"      quantizing to {params.quant_type} with llama.cpp's quantizer")
        _child(
            [
                "quantize",
                str(converted),
                str(out),
                str(LLAMA_FTYPES[params.quant_type]),
                str(params.threads or 0),
            ],
            log_file,
            "llama.cpp's quantizer",
        )
        converted.unlink()
    for name in TOKENIZER_FILES:  # slimtune encodes prompts with these, as for every other kind
        if (source / name).is_file():
            shutil.copy2(source / name, Path(ctx.output_dir) / name)
    write_modelfile(Path(ctx.output_dir), ctx.meta, params.quant_type)
    ctx.metrics.update(
        quant_type=params.quant_type,
        architecture=architecture,
        gguf_bytes=out.stat().st_size,
        convert_seconds=round(convert_s, 2),
        total_seconds=round(time.perf_counter() - started, 2),
        converter=_converter_version(converter),
    )
    return ModelRef(str(ctx.output_dir), "gguf")


def gguf_metadata(meta: ModelMeta) -> dict[str, str | list[str] | bool]:
    """What slimtune carries in the GGUF file: its whole ModelMeta, template and labels on their own, and, for
    a model trained on a text template, whether prompts start with BOS as its training samples did (so that
    llama.cpp and Ollama lay a prompt out as training did)."""
    from slimtune.models.gguf import LABELS_KEY, META_KEY, TEMPLATE_KEY

    entries: dict[str, str | list[str] | bool] = {META_KEY: json.dumps(asdict(meta), ensure_ascii=False)}
    if meta.template:
        entries[TEMPLATE_KEY] = meta.template
        if not meta.chat_template:
            entries["tokenizer.ggml.add_bos_token"] = bool(meta.add_special_tokens)
    if meta.labels:
        entries[LABELS_KEY] = list(meta.labels)
    return entries


def write_modelfile(folder: Path, meta: ModelMeta, quant_type: str) -> Path:
    """An Ollama Modelfile beside the .gguf file: greedy decoding as slimtune evaluated it; a model trained on a
    text template gets the prompt as written (the template up to the answer), a chat model the chat template
    Ollama reads from the file."""
    lines = [
        f"# Ollama: ollama create NAME -f Modelfile   (llama.cpp {quant_type} weights, written by slimtune)",
        f"FROM ./{GGUF_NAME}",
        "PARAMETER temperature 0",
    ]
    chat = meta.chat_template or bool(meta.messages_col)
    if meta.template and not chat:
        prompt = (
            meta.template.split("{" + meta.answer_column + "}")[0] if meta.answer_column else meta.template
        )
        lines[1:1] = [f"# prompts are the training template up to the answer: {prompt!r}"]
        lines.append('TEMPLATE """{{ .Prompt }}"""')
        if meta.labels:
            lines.append(
                'PARAMETER stop "\\n"'
            )  # a label answer is one line, as slimtune's evaluation cuts it
    elif chat:
        lines[1:1] = ["# prompts go through the chat template carried in the file (tokenizer.chat_template)"]
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def _merged(ctx: PassContext) -> Path:
    """The adapter merged into its base, in the work folder (MergeAdapterWeights' own code)."""
    from slimtune.passes.merge.params import MergeParams
    from slimtune.passes.merge.run import run as merge

    folder = ctx.work_dir / "merged"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    sub = PassContext(
        input=ctx.input,
        meta=ctx.meta,
        output_dir=folder,
        work_dir=ctx.work_dir / "merge-work",
        device=ctx.device,
        execution_provider=ctx.execution_provider,
        model_load=ctx.model_load,
        log=ctx.log,
    )
    ctx.log("      merging the adapter into its base first")
    merge(sub, MergeParams())
    return folder


def _child(args: list[str], log_file: Path, what: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [_repo_root(), os.environ.get("PYTHONPATH")])),
    }
    with open(log_file, "a") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "slimtune.passes.gguf_export.convert", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if proc.returncode == 0:
        return
    tail = log_file.read_text(errors="replace").strip().splitlines()[-12:]
    mine = [line for line in tail if line.startswith("slimtune: ")]
    if mine:
        raise UserError(f"GGUFExport: {mine[-1][len('slimtune: ') :]} (log: {log_file})")
    raise PassFailed(f"{what} failed (exit {proc.returncode}); last lines of {log_file}:\n" + "\n".join(tail))


def _repo_root() -> str:
    """The folder slimtune is imported from, so the child imports this very slimtune."""
    import slimtune

    return str(Path(slimtune.__file__).resolve().parents[1])


def _converter_version(folder: Path) -> str | None:
    version = folder / "VERSION"
    return version.read_text().strip() if version.is_file() else None
