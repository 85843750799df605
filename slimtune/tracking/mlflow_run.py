"""A slimtune run logged to MLflow: `tracking: {mlflow: {tracking_uri, experiment}}`.

The MLflow run opens before the first pass (so that a LoRA pass with `report_to: mlflow` in its training_args
logs its Trainer into the same run, through MLFLOW_RUN_ID and MLFLOW_TRACKING_URI) and is filled from run.json when the run ends: the
resolved config, each pass's parameters, the training loss curves, every stage's metrics, the goals, the report
files and the final model as artifacts, and the cache keys as tags. Everything logged comes from run.json, which
is already free of secrets.

Without a tracking_uri, MLflow's own default applies: MLFLOW_TRACKING_URI (set by Azure ML inside a job, so the
run shows in the workspace's studio), else a local ./mlruns folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slimtune.errors import UserError

MAX_PARAM = 6000  # MLflow's limit on a parameter's value
ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


class MLflowRun:
    """The run is made through MlflowClient, never made the process's active run: a Trainer's MLflow callback
    then resumes it by MLFLOW_RUN_ID (an active run would make it refuse, or end ours when training ends)."""

    def __init__(self, settings: Any, run_name: str):
        try:
            import mlflow
        except ImportError:
            raise UserError(
                "tracking.mlflow needs the mlflow package: pip install 'slimtune[azureml]'"
            ) from None
        self.saved_env = {k: os.environ.get(k) for k in ENV}
        uri = settings.tracking_uri or mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        try:
            experiment = self.client.get_experiment_by_name(settings.experiment)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment)
            )
            self.run = self.client.create_run(experiment_id, run_name=settings.run_name or run_name)
        except mlflow.exceptions.MlflowException as err:
            raise UserError(f"tracking.mlflow: {uri}: {err.message}") from None
        os.environ.update(
            MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=settings.experiment, MLFLOW_RUN_ID=self.run_id
        )
        print(f"MLflow run {self.run_id} (experiment {settings.experiment}, {uri})")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def finish(self, output_dir: Path, exit_code: int) -> None:
        """Log run.json's content and the files of output_dir, then close the run."""
        try:
            record_path = output_dir / "run.json"
            if record_path.is_file():
                log_record(self.client, self.run_id, json.loads(record_path.read_text()), output_dir)
        finally:
            self.close("FINISHED" if exit_code in (0, 3) else "FAILED")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_record(client: Any, run_id: str, record: dict[str, Any], output_dir: Path) -> None:
    from mlflow.entities import Metric, Param, RunTag

    params, metrics, tags = [], [], []
    for record_pass in record.get("passes") or []:
        name = record_pass["name"]
        params.append(Param(f"{name}.type", record_pass["type"]))
        for key, value in flatten(record_pass.get("params") or {}).items():
            params.append(Param(f"{name}.{key}", str(value)[:MAX_PARAM]))
        pass_metrics = record_pass.get("metrics") or {}
        for point in pass_metrics.get("loss_curve") or []:
            metrics.append(Metric(f"{name}.train_loss", point["loss"], 0, point["step"]))
        for point in pass_metrics.get("eval_curve") or []:
            if point.get("eval_loss") is not None:
                metrics.append(Metric(f"{name}.eval_loss", point["eval_loss"], 0, point["step"]))
        for key, value in pass_metrics.items():
            if _number(value) and key not in ("train_loss", "eval_loss"):
                metrics.append(Metric(f"{name}.{key}", float(value), 0, 0))
        metrics.append(Metric(f"{name}.wall_s", float(record_pass.get("original_wall_s") or 0), 0, 0))
        tags.append(RunTag(f"slimtune.key.{name}", record_pass["key"]))
        tags.append(RunTag(f"slimtune.cache_hit.{name}", str(record_pass.get("cache_hit"))))
    for stage in (record.get("evaluation") or {}).get("stages") or []:
        for key, value in flatten(stage.get("metrics") or {}).items():
            if _number(value):
                metrics.append(Metric(f"{stage['stage']}.{key}", float(value), 0, 0))
    for goal in record.get("goals") or []:
        tags.append(
            RunTag(f"slimtune.goal.{goal.get('stage', 'final')}.{goal.get('metric')}", str(goal.get("met")))
        )
    input_model = record.get("input_model") or {}
    tags += [
        RunTag("slimtune.version", str(record.get("slimtune_version"))),
        RunTag("slimtune.status", str(record.get("status"))),
        RunTag("slimtune.input_model", str(input_model.get("name"))),
        RunTag("slimtune.key.input", str(input_model.get("fingerprint"))),
    ]
    for start in range(0, max(len(params), len(metrics), len(tags)), 100):  # MLflow's batch limits
        client.log_batch(
            run_id,
            metrics=metrics[start : start + 100],
            params=params[start : start + 100],
            tags=tags[start : start + 100],
        )
    client.log_dict(run_id, record.get("config_migrated") or {}, "config/resolved.json")
    client.log_dict(run_id, record.get("config_as_given") or {}, "config/as_given.json")
    for report in sorted(output_dir.iterdir()):
        if report.is_file():  # run.json and the reports (Markdown, HTML)
            client.log_artifact(run_id, str(report), "report")
    final = Path((record.get("final_model") or {}).get("path") or "")
    if final.is_dir():
        client.log_artifacts(run_id, str(final), "model")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            continue  # curves and tables: logged as metrics with steps, or in run.json
        else:
            out[name] = value
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
