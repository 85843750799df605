"""A `JobPlan` as the `azure.ai.ml` `CommandJob` that Azure ML runs, and `--print-job`: the job's YAML and code
folder, for `az ml job create --file DIR/job.yml` or `azure.ai.ml.load_job`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from slimtune.errors import UserError
from slimtune.systems.azureml.job import OUTPUT, JobPlan

AZURE_PACKAGES = "azure-ai-ml azure-identity"


def import_sdk() -> Any:
    try:
        import azure.ai.ml as sdk
    except ImportError:
        raise UserError(
            f"running on Azure ML needs the Azure ML SDK: pip install 'slimtune[azureml]' ({AZURE_PACKAGES})"
        ) from None
    from slimtune.systems.azureml.workspace import quiet_azure_logs

    quiet_azure_logs()
    return sdk


def command_job(plan: JobPlan) -> Any:
    """The `CommandJob`: code folder, command, inputs (local paths the SDK uploads, URIs as they are), the output
    folder, environment, compute, nodes and processes (PyTorch distribution beyond one) and tags."""
    sdk = import_sdk()
    from azure.ai.ml.entities import CommandJob, JobResourceConfiguration

    from slimtune.systems.azureml.workspace import quiet_azure_logs

    quiet_azure_logs()  # the loggers the entities made

    inputs = {i.name: sdk.Input(type=i.type, path=i.path, mode=_mode(i)) for i in plan.inputs}
    resources = JobResourceConfiguration(instance_count=plan.instance_count, **_resources(plan.resources))
    distribution = None
    if plan.instance_count * plan.processes_per_instance > 1:
        # Azure ML starts process_count_per_instance processes on each of instance_count nodes and sets
        # MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK: each runs the entry as one rank of the pass's
        # data-parallel training (only a pass job gets here: a whole workflow with several ranks is refused)
        distribution = sdk.PyTorchDistribution(process_count_per_instance=plan.processes_per_instance)
    return CommandJob(
        name=plan.name,
        display_name=plan.display_name,
        experiment_name=plan.experiment,
        command=plan.command,
        code=str(plan.code_dir),
        inputs=inputs,
        outputs={OUTPUT: sdk.Output(type="uri_folder", mode="rw_mount")},
        environment=environment(plan),
        compute=plan.compute,
        resources=resources,
        distribution=distribution,
        environment_variables=plan.environment_variables,
        tags=plan.tags,
    )


def _mode(job_input: Any) -> str:
    return "download" if job_input.type in ("mlflow_model", "custom_model") else "ro_mount"


def _resources(given: dict[str, Any]) -> dict[str, Any]:
    known = {"instance_type", "shm_size", "docker_args", "properties", "locations", "max_instance_count"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UserError(f"resources: unknown key {unknown[0]!r}; Azure ML job resources are {sorted(known)}")
    return given


def environment(plan: JobPlan) -> Any:
    env = plan.environment
    if env.existing:
        return env.existing
    from azure.ai.ml.entities import BuildContext, Environment

    if env.build_context:
        return Environment(
            name=env.name,
            version=env.version,
            build=BuildContext(path=env.build_context, dockerfile_path=env.dockerfile),
        )
    return Environment(name=env.name, version=env.version, image=env.image, conda_file=env.conda_file)


def validate(job: Any) -> None:
    """The SDK's own checks of a job (command, environment, every `${{inputs.X}}` of the command given), and
    its serialisation to the REST form it submits; a failure is a user error."""
    from azure.ai.ml.exceptions import ValidationException

    try:
        job._validate()
        job._to_rest_object()
    except ValidationException as err:
        raise UserError(f"the Azure ML job does not validate: {err.message}") from None


def print_job(plan: JobPlan, folder: Path) -> Path:
    """folder/job.yml beside folder/code (and conda.yaml): what `az ml job create --file` submits."""
    job = command_job(plan)
    validate(job)
    path = folder / "job.yml"
    job.dump(path)
    import yaml

    written = yaml.safe_load(path.read_text())
    written["code"] = Path(plan.code_dir).relative_to(folder).as_posix()  # the folder can move as a whole
    for item in plan.inputs:  # the SDK dumps a local path as `azureml:/path`, which would name an asset
        if item.local:
            written["inputs"][item.name]["path"] = item.path
    path.write_text(yaml.safe_dump(written, sort_keys=False))
    return path


def reset_folder(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"--print-job: {folder} is a file; give a folder")
        for name in ("code", "job.yml", "conda.yaml"):
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
