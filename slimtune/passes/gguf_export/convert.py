"""llama.cpp's converter and quantizer, each run in a child process by GGUFExport (a crash in either cannot take
the run down, and their logs go to a file):

    python -m slimtune.passes.gguf_export.convert convert CONVERTER_DIR META_JSON -- CONVERTER_ARGS...
    python -m slimtune.passes.gguf_export.convert quantize IN_GGUF OUT_GGUF FTYPE THREADS

`convert` runs `convert_hf_to_gguf.py` (from the llama-cpp-python source package, with the gguf-py beside it)
as its own `main()`, with two additions and nothing else changed:
- slimtune's metadata (META_JSON: key -> string, list of strings or bool) is written into the file's
  key-value section after the converter's own (which already carries the chat template), so a key given there
  (tokenizer.ggml.add_bos_token) overrides the converter's;
- a byte-level BPE tokenizer the converter does not recognise by its hash is accepted when its tokenizer.json
  pre-tokenizer is exactly GPT-2's (ByteLevel with the GPT-2 split, no normaliser): llama.cpp's `gpt-2`
  pre-tokenizer splits text the same way. Any other unrecognised tokenizer stays refused, with the converter's
  own message.
`quantize` calls `llama_cpp.llama_model_quantize`, llama.cpp's quantizer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

UNKNOWN_TOKENIZER_EXIT = 3


def gpt2_byte_level(model_dir: Path) -> bool:
    """True when tokenizer.json splits text exactly as GPT-2 does: a byte-level BPE whose only pre-tokenizer is
    ByteLevel with its regex (GPT-2's pattern), no prefix space, and no normaliser."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers") or []) == 1:
        pre = pre["pretokenizers"][0]
    return (
        (data.get("model") or {}).get("type") == "BPE"
        and data.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space", False) is False
    )


def convert(converter_dir: Path, meta_file: Path, args: list[str]) -> None:
    sys.path.insert(0, str(converter_dir))
    import convert_hf_to_gguf  # noqa: I001 - puts its own gguf-py first on the path
    from conversion import base

    entries = json.loads(meta_file.read_text(encoding="utf-8"))
    original_prepare = base.ModelBase.prepare_metadata
    original_pre = base.TextModel.get_vocab_base_pre

    def prepare_metadata(self, vocab_only: bool):
        original_prepare(self, vocab_only)
        writer = self.gguf_writer
        write_header = writer.write_header_to_file

        def write_header_with_entries(*args, **kwargs):  # last, so an entry overrides the converter's value
            for key, value in entries.items():
                if isinstance(value, bool):
                    writer.add_bool(key, value)
                elif isinstance(value, list):
                    writer.add_array(key, value)
                else:
                    writer.add_string(key, value)
            return write_header(*args, **kwargs)

        writer.write_header_to_file = write_header_with_entries

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original_pre(self, tokenizer)
        except NotImplementedError:
            if gpt2_byte_level(Path(self.dir_model)):
                base.logger.info("tokenizer not known by its hash; its pre-tokenizer is GPT-2's: gpt-2")
                return "gpt-2"
            print(
                "slimtune: llama.cpp's converter does not know this model's tokenizer (its BPE pre-tokenizer "
                "was not recognised), so llama.cpp would split text differently from training",
                file=sys.stderr,
            )
            sys.exit(UNKNOWN_TOKENIZER_EXIT)

    base.ModelBase.prepare_metadata = prepare_metadata
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", *args]
    convert_hf_to_gguf.main()


def quantize(source: Path, target: Path, ftype: int, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        print(f"slimtune: llama_model_quantize returned {status}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str]) -> None:
    if argv[0] == "convert":
        split = argv.index("--")
        convert(Path(argv[1]), Path(argv[2]), argv[split + 1 :])
    elif argv[0] == "quantize":
        quantize(Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}; convert or quantize")


if __name__ == "__main__":
    main(sys.argv[1:])
