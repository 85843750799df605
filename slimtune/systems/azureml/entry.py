"""What an Azure ML job of slimtune runs: `python -m slimtune.systems.azureml.entry --config config.json
--input NAME=PATH ... --output DIR [--hf-token]`.

The config's `{{input:NAME}}` placeholders become the paths where Azure ML mounted the inputs; with --hf-token the
secret `hf-token` of the workspace's key vault becomes HF_TOKEN (masked in everything slimtune prints); the run
writes its output folder to DIR/output and its pass outputs into a cache on the job's own disk, whose entries are
then copied to DIR/cache/entries (a cache on a mounted blob folder would lose its locks and atomic renames).

`--pass-job pass_job.json` instead of `--config`: the job of one pass (`pass_job.py`). The entry runs exactly
that pass into the cache on the job's disk and writes its committed entry to DIR/cache/entries/KEY. Under a
multi-process launch (the job's PyTorch distribution sets WORLD_SIZE, RANK, MASTER_ADDR ...) every process is
one rank of the pass's data-parallel training (PassSpec.data_parallel: for LoRA, the rank function torchrun's
and Ray Train's workers run), in a torch.distributed group over the nodes; rank 0 commits the entry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from slimtune.errors import EXIT_GOALS
from slimtune.systems.azureml.job import PLACEHOLDER

PATHS_FILE = (
    "job_paths.json"  # the job's cache and output paths, so run.json's paths can be rewritten on download
)
EXIT_CODE_FILE = (
    "exit_code.txt"  # slimtune's exit code in the job: goals not met (3) is a result, not a failure
)


def fill_inputs(text: str, inputs: dict[str, str]) -> str:
    def value(match) -> str:
        name = match.group(1)
        if name not in inputs:
            raise SystemExit(
                f"slimtune job: the config names input `{name}`, which the command does not give"
            )
        return json.dumps(inputs[name])[1:-1]  # a JSON string's content

    return PLACEHOLDER.sub(value, text)


def hf_token_from_key_vault() -> str:
    """The secret `hf-token` of the key vault of the workspace this job runs in (as Olive reads it)."""
    from azure.keyvault.secrets import SecretClient

    from slimtune.systems.azureml.workspace import credential as azure_credential

    credential = azure_credential()  # in a job: its managed identity
    vault = os.environ.get("SLIMTUNE_KEYVAULT")
    if not vault:
        from azure.ai.ml import MLClient

        client = MLClient(
            credential,
            os.environ["AZUREML_ARM_SUBSCRIPTION"],
            os.environ["AZUREML_ARM_RESOURCEGROUP"],
            os.environ["AZUREML_ARM_WORKSPACE_NAME"],
        )
        vault = client.workspaces.get(client.workspace_name).key_vault.rsplit("/", 1)[-1]
    return SecretClient(f"https://{vault}.vault.azure.net", credential).get_secret("hf-token").value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slimtune-job")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="a whole workflow")
    what.add_argument("--pass-job", help="one pass (PassJob JSON)")
    parser.add_argument("--input", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--output", required=True)
    parser.add_argument("--hf-token", action="store_true")
    parser.add_argument("--cache-dir", help="default: a folder on the job's disk")
    args = parser.parse_args(argv)
    inputs = dict(item.split("=", 1) for item in args.input)
    if args.hf_token:
        from slimtune.redact import remember

        token = hf_token_from_key_vault()
        remember([token])
        os.environ["HF_TOKEN"] = token
    output = Path(args.output)
    if args.pass_job:
        return masked(run_pass_job, Path(args.pass_job).resolve(), inputs, output, args.cache_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(
            "slimtune job: a whole workflow runs in one process; only a pass job runs data-parallel"
        )
    config = Path(args.config).resolve()
    filled = config.with_name("config.filled.json")
    filled.write_text(fill_inputs(config.read_text(), inputs))
    output.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="slimtune-cache-"))
    from slimtune.cli.main import main as slimtune

    code = slimtune(
        ["run", "--config", str(filled), "--output-dir", str(output / "output"), "--cache-dir", str(cache)]
    )
    entries = cache / "entries"
    if entries.is_dir():
        target = output / "cache" / "entries"
        target.mkdir(parents=True, exist_ok=True)
        for entry in entries.iterdir():
            if (entry / "entry.json").is_file():
                shutil.copytree(entry, target / entry.name, dirs_exist_ok=True)
    paths = {"cache": str(cache.resolve()), "output": str((output / "output").resolve())}
    (output / PATHS_FILE).write_text(json.dumps(paths))
    (output / EXIT_CODE_FILE).write_text(str(code))
    sys.stdout.flush()
    return 0 if code == EXIT_GOALS else code


def masked(run, *args) -> int:
    """`run(*args)` with every secret masked in what it prints and logs, and in its traceback (a whole workflow
    gets that from `slimtune run`)."""
    import logging
    import traceback

    from slimtune.redact import RedactingFilter, RedactingStream, redact_text

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        return run(*args)
    except Exception:
        print(redact_text(traceback.format_exc()), end="", file=sys.stderr)
        return 1
    finally:
        sys.stdout, sys.stderr = streams


def run_pass_job(path: Path, inputs: dict[str, str], output: Path, cache_dir: str | None) -> int:
    """Run the one pass of pass_job.json into a cache on the job's disk; its entry to output/cache/entries."""
    from slimtune.config.reader import interpolate_env
    from slimtune.engine.cache import Cache
    from slimtune.systems import PassJob
    from slimtune.systems.azureml.pass_job import CODE
    from slimtune.systems.job import run_job

    text = fill_inputs(path.read_text(), {**inputs, CODE: str(path.parent)})
    data, _ = interpolate_env(json.loads(text))  # `${NAME}`: the job's environment variables
    cache = Cache(cache_dir or tempfile.mkdtemp(prefix="slimtune-cache-"))
    job = PassJob.from_json({**data, "cache_root": str(cache.root)})
    job.context["work_dir"] = str(cache.work_dir(job.key))
    job.context["options"]["compiled_dir"] = str(cache.compiled_dir())
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    node = f"Azure ML job {os.environ.get('AZUREML_RUN_ID', '?')} ({socket.gethostname()}"
    if world > 1:
        run_ranks(job, world, rank, f"{node}, {world} ranks)")  # rank 0's machine
    else:
        run_job(job, f"{node})")
    if rank == 0:
        target = output / "cache" / "entries" / job.key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cache.root / "entries" / job.key, target, dirs_exist_ok=True)
        print(
            f"slimtune job: {job.pass_name} ({job.pass_type}) committed as cache entry {job.key}", flush=True
        )
    return 0


def run_ranks(job, world: int, rank: int, node: str) -> None:
    """This process as one rank of the pass's data-parallel training; rank 0 commits the entry."""
    import importlib

    import torch
    import torch.distributed as dist

    from slimtune.engine.cache import Cache
    from slimtune.engine.execute import execute
    from slimtune.passes.context import PassContext
    from slimtune.passes.registry import get_pass
    from slimtune.systems.job import adopt_rank_result

    spec = get_pass(job.pass_type)
    if spec.data_parallel is None:
        raise SystemExit(f"slimtune job: {job.pass_type} does not train data-parallel; run it on one process")
    module = importlib.import_module(spec.data_parallel)
    params = spec.params.model_validate(job.params)
    gpu = job.context["device"] == "cuda" and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if gpu else "gloo"
    )  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE: the launch's
    try:
        if rank != 0:
            ctx = PassContext.from_json(
                {**job.context, "output_dir": tempfile.mkdtemp(prefix="slimtune-rank-")}
            )
            module.train_rank(ctx, module.rank_params(ctx, params, world))
            return

        def run(ctx: PassContext, params):
            out = module.train_rank(ctx, module.rank_params(ctx, params, world))
            return adopt_rank_result(ctx, out, world)

        cache = Cache(job.cache_root)
        attempt = cache.new_attempt(job.key)
        ctx = PassContext.from_json({**job.context, "output_dir": str(attempt / "output")})
        execute(spec, params, ctx, cache, job.key, attempt, job.info, node, run=run)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
