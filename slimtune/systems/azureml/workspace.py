"""The workspace a job goes to, and the three things that must hold before anything is uploaded: credentials,
the workspace, the compute. Each failure names what was tried and how to fix it (exit code 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slimtune.errors import UserError

ARM_SCOPE = "https://management.azure.com/.default"
ENV_IDS = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
LOGIN_HINT = (
    "sign in with `az login` (Azure CLI), or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
    "(a service principal), or run where a managed identity is assigned"
)


def workspace_ids(client: Any) -> tuple[str, str, str]:
    """(subscription, resource group, workspace) from, in order: the azureml_client of the config (its fields,
    or its aml_config_path), the AZURE_SUBSCRIPTION_ID / AZURE_RESOURCE_GROUP / AZUREML_WORKSPACE_NAME variables,
    a config.json (or .azureml/config.json) in the current folder, as Azure ML's studio downloads it."""
    tried = []
    found: dict[str, str | None] = {"subscription_id": None, "resource_group": None, "workspace_name": None}
    if client is not None:
        if client.aml_config_path:
            found.update(_config_json(Path(client.aml_config_path)))
            tried.append(f"azureml_client.aml_config_path ({client.aml_config_path})")
        for key in found:
            found[key] = getattr(client, key) or found[key]
        tried.append("azureml_client in the config")
    env = dict(zip(found, ENV_IDS, strict=True))
    for key, var in env.items():
        found[key] = found[key] or os.environ.get(var)
    tried.append(" / ".join(ENV_IDS))
    for candidate in (Path("config.json"), Path(".azureml/config.json")):
        if not all(found.values()) and candidate.is_file():
            ids = _config_json(candidate, quiet=True)
            for key in found:
                found[key] = found[key] or ids.get(key)
    tried.append("config.json or .azureml/config.json in the current folder")
    missing = [k for k, v in found.items() if not v]
    if missing:
        raise UserError(
            f"the Azure ML workspace is not named: {', '.join(missing)} missing. Tried: {'; '.join(tried)}. "
            "Give azureml_client: {subscription_id, resource_group, workspace_name} (or aml_config_path: the "
            "workspace's config.json from the studio) in the config, or set the variables."
        )
    return found["subscription_id"], found["resource_group"], found["workspace_name"]  # type: ignore[return-value]


def _config_json(path: Path, quiet: bool = False) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        if quiet:
            return {}
        raise UserError(f"azureml_client.aml_config_path: cannot read {path}: {err}") from None
    return {k: data[k] for k in ("subscription_id", "resource_group", "workspace_name") if data.get(k)}


def credential() -> Any:
    """Azure's default chain: environment variables, workload and managed identity, the Azure CLI's login ..."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def quiet_azure_logs() -> None:
    """The Azure SDK logs every HTTP request at INFO; slimtune's own lines say what happens."""
    import logging

    if logging.getLogger().level > logging.DEBUG:  # --debug shows them
        names = [n for n in logging.root.manager.loggerDict if n.startswith("azure.")]
        for name in ["azure", *names]:  # some set their own level: each is quieted
            logging.getLogger(name).setLevel(logging.ERROR + 1)  # their failures are ours to say


def check_credential(cred: Any) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    try:
        cred.get_token(ARM_SCOPE)
    except ClientAuthenticationError as err:
        tried = []
        for line in str(err).splitlines():
            if line.startswith("\t") and ":" in line:
                name, reason = line.strip().split(":", 1)
                tried.append(f"{name} ({reason.strip().removeprefix(name).strip(' .').split('.')[0]})")
        raise UserError(
            "no Azure credentials: "
            + (f"tried {'; '.join(tried)}. " if tried else f"{err.message}. ")
            + f"To fix: {LOGIN_HINT}."
        ) from None


def connect(client: Any, compute: str | None = None) -> Any:
    """An MLClient on the workspace, after the credentials, the workspace and the compute were checked."""
    from azure.ai.ml import MLClient
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    subscription, group, workspace = workspace_ids(client)
    quiet_azure_logs()
    cred = credential()
    check_credential(cred)
    ml = MLClient(cred, subscription, group, workspace)
    quiet_azure_logs()  # the loggers the client made
    try:
        ml.workspaces.get(workspace)
    except ResourceNotFoundError:
        raise UserError(
            f"Azure ML workspace {workspace!r} not found in resource group {group!r} of subscription "
            f"{subscription}; check azureml_client (the studio's workspace page shows the three names)"
        ) from None
    except HttpResponseError as err:
        raise UserError(
            f"Azure ML workspace {workspace!r}: {err.status_code} {err.reason}; check that your account may "
            f"read it ({LOGIN_HINT})"
        ) from None
    if compute:
        check_compute(ml, compute)
    return ml


def check_compute(ml: Any, compute: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        ml.compute.get(compute)
    except ResourceNotFoundError:
        names = sorted(c.name for c in ml.compute.list())
        listed = ", ".join(names) if names else "none: create a compute cluster in the studio first"
        raise UserError(
            f"aml_compute: compute {compute!r} not found in workspace {ml.workspace_name}; its computes: {listed}"
        ) from None
