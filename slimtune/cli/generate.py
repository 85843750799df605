"""`slimtune generate --model DIR (--prompt TEXT | --input JSON_ROW)`: stream a completion."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from an ONNX GenAI, Hugging Face or GGUF model")
    p.add_argument(
        "--model",
        required=True,
        help="model folder, or a .gguf file; also at an http(s)/s3/az/abfs URL, or a hub model id "
        "(org/name[@revision])",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--prompt",
        help="prompt text (\\n is a newline); a model trained on chat (slimtune.json) gets it as a user turn "
        "through its chat template, unless --raw",
    )
    src.add_argument(
        "--input",
        help='a JSON row, formatted with the model\'s recorded template, e.g. \'{"phrase": "..."}\' or, for '
        'a chat model, \'{"messages": [{"role": "user", "content": "..."}]}\'',
    )
    p.add_argument("--system", help="with --prompt on a chat model: a system turn before the user's")
    p.add_argument("--raw", action="store_true", help="send the --prompt text as given (no chat template)")
    p.add_argument(
        "--adapter",
        help="an .onnx_adapter file applied to the ONNX base (made by the ExtractAdapters pass), or the name of "
        "one in the base's adapters/ folder",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.evaluate.generate import generate_command

    return generate_command(args)
