"""What an Azure ML job of slimtune runs: `python -m slimtune.systems.azureml.entry --config config.json
--input NAME=PATH ... --output DIR [--hf-token]`.

The config's `{{input:NAME}}` placeholders become the paths where Azure ML mounted the inputs; with --hf-token the
secret `hf-token` of the workspace's key vault becomes HF_TOKEN (masked in everything slimtune prints); the run
writes its output folder to DIR/output and its pass outputs into a cache on the job's own disk, whose entries are
then copied to DIR/cache/entries (a cache on a mounted blob folder would lose its locks and atomic renames).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", action="append", default=[], help="NAME=PATH")
    parser.add_argument("--output", required=True)
    parser.add_argument("--hf-token", action="store_true")
    parser.add_argument("--cache-dir", help="default: a folder on the job's disk")
    args = parser.parse_args(argv)
    inputs = dict(item.split("=", 1) for item in args.input)
    config = Path(args.config).resolve()
    filled = config.with_name("config.filled.json")
    filled.write_text(fill_inputs(config.read_text(), inputs))
    if args.hf_token:
        from slimtune.redact import remember

        token = hf_token_from_key_vault()
        remember([token])
        os.environ["HF_TOKEN"] = token
    output = Path(args.output)
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


if __name__ == "__main__":
    raise SystemExit(main())
