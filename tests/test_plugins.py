"""Extension points, shown with a real plugin package: a pass registered through the `slimtune.passes` entry
point (installed into a folder with pip and found by `importlib.metadata`, no mocks), custom metrics
(`evaluate_func`, `metric_func`) and a data config's own pre/post-processing from a `user_script`.

The plugin's source is tests/plugins/slimtune_marker_pass; the user script is tests/plugins/user_scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflows import EMOTION_DATA, REPO, emotion_data_config

from slimtune.cli.main import main
from slimtune.errors import EXIT_USER
from slimtune.passes.registry import get_pass

PLUGIN = REPO / "tests" / "plugins" / "slimtune_marker_pass"
SCRIPT = REPO / "tests" / "plugins" / "user_scripts" / "emotion_custom.py"
ROWS = 16
KEEP = ["joy", "fear"]


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The plugin installed with pip into its own folder (a failed install fails the tests, never skips)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(PLUGIN, source)  # setuptools writes build/ and *.egg-info next to the sources
    site = root / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"installing the test plugin failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    assert (site / "slimtune_marker_pass-0.1.0.dist-info" / "entry_points.txt").is_file()
    return site


def slimtune(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-m", "slimtune", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def plugin_config(model: Path, script: str = "emotion_custom.py") -> dict:
    """The plugin pass alone on the tiny model; rows pre-processed by the script; three metrics on them."""
    data = emotion_data_config(ROWS)
    data["user_script"] = script
    data["pre_process_data_config"].update(type="keep_tones", keep=KEEP)
    data["post_process_data_config"] = {"type": "always", "answer": "joy"}
    custom = {"user_script": script}
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [data],
        "passes": {"mark": {"type": "CopyWithMarker", "text": "from the plugin"}},
        "evaluators": {
            "checks": {
                "metrics": [
                    {"name": "accuracy", "type": "accuracy", "data_config": "emotion"},
                    {
                        "name": "model",
                        "type": "custom",
                        "data_config": "emotion",
                        "sub_types": [
                            {
                                "name": "marked",
                                "higher_is_better": True,
                                "goal": {"type": "threshold", "value": 1},
                            },
                            {"name": "rows", "higher_is_better": True},
                        ],
                        "user_config": {**custom, "evaluate_func": "inspect_model"},
                    },
                    {
                        "name": "answers",
                        "type": "custom",
                        "data_config": "emotion",
                        "sub_types": [
                            {
                                "name": "exact",
                                "higher_is_better": True,
                                "goal": {"type": "max-degradation", "value": 0.0},
                            }
                        ],
                        "user_config": {
                            **custom,
                            "metric_func": "exact_match",
                            "metric_func_kwargs": {"strip": True},
                        },
                    },
                ]
            }
        },
        "evaluator": "checks",
        "cache_dir": "cache",
        "output_dir": "out",
    }


def write(folder: Path, config: dict) -> Path:
    shutil.copy(SCRIPT, folder / "emotion_custom.py")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_passes_lists_the_plugin_with_its_origin(plugin_site, tmp_path):
    proc = slimtune(plugin_site, "passes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        "CopyWithMarker (v1, from slimtune-marker-pass 0.1.0): copy the model and write a marker file"
        in proc.stdout
    )
    assert f"LoRA (v{get_pass('LoRA').version}, from slimtune)" in proc.stdout
    one = slimtune(plugin_site, "passes", "CopyWithMarker", cwd=tmp_path)
    assert "text: default 'marked'. written into MARKER.txt." in one.stdout


def test_plugin_pass_custom_metrics_and_user_data_functions_run(plugin_site, tiny, tmp_path):
    config = write(tmp_path, plugin_config(tiny))
    proc = slimtune(plugin_site, "run", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    script = tmp_path / "emotion_custom.py"
    for where in (
        "data config `emotion`: pre_process_data_config.type = keep_tones",
        "data config `emotion`: post_process_data_config.type = always",
        "metric `model`: user_config.evaluate_func = inspect_model",
        "metric `answers`: user_config.metric_func = exact_match",
    ):
        assert f"running user code from {script} ({where})" in proc.stdout

    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (tmp_path / "out" / "model" / "MARKER.txt").read_text() == "from the plugin\n"
    tones = [json.loads(line)["tone"] for line in EMOTION_DATA.read_text().splitlines()[:ROWS]]
    kept = [t for t in tones if t in KEEP]
    joy_share = kept.count("joy") / len(kept)
    stages = {s["stage"]: s["metrics"] for s in record["evaluation"]["stages"]}
    assert set(stages) == {"input", "mark"}
    for name, metrics in stages.items():
        assert metrics["n"] == len(kept)  # the pre-process function chose the rows
        assert metrics["accuracy"] == pytest.approx(joy_share)  # every answer post-processed to "joy"
        assert metrics["custom"]["answers"] == {"exact": pytest.approx(joy_share)}
        assert metrics["custom"]["model"] == {"rows": len(kept), "marked": float(name == "mark"), "hf": 1.0}
    goals = {g["metric"]: g for g in record["goals"]}
    assert goals["model-marked"]["met"] and goals["model-marked"]["actual"] == 1.0
    assert goals["answers-exact"]["met"] and goals["answers-exact"]["baseline"] == pytest.approx(joy_share)

    again = slimtune(plugin_site, "run", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert all(s["metrics"].get("cached") for s in record["evaluation"]["stages"])


def test_a_missed_goal_on_a_custom_metric_fails_the_run(plugin_site, tiny, tmp_path):
    config = plugin_config(tiny)
    metric = config["evaluators"]["checks"]["metrics"][1]
    metric["user_config"]["evaluate_func_kwargs"] = {"marker": "OTHER.txt"}  # not written: the goal is missed
    config["evaluators"]["checks"]["metrics"] = [metric]
    proc = slimtune(plugin_site, "run", "--config", str(write(tmp_path, config)), cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model-marked: 0 (>= 1): MISSED by 1" in proc.stdout


def test_a_metric_of_an_installed_package_runs_from_a_config(plugin_site, tiny, tmp_path):
    """No user_script: the function is the metric an installed package registers (`slimtune.metrics`), and a
    goal holds on it like on any metric; an unknown name is a config error listing the installed ones."""
    config = plugin_config(tiny)
    installed = {
        "name": "installed",
        "type": "custom",
        "data_config": "emotion",
        "sub_types": [
            {"name": "marked", "higher_is_better": True, "goal": {"type": "threshold", "value": 1}}
        ],
        "user_config": {"evaluate_func": "marker_present"},
    }
    config["evaluators"]["checks"]["metrics"] = [installed]
    proc = slimtune(plugin_site, "run", "--config", str(write(tmp_path, config)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "running metric 'marker_present' of the installed package slimtune-marker-pass 0.1.0" in proc.stdout
    )
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    stages = {s["stage"]: s["metrics"]["custom"]["installed"] for s in record["evaluation"]["stages"]}
    assert stages == {"input": {"marked": 0.0}, "mark": {"marked": 1.0}}
    assert record["goals"][0]["metric"] == "installed-marked" and record["goals"][0]["met"]

    installed["user_config"]["evaluate_func"] = "marker_presnt"
    bad = slimtune(plugin_site, "validate", "--config-only", str(write(tmp_path, config)), cwd=tmp_path)
    assert bad.returncode == 2
    assert "no installed package registers a metric 'marker_presnt'" in bad.stderr
    assert "(installed: marker_present)" in bad.stderr


# ---------------------------------------------------------------- errors named by config key (no model loaded)


def test_missing_user_script_is_a_config_error(plugin_site, tiny, tmp_path):
    config = plugin_config(tiny, script="scripts/nope.py")
    proc = slimtune(plugin_site, "run", "--config", str(write(tmp_path, config)), cwd=tmp_path)
    assert proc.returncode == EXIT_USER, proc.stderr
    assert "data_configs[0].user_script (line " in proc.stderr
    assert f"{tmp_path / 'scripts' / 'nope.py'} does not exist; give the path of a .py file" in proc.stderr
    assert "evaluators.checks.metrics[1].user_config.user_script" in proc.stderr
    assert "running user code" not in proc.stdout


@pytest.mark.parametrize(
    "where, key, value",
    [
        ("data", "pre_process_data_config.type", "keep_tone"),
        ("data", "post_process_data_config.type", "never"),
        ("metric", "user_config.evaluate_func", "inspect"),
        ("metric", "user_config.metric_func", "f1"),
    ],
)
def test_function_not_in_the_script(tmp_path, capsys, tiny, where, key, value):
    config = plugin_config(tiny)
    config["passes"] = {"build": {"type": "ModelBuilder"}}  # a built-in pass: this process has no plugin
    section, field = key.rsplit(".", 1)
    if where == "data":
        holder, prefix = config["data_configs"][0], "data_configs[0]"
    else:
        metric = 1 if field == "evaluate_func" else 2
        holder, prefix = (
            config["evaluators"]["checks"]["metrics"][metric],
            f"evaluators.checks.metrics[{metric}]",
        )
    holder[section][field] = value
    assert main(["validate", str(write(tmp_path, config))]) == EXIT_USER
    err = capsys.readouterr().err
    assert f"{prefix}.{key} (line " in err
    assert f"{value!r} is not defined in {tmp_path / 'emotion_custom.py'}; it defines:" in err
    assert "always, exact_match, inspect_model, keep_tones" in err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sub_types": [{"name": "x"}]}, "custom sub_types need higher_is_better (true or false): x"),
        ({"sub_types": []}, "a custom metric needs sub_types"),
        ({"user_config": {"user_script": "s.py"}}, "give exactly one of evaluate_func"),
        (
            {"user_config": {"user_script": "s.py", "evaluate_func": "f", "evaluat_func_kwargs": {}}},
            "evaluat_func_kwargs",
        ),
    ],
)
def test_custom_metric_config_errors(tmp_path, capsys, tiny, change, message):
    config = plugin_config(tiny)
    config["passes"] = {"build": {"type": "ModelBuilder"}}
    config["evaluators"]["checks"]["metrics"][1].update(change)
    assert main(["validate", str(write(tmp_path, config))]) == EXIT_USER
    assert message in capsys.readouterr().err


def test_function_values_must_cover_the_sub_types():
    from slimtune.errors import UserError
    from slimtune.evaluate.custom import sub_values

    assert sub_values(0.5, ["a"], "w") == {"a": 0.5}
    with pytest.raises(UserError, match="returned no value for sub_type"):
        sub_values({"a": 1}, ["a", "b"], "w")
    with pytest.raises(UserError, match="returned one value but the metric has sub_types a, b"):
        sub_values(1.0, ["a", "b"], "w")
    with pytest.raises(UserError, match="must be a finite number"):
        sub_values({"a": "high"}, ["a"], "w")


def test_user_code_errors_name_the_key(tmp_path, capsys):
    from slimtune.errors import UserError
    from slimtune.user_code import call, load_function

    script = tmp_path / "broken.py"
    script.write_text("def boom(x):\n    raise ValueError('bad ' + x)\n")
    boom = load_function(str(script), "boom", "metric `m`: user_config.evaluate_func = boom")
    assert f"running user code from {script} (metric `m`" in capsys.readouterr().out
    with pytest.raises(
        UserError, match=r"metric `m`: user_config.evaluate_func = boom: boom raised ValueError: bad x"
    ):
        call(boom, "metric `m`: user_config.evaluate_func = boom", "x")
    with pytest.raises(UserError, match="defines no function 'missing'; its functions: boom"):
        load_function(str(script), "missing", "somewhere")
