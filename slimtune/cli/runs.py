"""`slimtune runs compare A B`: two runs side by side, each a run folder (its run.json) or an MLflow run id."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("runs", help="compare two runs (run folders or MLflow run ids)")
    p.add_argument("action", choices=["compare"])
    p.add_argument("a", help="a run folder (holding run.json) or an MLflow run id")
    p.add_argument("b", help="a run folder (holding run.json) or an MLflow run id")
    p.add_argument("--tracking-uri", help="MLflow server of run ids (default: MLFLOW_TRACKING_URI)")
    p.set_defaults(func=_runs)


def _runs(args) -> int:
    from slimtune.report.compare import compare_runs

    a, b = _record(args.a, args.tracking_uri), _record(args.b, args.tracking_uri)
    print(compare_runs(a, b, (args.a, args.b)))
    return 0


def _record(ref: str, tracking_uri: str | None) -> dict:
    import json
    from pathlib import Path

    from slimtune.errors import UserError

    path = Path(ref)
    if path.is_dir():
        path = path / "run.json"
    if path.is_file():
        return json.loads(path.read_text())
    if path.parent != Path(".") or "/" in ref:
        raise UserError(f"runs compare: {ref} holds no run.json (a run's output_dir has one)")
    try:
        import mlflow
    except ImportError:
        raise UserError(f"runs compare: {ref} is no run folder, and MLflow run ids need mlflow") from None
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(ref)
        local = client.download_artifacts(ref, "report/run.json")
    except mlflow.exceptions.MlflowException as err:
        raise UserError(
            f"runs compare: {ref} is no run folder, nor an MLflow run with run.json: {err.message}"
        ) from None
    return json.loads(Path(local).read_text())
