"""Experiment tracking of a run (MLflow): `tracking: {mlflow: {...}}` in the config."""

from __future__ import annotations

from typing import Any


def start_tracking(loaded: Any) -> Any:
    """The open MLflow run of this workflow, or None when the config asks for no tracking."""
    tracking = loaded.config.tracking
    if tracking is None or tracking.mlflow is None:
        return None
    from slimtune.tracking.mlflow_run import MLflowRun

    name = loaded.config.workflow_id or (loaded.file.stem if loaded.file else "slimtune")
    return MLflowRun(tracking.mlflow, name)
