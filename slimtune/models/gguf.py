"""GGUF file -> Hugging Face folder (safetensors, tokenizer, chat template, generation config).

transformers reads GGUF (`from_pretrained(folder, gguf_file=name)`) and dequantizes every tensor, but refuses
`save_pretrained` on the result while the GGUF quantization config is attached ("quantized with gguf and is not
serializable"). So the weights are moved into a model rebuilt from the same config without that entry, which
saves like any other model. Weights are saved in float32: that is what dequantization yields, and rounding them
to bf16 would add a second loss on top of the GGUF quantization (the default model's folder is 538 MB).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from slimtune.errors import ModelError, ResourceError
from slimtune.models.ref import ModelMeta
from slimtune.units import fmt_bytes

log = logging.getLogger(__name__)

# GGUF `general.architecture` values that transformers converts and onnxruntime-genai's model builder exports;
# others (mamba, t5, bloom, gpt2 ...) would convert and then fail at LoRA targets or at export, minutes later
SUPPORTED_ARCHITECTURES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3",
    "nemotron",
    "gpt_oss",
    "lfm2",
)


@dataclass(frozen=True)
class GgufInfo:
    architecture: str
    parameters: int  # elements over all tensors, as stored in the file
    name: str | None  # general.name, when the file has one

    @property
    def float32_bytes(self) -> int:
        return self.parameters * 4


def inspect_gguf(gguf_path: str | Path) -> GgufInfo:
    """Read the header of a GGUF file (memory-mapped: cheap even for large files)."""
    from gguf import GGUFReader

    path = Path(gguf_path)
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # the gguf reader raises ValueError, struct.error, IndexError... on bad files
        raise ModelError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from None

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        return str(field.contents()) if field is not None else None

    architecture = text("general.architecture")
    if not architecture:
        raise ModelError(f"{path}: the GGUF header has no general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path}: GGUF architecture {architecture!r} is not supported: slimtune converts GGUF files of "
            f"decoder-only transformers that both transformers and the ONNX model builder handle (supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}). Give a Hugging Face folder of a supported model instead."
        )
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    return GgufInfo(architecture=architecture, parameters=parameters, name=text("general.name"))


def check_free_space(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed * 1.1:
        raise ResourceError(
            f"not enough disk space in {folder} to convert the model: about {fmt_bytes(needed)} needed, "
            f"{fmt_bytes(free)} free. Free some space or point SLIMTUNE_HOME somewhere larger."
        )


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    base_model: str | None = None,
    name_or_path: str | None = None,
    progress: bool = False,
) -> Path:
    """Write a Hugging Face folder for `gguf_path` into `out_dir` (created; expected empty).

    `base_model` is recorded in slimtune.json; `name_or_path` becomes the config's `_name_or_path`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    info = inspect_gguf(gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        try:
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except ValueError as err:
            if "not supported" in str(err):
                from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

                supported = ", ".join(
                    a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")
                )
                raise ModelError(
                    f"{gguf_path}: GGUF architecture {info.architecture!r} is not supported by transformers "
                    f"(supported: {supported}). Convert the model to a Hugging Face folder another way and give "
                    "that folder as the model path."
                ) from None
            raise
        model = _without_gguf_quantization(loaded)
        del loaded
        if name_or_path:
            model.config._name_or_path = name_or_path
        model.save_pretrained(out_dir)  # safetensors by default in transformers 5

        max_positions = getattr(model.config, "max_position_embeddings", None)
        if max_positions:
            tokenizer.model_max_length = max_positions
        if not tokenizer.chat_template:
            log.warning(
                "%s has no chat template; chat-formatted data will need a text template", gguf_path.name
            )
        tokenizer.save_pretrained(out_dir)
        _generation_config(model.config, tokenizer, GenerationConfig).save_pretrained(out_dir)
    finally:
        if bars_were_on and not progress:
            hf_logging.enable_progress_bar()
    ModelMeta(base_model=base_model or str(gguf_path)).save(out_dir)
    return out_dir


def _without_gguf_quantization(loaded):
    """The same weights in a model whose config carries no GGUF quantization config, so it can be saved.

    Built on the meta device and filled with `assign=True`: the weights are moved, not copied, so peak memory
    stays at one copy of the model.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    # buffers that are not saved (rotary inv_freq and the like) were created on meta: take the loaded ones
    loaded_buffers = dict(loaded.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name in loaded_buffers:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            owner.register_buffer(attr, loaded_buffers[name], persistent=False)
    return model.eval()


def _generation_config(config, tokenizer, generation_config_cls):
    """Greedy decoding that stops at the tokenizer's end-of-turn token (and the config's, when it differs)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    config_eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos += [e for e in config_eos if e is not None and e not in eos]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.bos_token_id
    return generation_config_cls(
        bos_token_id=bos,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        pad_token_id=pad,
        do_sample=False,
    )


# GGUF metadata keys GGUFExport writes: the whole ModelMeta as JSON, and its template and labels on their own
# so that other tools (gguf-dump, Ollama's show) display them
META_KEY = "slimtune.meta"
TEMPLATE_KEY = "slimtune.template"
LABELS_KEY = "slimtune.labels"


def gguf_model_meta(gguf_path: str | Path) -> ModelMeta | None:
    """The ModelMeta GGUFExport carried in a GGUF file's metadata (None when the file has none)."""
    import json

    from gguf import GGUFReader

    try:
        field = GGUFReader(Path(gguf_path)).fields.get(META_KEY)
    except Exception as err:  # the gguf reader raises ValueError, struct.error, IndexError... on bad files
        raise ModelError(f"{gguf_path} is not a readable GGUF file ({type(err).__name__}: {err})") from None
    if field is None:
        return None
    data = json.loads(str(field.contents()))
    return ModelMeta(**{k: v for k, v in data.items() if k in ModelMeta.__dataclass_fields__})


def model_meta(path: str | Path) -> ModelMeta | None:
    """A model's task metadata: its folder's slimtune.json, else (a GGUF model) the metadata in the file."""
    from slimtune.models.kind import gguf_file

    path = Path(path)
    if path.is_dir():
        meta = ModelMeta.load(path)
        if meta is not None:
            return meta
    found = gguf_file(path)
    return gguf_model_meta(found) if found is not None else None
