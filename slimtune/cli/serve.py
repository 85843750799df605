"""`slimtune serve --model DIR [--adapter NAME=PATH ...]`: an OpenAI-compatible server over a model folder."""

from __future__ import annotations

import os

from slimtune.errors import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model folder over HTTP (OpenAI-compatible API, predict route, chat page at /)",
    )
    p.add_argument("--model", required=True, help="an ONNX Runtime GenAI folder or a Hugging Face folder")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=PATH",
        help="an ONNX Runtime adapter (.onnx_adapter) on the ONNX base, asked for as model BASE:NAME "
        "(repeatable; default: every adapters/NAME.onnx_adapter the ExtractAdapters pass wrote beside the base)",
    )
    p.add_argument("--name", help="the model's id in the API (default: the folder's name)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on every API request (default: $SLIMTUNE_API_KEY when set)",
    )
    p.add_argument(
        "--parallel", type=int, default=8, help="requests generating at once, batched or not (default 8)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="most requests generated together as one batch of an ONNX model (default 8; 1: each alone)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=50.0,
        help="milliseconds a free generator waits for the clients whose answers just ended to send their next "
        "request, to batch them together (default 50)",
    )
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait for a slot (then 429)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds a request may take in all")
    p.add_argument("--max-tokens-cap", type=int, default=512, help="largest max_tokens a request may ask")
    p.add_argument(
        "--max-prompt-tokens", type=int, help="longest prompt in tokens (default: the context length)"
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--threads", type=int, help="intra-op threads of the runtime (default: one per core)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="on SIGTERM, seconds to let requests in flight finish",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from pathlib import Path

    from slimtune.serve.adapters import found_adapters, parse_adapter_args
    from slimtune.serve.decode import check_model_folder

    for flag, value in [
        ("--parallel", args.parallel),
        ("--batch-size", args.batch_size),
        ("--queue-size", args.queue_size + 1),
        ("--max-tokens-cap", args.max_tokens_cap),
        ("--max-body-bytes", args.max_body_bytes),
        ("--max-prompt-tokens", args.max_prompt_tokens or 1),
        ("--port", args.port + 1),
    ]:
        if value < 1:
            raise UserError(f"{flag} must be at least {1 if flag != '--queue-size' else 0}")
    if args.batch_wait < 0:
        raise UserError("--batch-wait must be 0 or more")
    if args.request_timeout <= 0:
        raise UserError("--request-timeout must be positive")
    folder = Path(args.model)
    check_model_folder(folder)
    _check_port(args.host, args.port)
    adapters = parse_adapter_args(args.adapter) or found_adapters(folder)
    api_key = args.api_key or os.environ.get("SLIMTUNE_API_KEY") or None
    from slimtune.serve.app import Limits, create_app
    from slimtune.serve.decode import ServedModel
    from slimtune.serve.server import run_server

    served = ServedModel(folder, adapters, threads=args.threads)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_cap=args.max_tokens_cap,
        request_timeout_s=args.request_timeout,
        parallel=args.parallel,
        queue_size=args.queue_size,
        batch_size=args.batch_size,
        batch_wait_s=args.batch_wait / 1000,
    )
    name = args.name or folder.resolve().name
    app = create_app(served, name, limits, api_key=api_key)
    models = ", ".join([name] + [f"{name}:{a}" for a in served.adapter_names])
    print(f"slimtune serve: {models} on http://{args.host}:{args.port} (chat page at /)", flush=True)
    run_server(app, args.host, args.port, args.drain_timeout)
    return 0


def _check_port(host: str, port: int) -> None:
    """A taken port or an address not on this machine is the user's to fix: said before the model loads."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
