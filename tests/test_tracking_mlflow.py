"""A run tracked to a real `mlflow server` on loopback, started here: parameters, the loss curve (slimtune's and
the Trainer's own, by `report_to: mlflow`), every stage's metrics, the cache keys, the report and the model; then
`slimtune runs compare` between the MLflow run and a run folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow  # the test extra (`make test`)
import pytest
import yaml
from workflows import emotion_data_config

from slimtune.cli.main import main


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store; a server that does not come up fails the test."""
    folder = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below)
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--backend-store-uri", f"sqlite:///{folder}/db.sqlite", "--artifacts-destination"]
    command += [str(folder / "artifacts"), "--workers", "1"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = (
            time.time() + 240
        )  # its first start creates the database: a minute on a busy 2-core machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # workers that outlived the server
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_a_tracked_run_shows_its_stages_and_metrics_in_mlflow(
    mlflow_server, tiny, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {
        "workflow_id": "tracked",
        "input_model": {"type": "HfModel", "model_path": str(tiny)},
        "data_configs": [emotion_data_config(40)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                "training_args": {
                    "max_steps": 3,
                    "per_device_train_batch_size": 4,
                    "logging_steps": 1,
                    "report_to": "mlflow",
                },
            },
            "merge": {"type": "MergeAdapterWeights"},
        },
        "evaluators": {
            "e": {
                "metrics": [
                    {
                        "name": "accuracy",
                        "type": "accuracy",
                        "data_config": "emotion",
                        "sub_types": [{"name": "accuracy_score"}],
                    }
                ]
            }
        },
        "evaluator": "e",
        "tracking": {"mlflow": {"tracking_uri": mlflow_server, "experiment": "slimtune-test"}},
        "cache_dir": "cache",
        "output_dir": "out",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path)]) in (0, 3)  # 3: the default quality gate, a result here
    assert "MLFLOW_RUN_ID" not in os.environ  # given back after the run
    record = json.loads((tmp_path / "out" / "run.json").read_text())

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("slimtune-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    data = run.data
    assert data.params["lora.type"] == "LoRA" and data.params["lora.r"] == "4"
    assert data.params["lora.training_args.max_steps"] == "3"
    curve = client.get_metric_history(run.info.run_id, "lora.train_loss")
    assert [m.step for m in curve] == [1, 2, 3]
    assert "learning_rate" in data.metrics  # logged by the Trainer itself (report_to: mlflow), into this run
    for stage in record["evaluation"]["stages"]:
        assert data.metrics[f"{stage['stage']}.accuracy"] == pytest.approx(stage["metrics"]["accuracy"])
    keys = {p["name"]: p["key"] for p in record["passes"]}
    assert data.tags["slimtune.key.lora"] == keys["lora"] and data.tags["slimtune.key.merge"] == keys["merge"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/config.json" in artifacts
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/run.json" in reports and any(p.endswith(".md") for p in reports)
    resolved = json.loads(
        Path(client.download_artifacts(run.info.run_id, "config/resolved.json")).read_text()
    )
    assert resolved["passes"]["lora"]["r"] == 4

    capsys.readouterr()
    args = ["runs", "compare", run.info.run_id, str(tmp_path / "out"), "--tracking-uri", mlflow_server]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "lora train_loss" in table and "merge accuracy" in table
    assert [line.split()[-1] for line in table.splitlines() if "same key" in line] == ["yes", "yes"]
