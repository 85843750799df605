"""Search over pass options: config forms, samplers, and whole searches on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from workflows import emotion_data_config

from slimtune.cli.main import main
from slimtune.config.load import load_config_dict
from slimtune.errors import ConfigError
from slimtune.search.samplers import ExhaustiveSampler, RandomSampler, TPESampler, candidate_key
from slimtune.search.space import Categorical, PassSpace, Range, split_search_values

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "emotion" / "data.jsonl"


def config(passes: dict, search=None, **extra) -> dict:
    cfg = {
        "input_model": {"model_path": "smollm2-135m-instruct"},
        "data_configs": [emotion_data_config(80)],
        "passes": passes,
        **extra,
    }
    if search is not None:
        cfg["search_strategy"] = search
    return cfg


LORA = {
    "type": "LoRA",
    "r": 4,
    "alpha": 8,
    "train_data_config": "emotion",
    "eval_dataset_size": 0.2,
    "training_args": {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 2},
}


def problems(cfg: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config_dict(cfg, base_dir=REPO)
    return str(err.value)


# ---------------------------------------------------------------- config forms


def test_every_search_form_becomes_a_space():
    builder = {
        "type": "ModelBuilder",
        "int4_block_size": {"search": [32, 128, 32]},  # repeated values count once
        "int4_accuracy_level": "SEARCHABLE_VALUES",  # the pass's own values: [1, 4]
        "int4_is_symmetric": {"olive_parameter_type": "SearchParameter", "type": "Boolean"},
        "int4_algo_config": {
            "olive_parameter_type": "SearchParameter",
            "type": "Categorical",
            "support": ["rtn"],
        },
    }
    loaded = load_config_dict(config({"builder": builder}, {"sampler": "exhaustive"}), base_dir=REPO)
    (plan,) = loaded.passes
    dims = plan.space.alternatives[0].dims
    assert dims["int4_block_size"] == Categorical((32, 128))
    assert dims["int4_accuracy_level"] == Categorical((1, 4))
    assert dims["int4_is_symmetric"] == Categorical((True, False))
    assert dims["int4_algo_config"] == Categorical(("rtn",))
    assert len(plan.space.points()) == 2 * 2 * 2 * 1
    assert plan.params.int4_block_size == 32  # the plan's params sit at the first point


def test_a_pass_given_as_a_list_is_alternatives():
    alternatives = [
        {"type": "ModelBuilder", "precision": "int4", "int4_block_size": {"search": [32, 128]}},
        {"type": "ModelBuilder", "precision": "int8"},
    ]
    loaded = load_config_dict(config({"builder": alternatives}, {"sampler": "exhaustive"}), base_dir=REPO)
    points = loaded.passes[0].space.points()
    assert [p.alternative for p in points] == [0, 0, 1]
    last = loaded.passes[0].at(points[-1], REPO)
    assert last.params.precision == "int8" and last.params.int4_block_size is None


def test_ranges_parse_and_enumerate():
    fixed, dims, issues = split_search_values(
        {
            "r": {"search": {"low": 4, "high": 16, "step": 4}},
            "lr": {"search": {"low": 1e-4, "high": 1e-2, "log": True}},
            "alpha": 8,
        },
        {},
        searching=True,
    )
    assert not issues and fixed == {"alpha": 8}
    assert dims["r"].grid() == [4, 8, 12, 16] and dims["r"].integer
    assert dims["lr"].grid() is None  # continuous


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"search": []}, "empty list"),
        ({"search": {"low": 5, "high": 1}}, "`low` (5) is above `high` (1)"),
        ({"search": {"low": 0, "high": 1, "log": True}}, "log range needs `low` > 0"),
        ({"search": {"low": 1, "high": 4, "stpe": 1}}, "unknown key(s) stpe"),
        ({"search": "32"}, "a list of values or a range"),
        ({"olive_parameter_type": "SearchParameter", "type": "Conditional"}, "not supported"),
    ],
)
def test_malformed_search_values_are_named(value, message):
    text = problems(
        config(
            {"builder": {"type": "ModelBuilder", "int4_block_size": value}},
            {"sampler": "random", "max_iter": 2},
        )
    )
    assert "passes.builder.int4_block_size" in text and message in text


def test_each_search_value_is_validated_before_anything_runs():
    text = problems(
        config(
            {"builder": {"type": "ModelBuilder", "int4_block_size": {"search": [32, 48]}}},
            {"sampler": "exhaustive"},
        )
    )
    assert "passes.builder.int4_block_size" in text and "search value 48" in text


def test_search_values_without_a_search_strategy_are_an_error():
    text = problems(config({"builder": {"type": "ModelBuilder", "int4_block_size": {"search": [32, 128]}}}))
    assert "passes.builder" in text and "search_strategy` is off" in text


def test_searchable_values_without_a_search_keep_the_default():
    loaded = load_config_dict(
        config({"builder": {"type": "ModelBuilder", "int4_block_size": "SEARCHABLE_VALUES"}}), base_dir=REPO
    )
    assert not loaded.passes[0].searched and loaded.passes[0].params.int4_block_size is None


def test_searchable_values_need_defaults():
    text = problems(
        config(
            {"merge": {"type": "ModelBuilder", "exclude_embeds": "SEARCHABLE_VALUES"}},
            {"sampler": "exhaustive"},
        )
    )
    assert "passes.merge.exclude_embeds" in text and "no default search values" in text


def test_exhaustive_over_a_continuous_range_is_refused():
    lora = {**LORA, "lora_dropout": {"search": {"low": 0.0, "high": 0.2}}}
    text = problems(config({"lora": lora}, {"sampler": "exhaustive"}))
    assert "search_strategy.sampler" in text and "give the range a `step`" in text
    text = problems(config({"lora": lora}, {"sampler": "tpe"}))
    assert "set `max_iter` or `max_time`" in text


def test_disable_search_keeps_first_values():
    builder = {"type": "ModelBuilder", "int4_block_size": {"search": [128, 32]}, "disable_search": True}
    loaded = load_config_dict(config({"builder": builder}, {"sampler": "exhaustive"}), base_dir=REPO)
    assert not loaded.passes[0].searched and loaded.passes[0].params.int4_block_size == 128


def test_old_schema_search_strategy_names_map():
    cfg = config({"builder": {"type": "ModelBuilder", "int4_block_size": {"search": [32, 128]}}})
    cfg["engine"] = {
        "search_strategy": {"execution_order": "pass-by-pass", "search_algorithm": "tpe", "max_iter": 3}
    }
    loaded = load_config_dict(cfg, base_dir=REPO)
    strategy = loaded.config.search_strategy
    assert (strategy.execution_order, strategy.sampler, strategy.max_iter) == ("pass-by-pass", "tpe", 3)


# ---------------------------------------------------------------- samplers


def spaces():
    return {
        "lora": PassSpace(split_alternatives({"r": Categorical((4, 8, 16))})),
        "builder": PassSpace(split_alternatives({"block": Categorical((32, 128)), "scale": Range(0.0, 1.0)})),
    }


def split_alternatives(dims):
    from slimtune.search.space import Alternative

    return [Alternative("X", {}, dims)]


def drain(sampler, objective=lambda c: 0.0, limit=50):
    out = []
    while len(out) < limit:
        candidate = sampler.suggest()
        if candidate is None:
            break
        out.append(candidate)
        sampler.tell(candidate, objective(candidate))
    return out


def finite():
    return {
        "lora": PassSpace(split_alternatives({"r": Categorical((4, 8, 16))})),
        "builder": PassSpace(split_alternatives({"block": Categorical((32, 128))})),
    }


def test_exhaustive_tries_every_candidate_in_config_order():
    tried = drain(ExhaustiveSampler(finite(), 0))
    assert len(tried) == 6 and len({candidate_key(c) for c in tried}) == 6
    assert dict(tried[0]["lora"].values) == {"r": 4} and dict(tried[0]["builder"].values) == {"block": 32}
    assert dict(tried[1]["builder"].values) == {"block": 128}


def test_random_is_seeded_and_never_repeats():
    first = [candidate_key(c) for c in drain(RandomSampler(finite(), 7))]
    again = [candidate_key(c) for c in drain(RandomSampler(finite(), 7))]
    other = [candidate_key(c) for c in drain(RandomSampler(finite(), 8))]
    assert first == again and len(set(first)) == 6
    assert first != other
    continuous = drain(RandomSampler(spaces(), 1), limit=10)
    scales = [dict(c["builder"].values)["scale"] for c in continuous]
    assert len(set(scales)) == 10 and all(0.0 <= s <= 1.0 for s in scales)


def test_tpe_is_reproducible_with_a_seed_and_learns():
    def objective(candidate):  # best near scale 0.8 with r 16
        values = {**dict(candidate["lora"].values), **dict(candidate["builder"].values)}
        return (values["scale"] - 0.8) ** 2 + (0 if values["r"] == 16 else 0.5)

    first = drain(TPESampler(spaces(), 3), objective, limit=24)
    again = drain(TPESampler(spaces(), 3), objective, limit=24)
    assert [candidate_key(c) for c in first] == [candidate_key(c) for c in again]
    other = drain(TPESampler(spaces(), 4), objective, limit=24)
    assert [candidate_key(c) for c in first] != [candidate_key(c) for c in other]
    # after its random start-up, TPE's suggestions are better on average than its first ones
    scores = [objective(c) for c in first]
    assert sum(scores[-8:]) / 8 < sum(scores[:4]) / 4


def test_tpe_stops_when_a_finite_space_is_exhausted():
    tried = drain(TPESampler(finite(), 0), limit=50)
    assert len(tried) == 6 and len({candidate_key(c) for c in tried}) == 6


# ---------------------------------------------------------------- whole searches on a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def write(folder: Path, cfg: dict, model: Path) -> Path:
    cfg["input_model"] = {"model_path": str(model)}
    cfg.setdefault("cache_dir", "cache")
    cfg.setdefault("output_dir", "out")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_json(path: Path) -> dict:
    return json.loads((path.parent / "out" / "run.json").read_text())


def test_builder_search_after_one_lora_trains_once_and_keeps_the_best(tiny, tmp_path, monkeypatch):
    import slimtune.passes.lora.run as lora_run

    calls = []
    real = lora_run.run
    monkeypatch.setattr(lora_run, "run", lambda ctx, params: calls.append(1) or real(ctx, params))
    builder = {
        "type": "ModelBuilder",
        "int4_block_size": {"search": [32, 128]},
        "int4_accuracy_level": {"search": [1, 4]},
    }
    path = write(
        tmp_path,
        config(
            {"lora": LORA, "merge": {"type": "MergeAdapterWeights"}, "builder": builder},
            {"sampler": "exhaustive"},
        ),
        tiny,
    )
    assert main(["run", "--config", str(path)]) == 0
    assert len(calls) == 1  # LoRA trained once for four candidates
    record = run_json(path)
    candidates = record["candidates"]
    assert [c["params"]["builder"] for c in candidates] == [
        {"int4_accuracy_level": a, "int4_block_size": b} for b in (32, 128) for a in (1, 4)
    ]
    lora_runs = [p["cache_hit"] for c in candidates for p in c["passes"] if p["name"] == "lora"]
    assert lora_runs == [False, True, True, True]
    builder_keys = {p["key"] for c in candidates for p in c["passes"] if p["name"] == "builder"}
    assert len(builder_keys) == 4
    assert all(c["status"] == "ok" and "accuracy" in c["metrics"] for c in candidates)
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["id"] == record["search"]["chosen"]
    assert chosen[0]["pareto"] and record["search"]["pareto_front"]
    # the published model is the chosen candidate's builder output
    chosen_key = next(p["key"] for p in chosen[0]["passes"] if p["name"] == "builder")
    assert record["passes"][-1]["key"] == chosen_key
    assert (path.parent / "out" / "model" / "genai_config.json").is_file()
    report = (path.parent / "out" / "report.md").read_text()
    assert "## Candidates" in report
    # the cache lists every entry as JSON
    import subprocess
    import sys

    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "slimtune.cli.main",
            "cache",
            "ls",
            "--cache-dir",
            str(path.parent / "cache"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = json.loads(listing.stdout)
    assert sorted(e["pass_type"] for e in entries) == ["LoRA", "MergeAdapterWeights"] + ["ModelBuilder"] * 4
    assert all(e["size_bytes"] > 0 and len(e["key"]) == 64 for e in entries)


def test_a_failing_candidate_is_recorded_and_the_search_goes_on(tiny, tmp_path):
    builder = {"type": "ModelBuilder", "int4_algo_config": {"search": ["no_such_algorithm", "rtn"]}}
    path = write(tmp_path, config({"lora": LORA, "builder": builder}, {"sampler": "exhaustive"}), tiny)
    assert main(["run", "--config", str(path)]) == 0
    first, second = run_json(path)["candidates"]
    assert first["status"] == "failed" and "no_such_algorithm" in first["reason"] and not first["chosen"]
    # the passes it ran, then the one it failed in
    assert [(p["name"], p.get("failed", False)) for p in first["passes"]] == [
        ("lora", False),
        ("builder", True),
    ]
    assert second["status"] == "ok" and second["chosen"]
    assert run_json(path)["search"]["failed"] == 1


def test_when_every_candidate_fails_the_run_fails_with_the_reasons(tiny, tmp_path, capsys):
    builder = {"type": "ModelBuilder", "int4_algo_config": {"search": ["no_such_algorithm", "nor_this_one"]}}
    path = write(
        tmp_path,
        config(
            {"builder": builder},
            {"sampler": "exhaustive"},
            evaluators={
                "e": {"metrics": [{"name": "accuracy", "type": "accuracy", "data_config": "emotion"}]}
            },
        ),
        tiny,
    )
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "every candidate of the search failed" in err and "nor_this_one" in err
    assert not (path.parent / "out" / "model").exists()


def test_a_user_error_stops_the_search_at_once(tiny, tmp_path, capsys):
    cfg = config(
        {"lora": LORA, "builder": {"type": "ModelBuilder", "int4_block_size": {"search": [32, 128]}}},
        {"sampler": "exhaustive"},
    )
    cfg["data_configs"][0]["load_dataset_config"]["data_files"] = str(tmp_path / "missing.jsonl")
    path = write(tmp_path, cfg, tiny)
    assert main(["run", "--config", str(path)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "entries").exists() or not any(
        (tmp_path / "cache" / "entries").iterdir()
    )
    assert not (tmp_path / "out").exists()


def by_size(goal: dict | None = None) -> dict:
    """An evaluator that ranks candidates by model size (quick to measure, and never a tie across precisions)."""
    sub = {"name": "size", "priority": 1, **({"goal": goal} if goal else {})}
    return {
        "quality": {
            "metrics": [{"name": "size", "type": "size", "data_config": "emotion", "sub_types": [sub]}]
        }
    }


def test_stop_when_goals_met_ends_the_search_at_the_first_success(tiny, tmp_path):
    evaluators = by_size(goal={"type": "threshold", "value": 1e9})
    builder = {"type": "ModelBuilder", "int4_block_size": {"search": [32, 64, 128]}}
    cfg = config(
        {"builder": builder}, {"sampler": "exhaustive", "stop_when_goals_met": True}, evaluators=evaluators
    )
    path = write(tmp_path, cfg, tiny)
    assert main(["run", "--config", str(path)]) == 0
    record = run_json(path)
    assert len(record["candidates"]) == 1 and record["candidates"][0]["chosen"]
    assert "stop_when_goals_met" in record["search"]["stopped"]
    assert record["goals_met"] is True


def test_goals_and_priorities_choose_the_candidate(tiny, tmp_path):
    """Ranked by size (priority 1): int4 beats int8 beats fp32, whatever the order they were tried in."""
    evaluators = by_size()
    alternatives = [
        {"type": "ModelBuilder", "precision": "fp32"},
        {"type": "ModelBuilder", "precision": "int8"},
        {"type": "ModelBuilder", "precision": "int4"},
    ]
    cfg = config({"builder": alternatives}, {"sampler": "random", "seed": 1}, evaluators=evaluators)
    path = write(tmp_path, cfg, tiny)
    assert main(["run", "--config", str(path)]) == 0
    record = run_json(path)
    chosen = next(c for c in record["candidates"] if c["chosen"])
    assert chosen["params"]["builder"] == {"alternative": 2, "precision": "int4"}
    sizes = {c["params"]["builder"]["alternative"]: c["metrics"]["size_bytes"] for c in record["candidates"]}
    assert sizes[2] < sizes[1] < sizes[0]
    assert "ranked by size-size" in record["search"]["why"]


def test_pass_by_pass_fixes_each_pass_before_the_next(tiny, tmp_path):
    evaluators = by_size()
    lora = {**LORA, "r": {"search": [2, 4]}}
    builder = {"type": "ModelBuilder", "precision": {"search": ["int8", "int4"]}}
    cfg = config(
        {"lora": lora, "builder": builder},
        {"execution_order": "pass-by-pass", "sampler": "exhaustive"},
        evaluators=evaluators,
    )
    path = write(tmp_path, cfg, tiny)
    assert main(["run", "--config", str(path)]) == 0
    params = [c["params"] for c in run_json(path)["candidates"]]
    # LoRA first (builder at its first value), then the builder with the best LoRA: 3 candidates, not 4
    assert len(params) == 3
    assert [p["builder"]["precision"] for p in params[:2]] == ["int8", "int8"]
    best_r = params[2]["lora"]["r"]
    assert params[2] == {"lora": {"r": best_r}, "builder": {"precision": "int4"}}


# ---------------------------------------------------------------- slimtune optimize


def optimize_args(tiny: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "optimize",
        "--model",
        str(tiny),
        "--data",
        str(DATA),
        "--template",
        "### Text: {phrase}\\n### The tone is:\\n{tone}",
        "--max-rows",
        "8",
        "--output-dir",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *extra,
    ]


def test_optimize_dry_run_lists_candidates_then_shows_them_cached(tiny, tmp_path, capsys):
    args = optimize_args(tiny, tmp_path, "--block-sizes", "32", "--algorithms", "default")
    assert main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert (
        "4 candidates" in listing
        and listing.count("to run") == 4
        and "cached" not in listing.split("\n", 1)[1]
    )
    assert "builder.precision=fp32" in listing and "builder.int4_accuracy_level=4" in listing
    assert not (tmp_path / "out").exists()

    assert main([*args, "--max-accuracy-drop", "1"]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(record["candidates"]) == 4
    # ranked by size first (the default preference): an int4 candidate is chosen
    chosen = next(c for c in record["candidates"] if c["chosen"])
    assert chosen["params"]["builder"]["alternative"] == 2  # fp32, int8, int4
    assert record["goals"] and record["goals"][0]["metric"] == "accuracy-accuracy_score"
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.count("cached") == 4


def test_optimize_starts_from_a_runs_merged_model_in_its_cache_and_knows_what_it_built(
    tiny, tmp_path, capsys
):
    """`optimize --model RUN_FOLDER`: the run's merged model, the run's cache, and the export the run already
    made with the same settings shown as cached; --dry-run writes nothing; an ONNX folder of a run points to
    the run folder."""
    builder = {
        "type": "ModelBuilder",
        "precision": "int4",
        "int4_block_size": 32,
        "int4_accuracy_level": 4,
        "int4_algo_config": "default",
    }
    lora = {**LORA, "training_args": {**LORA["training_args"], "max_steps": 1}}
    path = write(
        tmp_path, config({"lora": lora, "merge": {"type": "MergeAdapterWeights"}, "builder": builder}), tiny
    )
    assert main(["run", "--config", str(path)]) == 0
    cache = tmp_path / "cache"
    before = sorted(p for p in cache.rglob("*"))
    args = ["optimize", "--model", str(tmp_path / "out"), "--data", str(DATA), "--max-rows", "8"]
    args += ["--precisions", "int8", "int4", "--block-sizes", "32", "--accuracy-levels", "4"]
    args += ["--algorithms", "default", "--output-dir", str(tmp_path / "opt")]
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    merged = json.loads((tmp_path / "out" / "run.json").read_text())["stages"][2]
    assert f"merge model: {merged['path']}" in out and f"(cache {cache.resolve()})" in out
    lines = [line for line in out.splitlines() if line.strip().startswith("#")]
    assert "to run" in lines[0] and "precision=int8" in lines[0]
    assert "cached" in lines[1] and "precision=int4" in lines[1]  # the run's own export
    assert sorted(p for p in cache.rglob("*")) == before and not (tmp_path / "opt").exists()
    assert main(["optimize", "--model", str(tmp_path / "out" / "model"), "--data", str(DATA)]) == 2
    assert f"give the run folder (--model {tmp_path / 'out'})" in capsys.readouterr().err


def test_optimize_dry_run_creates_no_cache(tiny, tmp_path):
    args = optimize_args(tiny, tmp_path, "--block-sizes", "32", "--algorithms", "default", "--dry-run")
    assert main(args) == 0
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_optimize_refuses_what_it_cannot_do(tiny, tmp_path, capsys):
    assert main([*optimize_args(tiny, tmp_path), "--precisions", "fp16"]) == 2
    assert "fp16 models for CUDA only" in capsys.readouterr().err
    args = optimize_args(tiny, tmp_path)
    at = args.index("--template")
    del args[at : at + 2]
    assert main(args) == 2
    assert "records no prompt template" in capsys.readouterr().err
    assert main([*optimize_args(tiny, tmp_path), "--max-rows", "0"]) == 2
    assert not (tmp_path / "out").exists()


def test_max_iter_caps_a_random_search(tiny, tmp_path):
    evaluators = {"e": {"metrics": [{"name": "size", "type": "size", "data_config": "emotion"}]}}
    builder = {"type": "ModelBuilder", "int4_block_size": {"search": [16, 32, 64, 128]}}
    cfg = config({"builder": builder}, {"sampler": "random", "seed": 5, "max_iter": 2}, evaluators=evaluators)
    path = write(tmp_path, cfg, tiny)
    assert main(["run", "--config", str(path)]) == 0
    record = run_json(path)
    assert len(record["candidates"]) == 2 and record["search"]["stopped"] == "max_iter 2 reached"
    tried = [c["params"]["builder"]["int4_block_size"] for c in record["candidates"]]
    assert len(set(tried)) == 2


def test_ties_on_the_prioritized_metric_are_broken_by_size():
    """Two candidates with equal accuracy (common on a few hundred rows): the smaller one wins."""
    from slimtune.engine.search import Tried, _Search, ranking_for
    from slimtune.evaluate.goals import MetricRef

    search = _Search.__new__(_Search)
    accuracy = MetricRef("accuracy-accuracy_score", ("accuracy",), True, 1, None)
    unranked_latency = MetricRef("latency-avg", ("latency", "e2e_ms", "avg"), False, -1, None)
    search.ranking = ranking_for([unranked_latency, accuracy])
    assert [r.key for r in search.ranking] == ["accuracy-accuracy_score", "latency-p50", "size"]
    big, small = (
        Tried(
            i, {}, {}, status="ok", evaluation={"stages": [{"metrics": {"accuracy": 0.9, "size_bytes": s}}]}
        )
        for i, s in ((1, 200), (2, 100))
    )
    assert search.best([big, small]) is small


def test_bad_pass_and_strategy_shapes_get_one_message_each():
    cfg = config({"a": 5, "b": [3]})
    cfg["search_strategy"] = 7
    text = problems(cfg)
    assert text.startswith("config: 3 problems")
    assert "passes.a: must be a pass config" in text and "passes.b: alternatives must be pass configs" in text
    assert "search_strategy: must be false or a mapping" in text and "PassEntry" not in text
