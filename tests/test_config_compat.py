"""Every row of SPEC.md's "Config compatibility" table: the old (seed) form and the current form validate to
the same RunConfig and pass parameters, and the migration notes name the path the user wrote."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from slimtune.config.load import LoadedConfig, load_config_dict
from slimtune.errors import ConfigError

DATA = {
    "name": "train",
    "load_dataset_config": {"data_name": "json", "data_files": "data.json", "split": "train"},
    "pre_process_data_config": {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}"},
}
LORA = {"type": "LoRA", "train_data_config": "train", "r": 8, "alpha": 16}


def current(**sections: Any) -> dict[str, Any]:
    """A small current-form config; keyword arguments replace its sections."""
    cfg: dict[str, Any] = {
        "input_model": {"type": "HfModel", "model_path": "model"},
        "data_configs": [copy.deepcopy(DATA)],
        "passes": {"lora": copy.deepcopy(LORA)},
    }
    cfg.update(copy.deepcopy(sections))
    return cfg


def load(cfg: dict[str, Any], base: Path) -> LoadedConfig:
    return load_config_dict(copy.deepcopy(cfg), base_dir=base)


def dump(loaded: LoadedConfig) -> dict[str, Any]:
    return {
        "config": loaded.config.model_dump(),
        "passes": [(p.name, p.type, p.params.model_dump()) for p in loaded.passes],
    }


def assert_same(old: dict[str, Any], new: dict[str, Any], base: Path, *noted: str) -> LoadedConfig:
    """Old and new forms validate to equal dumps; each of `noted` (an old dotted path) starts a note."""
    old_loaded, new_loaded = load(old, base), load(new, base)
    assert dump(old_loaded) == dump(new_loaded)
    for path in noted:
        assert any(n.startswith(path) for n in old_loaded.notes), (path, old_loaded.notes)
    return old_loaded


# ---------------------------------------------------------------- input_model


@pytest.mark.parametrize("args_key", ["model_loading_args", "from_pretrained_args"])
def test_pytorch_model_hf_config_is_hf_model(tmp_path, args_key):
    old = current(
        input_model={
            "type": "PyTorchModel",
            "config": {
                "hf_config": {
                    "model_name": "model",
                    "task": "text-generation",
                    args_key: {"trust_remote_code": True, "torch_dtype": "bfloat16"},
                }
            },
        }
    )
    new = current(
        input_model={
            "type": "HfModel",
            "model_path": "model",
            "task": "text-generation",
            "load_kwargs": {"trust_remote_code": True, "dtype": "bfloat16"},
        }
    )
    loaded = assert_same(
        old,
        new,
        tmp_path,
        "input_model.type",
        "input_model.config.hf_config.model_name -> input_model.model_path",
        f"input_model.config.hf_config.{args_key}.trust_remote_code -> input_model.load_kwargs.trust_remote_code",
        f"input_model.config.hf_config.{args_key}.torch_dtype",
    )
    assert loaded.config.input_model.load_kwargs.trust_remote_code is True
    assert loaded.config.input_model.load_kwargs.dtype == "bfloat16"


def test_both_loading_args_forms_giving_one_argument_is_an_error(tmp_path):
    old = current(
        input_model={
            "type": "PyTorchModel",
            "config": {
                "hf_config": {
                    "model_name": "model",
                    "model_loading_args": {"trust_remote_code": True},
                    "from_pretrained_args": {"trust_remote_code": False},
                }
            },
        }
    )
    with pytest.raises(ConfigError) as err:
        load(old, tmp_path)
    assert [i.path for i in err.value.issues] == [
        "input_model.config.hf_config.from_pretrained_args.trust_remote_code"
    ]


def test_azureml_registry_model(tmp_path):
    old = current(
        input_model={
            "type": "PyTorchModel",
            "config": {
                "model_path": {
                    "type": "azureml_registry_model",
                    "config": {
                        "name": "microsoft/Phi-3-mini-4k-instruct",
                        "registry_name": "azureml-msr",
                        "version": "11",
                    },
                },
                "model_file_format": "PyTorch.MLflow",
                "hf_config": {
                    "model_name": "microsoft/Phi-3-mini-4k-instruct",
                    "task": "text-generation",
                    "from_pretrained_args": {"trust_remote_code": True},
                },
            },
        }
    )
    new = current(
        input_model={
            "type": "HfModel",
            "model_path": {
                "type": "azureml_registry_model",
                "name": "microsoft/Phi-3-mini-4k-instruct",
                "registry_name": "azureml-msr",
                "version": "11",
            },
            "model_file_format": "PyTorch.MLflow",
            "model_name": "microsoft/Phi-3-mini-4k-instruct",
            "task": "text-generation",
            "load_kwargs": {"trust_remote_code": True},
        }
    )
    loaded = assert_same(
        old,
        new,
        tmp_path,
        "input_model.config.model_path.config.registry_name -> input_model.model_path.registry_name",
        "input_model.config.model_file_format -> input_model.model_file_format",
        "input_model.config.hf_config.model_name -> input_model.model_name",
    )
    path = loaded.config.input_model.model_path
    assert (path.type, path.name, path.version) == (
        "azureml_registry_model",
        "microsoft/Phi-3-mini-4k-instruct",
        "11",
    )


# ---------------------------------------------------------------- passes


def test_pass_config_wrapper_is_flattened(tmp_path):
    old = current(passes={"builder": {"type": "ModelBuilder", "config": {"precision": "int4"}}})
    new = current(passes={"builder": {"type": "ModelBuilder", "precision": "int4"}})
    assert_same(old, new, tmp_path, "passes.builder.config.precision -> passes.builder.precision")


def test_pass_without_params(tmp_path):
    old = current(passes={"merge": {"type": "MergeAdapterWeights", "config": {}}})
    new = current(passes={"merge": {"type": "MergeAdapterWeights"}})
    assert_same(old, new, tmp_path)


def test_lora_old_names(tmp_path):
    old = current(
        passes={
            "lora": {
                "type": "LoRA",
                "config": {"lora_r": 64, "lora_alpha": 64, "lora_dropout": 0.1, "train_data_config": "train"},
            }
        }
    )
    new = current(
        passes={
            "lora": {"type": "LoRA", "r": 64, "alpha": 64, "lora_dropout": 0.1, "train_data_config": "train"}
        }
    )
    loaded = assert_same(
        old,
        new,
        tmp_path,
        "passes.lora.config.lora_r -> passes.lora.r",
        "passes.lora.config.lora_alpha -> passes.lora.alpha",
    )
    params = loaded.passes[0].params
    assert (params.r, params.alpha) == (64, 64)  # Olive 0.13 silently drops these and trains r 64 / alpha 16


def test_eval_dataset_size_is_kept_and_eval_data_config_is_accepted(tmp_path):
    """slimtune keeps `eval_dataset_size` (a held-out split of the training data); the current form names a
    separate data config. Both validate; they are different requests, so they are not compared equal."""
    split = load(current(passes={"lora": {**LORA, "eval_dataset_size": 0.3}}), tmp_path)
    assert split.passes[0].params.eval_dataset_size == 0.3
    held_out = {**copy.deepcopy(DATA), "name": "held_out"}
    explicit = load(
        current(
            data_configs=[copy.deepcopy(DATA), held_out],
            passes={"lora": {**LORA, "eval_data_config": "held_out"}},
        ),
        tmp_path,
    )
    assert explicit.passes[0].params.eval_data_config == "held_out"


@pytest.mark.parametrize("old_type", ["LoRA"])
def test_double_quant_on_lora_means_qlora(tmp_path, old_type):
    old = current(
        passes={
            "lora": {
                "type": old_type,
                "config": {**{k: v for k, v in LORA.items() if k != "type"}, "double_quant": True},
            }
        }
    )
    new = current(passes={"lora": {**LORA, "type": "QLoRA", "double_quant": True}})
    loaded = assert_same(old, new, tmp_path, "passes.lora.type")
    assert loaded.passes[0].type == "QLoRA"
    assert any("QLoRA" in n for n in loaded.notes)


def test_double_quant_false_on_lora_is_dropped_with_a_note(tmp_path):
    old = current(passes={"lora": {**LORA, "double_quant": False}})
    loaded = assert_same(old, current(), tmp_path, "passes.lora.double_quant")
    assert loaded.passes[0].type == "LoRA"


# ---------------------------------------------------------------- data configs


@pytest.mark.parametrize("wrapper", ["params", "params_config"])
def test_data_section_wrappers_are_flattened(tmp_path, wrapper):
    old = current(
        data_configs=[
            {
                "name": "train",
                "type": "HuggingfaceContainer",
                "load_dataset_config": {
                    wrapper: {"data_name": "json", "data_files": "data.json", "split": "train"}
                },
                "pre_process_data_config": {
                    wrapper: {"text_template": DATA["pre_process_data_config"]["text_template"]}
                },
                "dataloader_config": {wrapper: {"batch_size": 4}},
            }
        ]
    )
    new = current(
        data_configs=[
            {**copy.deepcopy(DATA), "type": "HuggingfaceContainer", "dataloader_config": {"batch_size": 4}}
        ]
    )
    assert_same(
        old,
        new,
        tmp_path,
        f"data_configs[0].load_dataset_config.{wrapper}.data_files -> data_configs[0].load_dataset_config.data_files",
        f"data_configs[0].dataloader_config.{wrapper}.batch_size -> data_configs[0].dataloader_config.batch_size",
    )


def test_data_config_level_params_config_bag_is_split_by_section(tmp_path):
    """Olive's oldest data config form: one `params_config` bag for every component."""
    old = current(
        data_configs=[
            {
                "name": "train",
                "params_config": {
                    "data_name": "json",
                    "data_files": "data.json",
                    "split": "train",
                    "text_template": DATA["pre_process_data_config"]["text_template"],
                    "corpus_strategy": "join",
                    "batch_size": 2,
                },
            }
        ]
    )
    new_data = copy.deepcopy(DATA)
    new_data["pre_process_data_config"]["strategy"] = "join"
    new_data["dataloader_config"] = {"batch_size": 2}
    assert_same(
        old,
        current(data_configs=[new_data]),
        tmp_path,
        "data_configs[0].params_config.batch_size -> data_configs[0].dataloader_config.batch_size",
        "data_configs[0].params_config.corpus_strategy -> data_configs[0].pre_process_data_config.corpus_strategy",
    )


def test_pre_process_corpus_keys(tmp_path):
    old_pre = {
        "params": {
            "dataset_type": "corpus",
            "text_cols": ["phrase", "tone"],
            "text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
            "corpus_strategy": "join",
            "source_max_len": 2048,
            "pad_to_max_len": False,
            "use_attention_mask": False,
        }
    }
    new_pre = {
        "text_cols": ["phrase", "tone"],
        "text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
        "strategy": "join",
        "max_seq_len": 2048,
        "pad_to_max_len": False,
        "use_attention_mask": False,
    }
    old = current(data_configs=[{**copy.deepcopy(DATA), "pre_process_data_config": old_pre}])
    new = current(data_configs=[{**copy.deepcopy(DATA), "pre_process_data_config": new_pre}])
    pre = "data_configs[0].pre_process_data_config.params"
    loaded = assert_same(
        old,
        new,
        tmp_path,
        f"{pre}.dataset_type",
        f"{pre}.corpus_strategy -> data_configs[0].pre_process_data_config.strategy",
        f"{pre}.source_max_len -> data_configs[0].pre_process_data_config.max_seq_len",
    )
    assert any("dataset_type" in n and "dropped" in n for n in loaded.notes)


def test_pre_process_dataset_type_other_than_corpus_is_rejected(tmp_path):
    data = copy.deepcopy(DATA)
    data["pre_process_data_config"]["dataset_type"] = "pair"
    with pytest.raises(ConfigError) as err:
        load(current(data_configs=[data]), tmp_path)
    assert [i.path for i in err.value.issues] == ["data_configs[0].pre_process_data_config.dataset_type"]


def test_azureml_datastore_data_files(tmp_path):
    client = {"subscription_id": "sub", "resource_group": "rg", "workspace_name": "ws"}
    old_load = {
        "params": {
            "data_name": "json",
            "data_files": {
                "type": "azureml_datastore",
                "config": {
                    "azureml_client": client,
                    "datastore_name": "workspaceblobstore",
                    "relative_path": "train_data.json",
                },
            },
            "split": "train",
        }
    }
    new_load = {
        "data_name": "json",
        "data_files": {
            "type": "azureml_datastore",
            "azureml_client": client,
            "datastore_name": "workspaceblobstore",
            "relative_path": "train_data.json",
        },
        "split": "train",
    }
    old = current(data_configs=[{**copy.deepcopy(DATA), "load_dataset_config": old_load}])
    new = current(data_configs=[{**copy.deepcopy(DATA), "load_dataset_config": new_load}])
    loaded = assert_same(
        old,
        new,
        tmp_path,
        "data_configs[0].load_dataset_config.params.data_files.config.datastore_name",
    )
    files = loaded.config.data_configs[0].load_dataset_config.data_files
    assert (files.type, files.datastore_name, files.relative_path) == (
        "azureml_datastore",
        "workspaceblobstore",
        "train_data.json",
    )
    assert files.azureml_client.workspace_name == "ws"


# ---------------------------------------------------------------- engine and systems

ENGINE = {
    "log_severity_level": 0,
    "host": "local_system",
    "target": "local_system",
    "search_strategy": False,
    "cache_dir": "cache",
    "output_dir": "out",
}


def test_engine_section_is_top_level(tmp_path):
    systems = {"local_system": {"type": "LocalSystem", "accelerators": [{"device": "cpu"}]}}
    old = current(systems=systems, engine=ENGINE)
    new = current(systems=systems, **ENGINE)
    loaded = assert_same(old, new, tmp_path, *(f"engine.{k} -> {k}" for k in ENGINE))
    assert loaded.config.cache_dir == str(tmp_path / "cache")


def test_engine_execution_providers_go_to_the_target_system(tmp_path):
    old = current(
        systems={"aml": {"type": "AzureML", "config": {"accelerators": ["gpu"], "aml_compute": "cluster"}}},
        engine={**ENGINE, "host": "aml", "target": "aml", "execution_providers": ["CUDAExecutionProvider"]},
    )
    new = current(
        systems={
            "aml": {
                "type": "AzureML",
                "aml_compute": "cluster",
                "accelerators": [{"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}],
            }
        },
        **{**ENGINE, "host": "aml", "target": "aml"},
    )
    assert_same(
        old,
        new,
        tmp_path,
        "engine.execution_providers -> systems.aml.accelerators[0].execution_providers",
        "systems.aml.config.aml_compute -> systems.aml.aml_compute",
    )


def test_engine_execution_providers_without_systems_create_one(tmp_path):
    loaded = load(current(engine={"execution_providers": ["CPUExecutionProvider"]}), tmp_path)
    ((name, system),) = loaded.config.systems.items()
    assert loaded.config.target == name
    assert system.accelerators[0].execution_providers == ["CPUExecutionProvider"]
    assert any(n.startswith("engine.execution_providers") for n in loaded.notes)


def test_engine_key_also_at_top_level_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(current(engine={"cache_dir": "a"}, cache_dir="b"), tmp_path)
    assert [i.path for i in err.value.issues] == ["engine.cache_dir"]


@pytest.mark.parametrize("system_type", ["LocalSystem", "AzureML"])
def test_system_config_wrapper_and_device_names(tmp_path, system_type):
    extra = {"aml_compute": "cluster", "hf_token": True} if system_type == "AzureML" else {}
    old = current(systems={"s": {"type": system_type, "config": {"accelerators": ["gpu"], **extra}}})
    new = current(systems={"s": {"type": system_type, "accelerators": [{"device": "gpu"}], **extra}})
    loaded = assert_same(
        old,
        new,
        tmp_path,
        "systems.s.config.accelerators -> systems.s.accelerators",
        "systems.s.config.accelerators:",
    )
    # the migrated (upgrade) form writes entries, not the bare device names current Olive rejects
    assert loaded.migrated["systems"]["s"]["accelerators"] == [{"device": "gpu"}]


# ---------------------------------------------------------------- training args


@pytest.mark.parametrize(
    ("old_args", "new_args", "old_key"),
    [
        (
            {"evaluation_strategy": "steps", "eval_steps": 10},
            {"eval_strategy": "steps", "eval_steps": 10},
            "evaluation_strategy",
        ),
        ({"warmup_ratio": 0.1}, {"warmup_steps": 0.1}, "warmup_ratio"),
        ({"group_by_length": True}, {"train_sampling_strategy": "group_by_length"}, "group_by_length"),
        ({"group_by_length": False}, {}, "group_by_length"),
    ],
)
def test_training_args_removed_in_transformers_5(tmp_path, old_args, new_args, old_key):
    old = current(
        passes={
            "lora": {
                "type": "LoRA",
                "config": {**{k: v for k, v in LORA.items() if k != "type"}, "training_args": old_args},
            }
        }
    )
    new = current(passes={"lora": {**LORA, "training_args": new_args}})
    loaded = assert_same(old, new, tmp_path, f"passes.lora.config.training_args.{old_key}")
    assert old_key not in loaded.passes[0].params.training_args


def test_old_and_new_training_arg_both_given_keeps_the_new_one(tmp_path):
    both = current(
        passes={"lora": {**LORA, "training_args": {"evaluation_strategy": "epoch", "eval_strategy": "steps"}}}
    )
    assert load(both, tmp_path).passes[0].params.training_args == {"eval_strategy": "steps"}


# ---------------------------------------------------------------- the whole seed config


def test_seed_local_config_equals_its_current_form(tmp_path):
    """tests/configs/seed_local.json (old schema) and seed_local_current.yaml say the same thing."""
    from slimtune.config.load import load_config

    configs = Path(__file__).parent / "configs"
    old, new = load_config(configs / "seed_local.json"), load_config(configs / "seed_local_current.yaml")
    assert dump(old) == dump(new)
    assert old.notes and not new.notes


def test_load_kwargs_torch_dtype_is_dtype(tmp_path):
    """transformers 5 renamed `torch_dtype` to `dtype`; Olive's current HfModel configs still write the old name.
    (The migration once knew the rename for suggestions only and rejected the key it suggested.)"""
    old = current(
        input_model={"type": "HfModel", "model_path": "model", "load_kwargs": {"torch_dtype": "float16"}}
    )
    new = current(input_model={"type": "HfModel", "model_path": "model", "load_kwargs": {"dtype": "float16"}})
    assert_same(old, new, tmp_path, "input_model.load_kwargs.torch_dtype -> input_model.load_kwargs.dtype")
