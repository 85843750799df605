"""Olive metrics and goals over evaluation results; a run that misses a goal exits 3."""

from __future__ import annotations

import json

import pytest
import yaml

from slimtune.config.schema import Goal, Metric, SubMetric
from slimtune.errors import UserError
from slimtune.evaluate.goals import check_goal, describe_goal, metric_refs, pareto_front, rank_key, read

RESULT = {"accuracy": 0.90, "latency": {"e2e_ms": {"avg": 40.0, "p90": 50.0}}, "size_bytes": 9e7}


def ref_for(kind: str, sub: str, goal: dict | None = None, priority: int = -1):
    metric = Metric(
        name=kind,
        type=kind,
        sub_types=[SubMetric(name=sub, priority=priority, goal=Goal(**goal) if goal else None)],
    )
    return metric_refs([metric])[0]


def test_olive_spellings_map_to_result_fields():
    assert read(RESULT, ref_for("accuracy", "accuracy_score").path) == 0.90
    assert read(RESULT, ref_for("latency", "p90").path) == 50.0
    assert ref_for("latency", "avg").higher_is_better is False
    assert ref_for("accuracy", "accuracy_score").key == "accuracy-accuracy_score"


def test_unknown_sub_type_names_the_valid_ones():
    with pytest.raises(UserError, match="p90"):
        ref_for("latency", "p95")


@pytest.mark.parametrize(
    ("goal", "actual", "baseline", "met", "margin"),
    [
        ({"type": "threshold", "value": 0.85}, 0.90, None, True, 0.05),
        ({"type": "threshold", "value": 0.95}, 0.90, None, False, -0.05),
        ({"type": "max-degradation", "value": 0.01}, 0.90, 0.905, True, 0.005),
        ({"type": "max-degradation", "value": 0.01}, 0.85, 0.90, False, -0.04),
        ({"type": "min-improvement", "value": 0.10}, 0.90, 0.70, True, 0.10),
        ({"type": "percent-max-degradation", "value": 5}, 0.90, 0.93, True, 5 - 100 * 0.03 / 0.93),
        ({"type": "percent-min-improvement", "value": 10}, 0.90, 0.85, False, 100 * 0.05 / 0.85 - 10),
    ],
)
def test_accuracy_goals(goal, actual, baseline, met, margin):
    result = check_goal(ref_for("accuracy", "accuracy_score", goal), actual, baseline)
    assert result["met"] is met
    assert result["margin"] == pytest.approx(margin)
    assert ("met" if met else "MISSED") in describe_goal(result)


def test_latency_goals_are_lower_is_better():
    ref = ref_for("latency", "avg", {"type": "max-degradation", "value": 5})
    assert check_goal(ref, 44.0, 40.0)["met"] is True
    assert check_goal(ref, 46.0, 40.0)["met"] is False
    assert check_goal(ref, 46.0, None)["met"] is False  # no baseline measured: not met, and said so


def test_priority_ranking_and_pareto_front():
    refs = [ref_for("accuracy", "accuracy_score", priority=1), ref_for("latency", "avg", priority=2)]
    a = {"accuracy": 0.9, "latency": {"e2e_ms": {"avg": 50}}}
    b = {"accuracy": 0.9, "latency": {"e2e_ms": {"avg": 40}}}
    c = {"accuracy": 0.8, "latency": {"e2e_ms": {"avg": 10}}}
    assert sorted([a, b, c], key=lambda r: rank_key(refs, r)) == [b, a, c]
    points = [{"acc": 0.9, "lat": 50}, {"acc": 0.9, "lat": 40}, {"acc": 0.8, "lat": 10}]
    assert pareto_front(points, {"acc": True, "lat": False}) == [1, 2]


def test_run_missing_a_goal_exits_3(tmp_path, capsys):
    from test_engine import write_config
    from tiny_models import make_tiny_model

    from slimtune.cli.main import main

    model = make_tiny_model("llama", tmp_path / "tiny")
    config = write_config(tmp_path, model, max_steps=2)
    data = yaml.safe_load(config.read_text())
    data["evaluators"] = {
        "gate": {
            "metrics": [
                {
                    "name": "accuracy",
                    "type": "accuracy",
                    "data_config": "emotion",
                    "sub_types": [{"name": "accuracy_score", "goal": {"type": "threshold", "value": 0.99}}],
                },
                {"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}, {"name": "p90"}]},
            ]
        }
    }
    data["evaluator"] = "gate"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", "--config", str(config)]) == 3
    out = capsys.readouterr().out
    assert "accuracy-accuracy_score" in out and "MISSED by" in out
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "goals_not_met" and record["goals_met"] is False
    stages = [s["stage"] for s in record["evaluation"]["stages"]]
    assert stages == ["input", "lora", "merge", "builder"]  # every stage, same rows
    assert {s["metrics"]["n"] for s in record["evaluation"]["stages"]} == {
        record["evaluation"]["data"]["rows"]
    }
    for name in ("report.md", "report.html"):
        assert (tmp_path / "out" / name).is_file()


def test_required_metrics_follow_the_sub_types():
    from slimtune.evaluate.goals import required_metrics

    accuracy = Metric(name="a", type="accuracy", sub_types=[SubMetric(name="accuracy_score")])
    ranked = Metric(name="b", type="accuracy", sub_types=[SubMetric(name="likelihood_accuracy")])
    latency = Metric(name="c", type="throughput")
    assert required_metrics([accuracy]) == ["accuracy"]
    assert required_metrics([ranked, latency]) == ["accuracy", "latency", "likelihood"]


def test_default_goal_holds_the_final_model_to_the_best_earlier_stage():
    from slimtune.engine.evaluation import default_goals

    def stage(name, accuracy):
        return {"stage": name, "metrics": {"accuracy": accuracy}}

    lost = default_goals(
        [stage("input", 0.0), stage("lora", 0.85), stage("merge", 0.86), stage("builder", 0.425)]
    )
    assert len(lost) == 1 and lost[0]["default"] is True and lost[0]["met"] is False
    assert lost[0]["baseline_stage"] == "merge" and lost[0]["margin"] == pytest.approx(0.02 - 0.435)
    kept = default_goals([stage("input", 0.0), stage("lora", 0.85), stage("builder", 0.84)])
    assert kept[0]["met"] is True
    assert default_goals([stage("input", 0.3), stage("builder", 0.1)]) == []  # nothing fine-tuned to hold to
    assert default_goals([stage("lora", 0.8), {"stage": "builder", "metrics": {}}])[0]["met"] is False


def test_an_int4_stage_that_loses_points_fails_the_run_with_the_numbers_and_the_fix(tmp_path, capsys):
    """No evaluator in the config: the default goal trips when the int4 model scores far below the merged one
    (the scores are planted in the evaluation cache: a tiny random model scores 0 everywhere), the run exits 3
    naming the loss and the fixes, the merged model is published on request, and the reports say so."""
    from test_engine import write_config
    from tiny_models import make_tiny_model

    from slimtune.cli.main import main

    model = make_tiny_model("llama", tmp_path / "tiny")
    config = write_config(tmp_path, model, max_steps=1)
    assert main(["run", "--config", str(config)]) == 0  # every stage 0%: nothing lost
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["goals"][0]["default"] is True and record["goals_met"] is True
    paths = {s["stage"]: s["path"] for s in record["evaluation"]["stages"]}
    for cached in (tmp_path / "cache" / "evals").glob("*.json"):
        result = json.loads(cached.read_text())
        planted = {paths["merge"]: 0.90, paths["builder"]: 0.45, paths["lora"]: 0.88}.get(result["model"])
        if planted is not None:
            cached.write_text(json.dumps({**result, "accuracy": planted}))
    data = yaml.safe_load(config.read_text())
    data["publish"] = ["merge"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 3
    out = capsys.readouterr().out
    assert "The final model (builder) scores 45.0%, 45.0 points below merge (90.0%)" in out
    assert "quantization_aware" in out and "exit code 3" in out
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    goal = record["goals"][0]
    assert goal["default"] and not goal["met"] and goal["baseline_stage"] == "merge"
    assert record["status"] == "goals_not_met" and record["goals_met"] is False
    merge = next(s for s in record["stages"] if s["name"] == "merge")
    assert (tmp_path / "out" / "stages" / "merge" / "config.json").is_file() and merge["published"]
    assert [s["name"] for s in record["stages"]] == ["input", "lora", "merge", "builder"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "MISSED" in report and "default goal" in report and "All goals met" not in report


def test_a_run_without_goals_never_reports_goals_met(tmp_path):
    from tiny_models import make_tiny_model

    from slimtune.cli.main import main

    model = make_tiny_model("llama", tmp_path / "tiny")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input_model": {"type": "HfModel", "model_path": str(model)},
                "passes": {"builder": {"type": "ModelBuilder", "precision": "int4"}},
                "cache_dir": "cache",
                "output_dir": "out",
            }
        )
    )
    assert main(["run", "--config", str(config)]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["goals"] == [] and record["goals_met"] is None and record["status"] == "ok"
    report = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "No goals were set." in report and "goals met" not in report.lower()
    assert "all goals met" not in html.lower() and "No goals were set" in html
