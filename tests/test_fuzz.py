"""Property-based fuzzing (hypothesis): random JSON into the config loader and validator, random rows into the
data pipeline. Whatever comes in, slimtune either accepts it or raises a SlimtuneError (exit code 2 with a
message); any other exception is a bug. Example counts are kept small so the suite stays quick on 2 cores."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slimtune.config.load import load_config, load_config_dict
from slimtune.config.summary import plan_summary
from slimtune.engine.input_checks import check_plan
from slimtune.errors import SlimtuneError

CATALOGUE = Path(__file__).parent / "bad_inputs"
VALID = json.loads((CATALOGUE / "_shared" / "valid.json").read_text())
VALID_OLD = json.loads((CATALOGUE / "_shared" / "valid_old_form.json").read_text())
# the catalogue's configs name their model through ${SLIMTUNE_TEST_MODEL}; here a plain path keeps every
# mutation past the ${ENV} step (an unset name would stop each one there)
VALID["input_model"]["model_path"] = "model"
VALID_OLD["input_model"]["config"]["hf_config"]["model_name"] = "model"


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Secrets a config names are remembered for the process (as in one CLI run); not across tests."""
    from slimtune import redact

    yield
    redact.forget()


SCALE = float(os.environ.get("SLIMTUNE_FUZZ_SCALE", "1"))  # e.g. 20 for a long bug hunt


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,  # nothing written into the repository; a failure prints the example to reproduce it
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# keys slimtune knows, so that random documents reach past the first "unknown key"
KNOWN_KEYS = sorted(
    {
        *VALID,
        *VALID_OLD,
        *VALID["passes"]["lora"],
        *VALID["data_configs"][0],
        *VALID["data_configs"][0]["load_dataset_config"],
        *VALID["data_configs"][0]["pre_process_data_config"],
        *VALID_OLD["engine"],
        *VALID_OLD["data_configs"][0]["params_config"],
        "config",
        "systems",
        "evaluators",
        "metrics",
        "sub_types",
        "goal",
        "search_strategy",
        "accelerators",
        "execution_providers",
        "hf_config",
        "model_name",
        "lora_r",
        "lora_alpha",
        "text_cols",
        "strategy",
        "stride",
        "messages_col",
        "quantization_aware",
        "precision",
        "int4_block_size",
        "extra_options",
        "adapter_path",
        "load_kwargs",
        "dtype",
    }
)
PASS_TYPES = ["LoRA", "QLoRA", "DoRA", "MergeAdapterWeights", "ModelBuilder", "lora", "", "OnnxConversion"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(PASS_TYPES + ["train", "local_system", "int4", "${SLIMTUNE_FUZZ_UNSET}", "../x"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)


def only_user_errors(cfg: dict[str, Any], base_dir: Path) -> None:
    """Load, validate, cross-check and summarise `cfg`: success or a SlimtuneError, nothing else."""
    try:
        loaded = load_config_dict(cfg, base_dir=base_dir)
        check_plan(loaded)
        assert plan_summary(loaded).strip()  # what `slimtune validate` prints for a valid config
    except SlimtuneError as err:
        assert str(err).strip(), "a user error with no message"


@fuzz(150)
@given(st.dictionaries(keys, json_values, max_size=8))
def test_random_documents(tmp_path, doc):
    only_user_errors(doc, tmp_path)


# ---------------------------------------------------------------- mutations of valid configs


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, (*prefix, i))
    return out


def parent_of(cfg: Any, path: tuple) -> Any:
    node = cfg
    for part in path[:-1]:
        node = node[part]
    return node


def mutate(cfg: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = paths_of(cfg)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = parent_of(cfg, path)
        op = data.draw(st.sampled_from(["drop", "replace", "retype", "add"]), label="op")
        key = path[-1]
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = data.draw(json_values, label="value")
        elif op == "retype":
            value = parent[key]
            parent[key] = (
                [value]
                if not isinstance(value, list)
                else {"x": value}
                if data.draw(st.booleans())
                else str(value)
            )
        elif isinstance(parent, dict):
            parent[data.draw(keys, label="new key")] = data.draw(json_values, label="new value")
        else:
            parent.append(data.draw(json_values, label="new item"))
    return cfg


@fuzz(200)
@given(st.data())
def test_mutated_current_form(tmp_path, data):
    only_user_errors(mutate(VALID, data), tmp_path)


@fuzz(150)
@given(st.data())
def test_mutated_old_form(tmp_path, data):
    only_user_errors(mutate(VALID_OLD, data), tmp_path)


@fuzz(150)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(keys, json_values, max_size=5)),
    ),
    st.sampled_from(["config.json", "config.yaml"]),
)
def test_random_config_files(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    try:
        load_config(path)
    except SlimtuneError as err:
        assert str(err).strip()


def test_mutation_reaches_validation(tmp_path):
    """The mutations are not vacuous: the configs they start from are valid (so each mutation is what gets
    judged), and a broken one is refused."""
    for cfg in (VALID, VALID_OLD):
        loaded = load_config_dict(copy.deepcopy(cfg), base_dir=tmp_path)
        check_plan(loaded)
        assert [p.type for p in loaded.passes] == ["LoRA", "MergeAdapterWeights", "ModelBuilder"]
        broken = copy.deepcopy(cfg)
        broken["passes"]["lora"]["type"] = "LoRAX"
        with pytest.raises(SlimtuneError):
            load_config_dict(broken, base_dir=tmp_path)


# ---------------------------------------------------------------- the data pipeline


@pytest.fixture(scope="module")
def tokenizer():
    from test_data_fixtures import word_tokenizer

    return word_tokenizer()


cell = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(alphabet="one two three Q A yes no \u00e9\u4e2d\U0001f600{}\n", max_size=40),
    st.builds(lambda n: "word " * n, st.integers(0, 3000)),  # huge strings
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "system", ""]), "content": st.text(max_size=20)}
        ),
        max_size=3,
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
row = st.dictionaries(st.sampled_from(["q", "a", "text", "messages", "tone", "", "x y"]), cell, max_size=4)
pre_options = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(["line-by-line", "join", "join-random", "join-sliding-window"]),
        "max_seq_len": st.integers(1, 40),
        "text_template": st.sampled_from(
            [None, "Q {q} A {a}", "{text}", "{q[0]} {a}", "{q!r:>5} {a}", "{q.real} {a}", "Q {q} A {a}\n"]
        ),
        "messages_col": st.sampled_from([None, "messages"]),
        "chat_template": st.booleans(),
        "loss_on_answer_only": st.booleans(),
        "add_special_tokens": st.booleans(),
        "pad_to_max_len": st.booleans(),
        "stride": st.sampled_from([None, 1, 3, 50]),
    }
)


def run_pipeline(
    rows: list[dict[str, Any]],
    options: dict[str, Any],
    tokenizer,
    tmp_path: Path,
    via_file: bool,
    expect_ok: bool = False,
):
    from slimtune.config.schema import LoadDatasetConfig, PreProcessDataConfig
    from slimtune.data.load import load_rows
    from slimtune.data.template import Template
    from slimtune.data.tokenize import tokenize_rows

    try:
        pre = PreProcessDataConfig(**options)
    except ValueError:  # pydantic: the options contradict each other (a config error at validation)
        assume(False)
    try:
        if via_file:
            path = tmp_path / "rows.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            dataset = load_rows(LoadDatasetConfig(data_files=str(path)))
        else:
            import datasets

            try:
                dataset = datasets.Dataset.from_list(rows)
            except Exception:  # noqa: BLE001 - pyarrow cannot type the column: load_rows covers that case
                assume(False)
        template = Template(pre, tokenizer, dataset.column_names, "rows.jsonl")
        samples = tokenize_rows(dataset, pre, tokenizer, template)
    except SlimtuneError as err:
        assert str(err).strip()
        assert not expect_ok, f"refused: {err}"
        return
    assert len(samples) > 0
    for ids in samples["input_ids"]:
        assert len(ids) <= pre.max_seq_len and all(isinstance(i, int) for i in ids)


@fuzz(150)
@given(st.lists(row, min_size=1, max_size=6), pre_options)
def test_random_rows_in_memory(tmp_path, tokenizer, rows, options):
    run_pipeline(rows, options, tokenizer, tmp_path, via_file=False)


@fuzz(40)
@given(st.lists(row, min_size=0, max_size=5), pre_options)
def test_random_rows_through_a_file(tmp_path, tokenizer, rows, options):
    run_pipeline(rows, options, tokenizer, tmp_path, via_file=True)


@fuzz(60)
@given(st.lists(row, min_size=1, max_size=6))
def test_random_rows_through_the_run_checks(tmp_path, rows):
    """The same rows through `check_data`, the checks `slimtune run` makes before loading a model."""
    from slimtune.engine.input_checks import check_data

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = copy.deepcopy(VALID)
    cfg["data_configs"][0]["load_dataset_config"]["data_files"] = str(data)
    cfg["data_configs"][0]["pre_process_data_config"]["text_template"] = "Q {q} A {a}"
    cfg["input_model"]["model_path"] = str(tmp_path)
    loaded = load_config_dict(cfg, base_dir=tmp_path)
    try:
        check_data(loaded)
    except SlimtuneError as err:
        assert str(err).strip()


def test_rows_strategy_finds_known_failures(tmp_path, tokenizer):
    """The row pipeline does refuse things (the property is not met by accepting everything): rows with a
    null answer, through a file, are a DataError."""
    options = {"text_template": "Q {q} A {a}", "strategy": "line-by-line", "max_seq_len": 16}
    with pytest.raises(AssertionError, match="refused"):
        run_pipeline([{"q": "one", "a": None}], options, tokenizer, tmp_path, via_file=True, expect_ok=True)
