"""The current config form (Olive's current schema, plus slimtune's additions), as pydantic models.

Old-form configs are migrated to this form first (`slimtune.config.migrate`). Pass parameters are
validated by each pass's own model (`slimtune.passes`), so this module imports no pass code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slimtune.config.base import Strict
from slimtune.config.template_syntax import parse_template
from slimtune.errors import UserError

# ---------------------------------------------------------------- remote resources


class AzureMLClient(Strict):
    aml_config_path: str | None = Field(
        None,
        description="the workspace's config.json as Azure ML writes it (subscription_id, resource_group, "
        "workspace_name); relative to the config's folder",
    )
    subscription_id: str | None = Field(None, description="Azure subscription id")
    resource_group: str | None = Field(None, description="Azure resource group")
    workspace_name: str | None = Field(None, description="Azure ML workspace name")
    keyvault_name: str | None = Field(None, description="key vault holding secrets such as the HF token")
    read_timeout: int | None = Field(None, description="seconds")
    max_operation_retries: int | None = None
    operation_retry_interval: int | None = None
    default_auth_params: dict[str, Any] | None = None


class AzureMLRegistryModel(Strict):
    type: Literal["azureml_registry_model"]
    name: str = Field(description="model name in the registry")
    registry_name: str = Field(description="Azure ML registry name, e.g. azureml-msr")
    version: str | int = Field(description="model version")


class AzureMLModel(Strict):
    type: Literal["azureml_model"]
    azureml_client: AzureMLClient | None = None
    name: str
    version: str | int


class AzureMLDatastore(Strict):
    type: Literal["azureml_datastore"]
    azureml_client: AzureMLClient | None = None
    datastore_name: str = Field(description="datastore name, e.g. workspaceblobstore")
    relative_path: str = Field(description="path of the file or folder inside the datastore")


class AzureMLJobOutput(Strict):
    type: Literal["azureml_job_output"]
    azureml_client: AzureMLClient | None = None
    job_name: str = Field(description="name of the Azure ML job")
    output_name: str = Field(description="name of the job's output")
    relative_path: str = Field("", description="path of the file or folder inside the output")


RESOURCE_TYPES = {
    "azureml_registry_model": AzureMLRegistryModel,
    "azureml_model": AzureMLModel,
    "azureml_datastore": AzureMLDatastore,
    "azureml_job_output": AzureMLJobOutput,
}


def _resource(value: Any) -> Any:
    """A path is a string, or a resource dict validated by its `type`."""
    if isinstance(value, dict):
        if "type" not in value:
            return value  # a split mapping {"train": ..., "test": ...} (its values are checked by the field)
        kind = value.get("type")
        if kind == "local_file" or kind == "local_folder":
            config = value.get("config")
            return value.get("path") or (config.get("path") if isinstance(config, dict) else None)
        if not isinstance(kind, str) or kind not in RESOURCE_TYPES:
            raise ValueError(
                f"unknown resource type {kind!r}; expected one of {sorted(RESOURCE_TYPES)} or a path"
            )
        return RESOURCE_TYPES[kind].model_validate(value)
    return value


# ---------------------------------------------------------------- model


class LoadKwargs(Strict):
    renamed = {"torch_dtype": "dtype"}
    trust_remote_code: bool = Field(
        False, description="run the model repository's own Python code (off unless set)"
    )
    dtype: str | None = Field(
        None, description="weights dtype when loading: float32, bfloat16, float16, auto"
    )
    attn_implementation: str | None = Field(None, description="eager, sdpa, flash_attention_2 ...")
    revision: str | None = Field(None, description="hub revision")
    low_cpu_mem_usage: bool | None = None
    device_map: str | dict[str, Any] | None = None
    variant: str | None = None
    gguf_file: str | None = Field(None, description="GGUF file inside model_path to convert")
    use_safetensors: bool | None = Field(None, description="refuse pickled .bin weights unless false")

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        known = ("auto", "float32", "float16", "bfloat16", "fp32", "fp16", "bf16")
        if value is not None and value.removeprefix("torch.") not in known:
            raise ValueError(f"unknown dtype {value!r}; one of {', '.join(known)}")
        return value


class InputModel(Strict):
    type: Literal["HfModel", "ONNXModel"] = Field("HfModel", description="HfModel (PyTorch) or ONNXModel")
    model_path: Any = Field(
        description="local folder, .gguf file, known model name, hub name, remote resource"
    )
    model_name: str | None = Field(
        None, description="Hugging Face name, when model_path is a remote resource"
    )
    task: str = Field("text-generation", description="only text-generation is supported")
    load_kwargs: LoadKwargs = Field(default_factory=LoadKwargs)
    adapter_path: str | None = Field(None, description="a PEFT adapter to apply on top of the model")
    model_file_format: str | None = Field(
        None, description="e.g. PyTorch.MLflow for Azure ML registry models"
    )
    model_attributes: dict[str, Any] | None = None

    _path = field_validator("model_path", mode="before")(classmethod(lambda cls, v: _resource(v)))

    @field_validator("model_path")
    @classmethod
    def _path_kind(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("is empty; give a model folder, a .gguf file or a known model name")
            return value
        if isinstance(value, (AzureMLRegistryModel, AzureMLModel)):
            return value
        raise ValueError(
            "must be a model folder, a .gguf file, a known model name or a remote model resource "
            f"({{type: azureml_registry_model, ...}}); got {type(value).__name__} {value!r}"
        )

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        if value not in ("text-generation", "text-generation-with-past", "causal-lm"):
            raise ValueError(f"task {value!r} is not supported; slimtune works on text-generation models")
        return value


# ---------------------------------------------------------------- data


class LoadDatasetConfig(Strict):
    data_name: str = Field(
        "json", description="json, csv, parquet, text (local files) or a hub data set name"
    )
    data_files: Any = Field(
        None, description="a path, a list of paths, a split -> paths mapping, or a resource"
    )
    subset: str | None = Field(None, description="hub data set configuration")
    split: str = Field("train", description="split to read")
    col_filters: dict[str, Any] | None = Field(None, description="keep rows whose column equals the value")
    max_samples: int | None = Field(None, gt=0, description="keep the first N rows")
    trust_remote_code: bool = False
    storage_options: dict[str, Any] | None = Field(
        None,
        description="options of the remote store data_files name (fsspec: key, secret, account_name ...)",
    )

    _files = field_validator("data_files", mode="before")(classmethod(lambda cls, v: _resource(v)))

    @field_validator("data_files")
    @classmethod
    def _files_kind(cls, value: Any) -> Any:
        def paths(v: Any) -> bool:
            return (isinstance(v, str) and bool(v.strip())) or (
                isinstance(v, list) and bool(v) and all(isinstance(i, str) and i.strip() for i in v)
            )

        if value is None or isinstance(value, (AzureMLDatastore, AzureMLJobOutput)) or paths(value):
            return value
        if isinstance(value, dict) and value and all(paths(v) for v in value.values()):
            return value
        raise ValueError(
            "must be a path, a non-empty list of paths, a mapping {split: path or paths} or an "
            f"azureml_datastore or azureml_job_output resource; got {type(value).__name__} {value!r}"
        )


# Olive's names for its own pre-processing: slimtune's template pipeline does that work
BUILTIN_PRE_PROCESS = ("huggingface_pre_process", "text_generation_huggingface_pre_process")


def _function_params(cls: type[Strict], value: Any) -> Any:
    """Olive passes a user function's parameters flat beside `type`: keys that are not fields of `cls` go to
    `params` (the function's signature is checked when the config loads)."""
    if not isinstance(value, dict) or value.get("type") in (None, *BUILTIN_PRE_PROCESS):
        return value
    own = set(cls.model_fields) | set(getattr(cls, "renamed", {}))
    extra = {k: v for k, v in value.items() if k not in own}
    if not extra:
        return value
    params = value.get("params") if isinstance(value.get("params"), dict) else {}
    return {**{k: v for k, v in value.items() if k in own}, "params": {**params, **extra}}


class PreProcessDataConfig(Strict):
    renamed = {"corpus_strategy": "strategy", "source_max_len": "max_seq_len"}
    type: str | None = Field(
        None,
        description="a function in the data config's user_script that takes the loaded rows (and `params`) and "
        "returns rows; runs before the template",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the `type` function (also given flat)"
    )
    strategy: Literal["line-by-line", "join", "join-random", "join-sliding-window"] = Field(
        "line-by-line", description="one row per sample, or rows joined into max_seq_len blocks"
    )
    max_seq_len: int = Field(1024, gt=0, description="tokens per sample (longer rows are truncated)")
    text_cols: list[str] | str | None = Field(None, description="columns joined into the text (no template)")
    text_template: str | None = Field(None, description="Python format string over columns, e.g. '{phrase}'")
    chat_template: bool = Field(False, description="render rows through the model's chat template")
    messages_col: str | None = Field(None, description="column holding chat messages (role/content dicts)")
    stride: int | None = Field(None, gt=0, description="join-sliding-window: tokens between window starts")
    pad_to_max_len: bool = Field(
        True,
        description="pad every sample to max_seq_len (tokenized data sets; LoRA training pads each micro-batch "
        "only to its longest sample: the padding is masked, so what is learned is the same)",
    )
    use_attention_mask: bool = Field(True, description="pass an attention mask to the model")
    add_special_tokens: bool = Field(True, description="add the tokenizer's BOS/EOS around each text")
    loss_on_answer_only: bool | None = Field(
        None,
        description="labels -100 on the prompt: learn the answer only (for a messages column: every assistant "
        "turn, not the system or user turns); unset: on for a messages column (line-by-line), off otherwise; "
        "false on a messages column learns every turn",
    )
    max_samples: int | None = Field(None, gt=0, description="keep at most N samples after pre-processing")
    random_seed: int = Field(0, description="seed for join-random and shuffles")
    joiner: str | None = Field(None, description="text between joined rows (default: the EOS token)")

    _params = model_validator(mode="before")(classmethod(_function_params))

    @field_validator("text_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_template(value)
            except UserError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _options_agree(self) -> PreProcessDataConfig:
        if self.loss_on_answer_only and self.strategy != "line-by-line":
            raise ValueError(
                f"loss_on_answer_only works only with strategy line-by-line, not {self.strategy!r}: joined "
                "blocks cut rows at arbitrary points, so prompts and answers no longer line up with samples"
            )
        if self.strategy == "join-sliding-window" and not self.stride:
            raise ValueError(
                f"strategy join-sliding-window needs stride (tokens between window starts, e.g. {self.max_seq_len // 2})"
            )
        if self.stride and self.stride > self.max_seq_len:
            raise ValueError(
                f"stride {self.stride} is larger than max_seq_len {self.max_seq_len}: windows would skip tokens"
            )
        return self


class DataloaderConfig(Strict):
    batch_size: int = Field(1, gt=0)
    drop_last: bool = False


class PostProcessDataConfig(Strict):
    type: str = Field(
        description="a function in the data config's user_script: model answers (list of str) -> list of str, "
        "applied before they are compared with the labels"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the `type` function (also given flat)"
    )

    _params = model_validator(mode="before")(classmethod(_function_params))


class DataConfig(Strict):
    name: str = Field(description="referred to by passes and metrics")
    type: Literal["HuggingfaceContainer", "TextGenerationContainer"] = "HuggingfaceContainer"
    user_script: str | None = Field(
        None, description="Python file defining the pre/post-processing functions (relative to the config)"
    )
    script_dir: str | None = Field(None, description="folder put on sys.path while the user_script runs")
    load_dataset_config: LoadDatasetConfig = Field(default_factory=LoadDatasetConfig)
    pre_process_data_config: PreProcessDataConfig = Field(default_factory=PreProcessDataConfig)
    dataloader_config: DataloaderConfig = Field(default_factory=DataloaderConfig)
    post_process_data_config: PostProcessDataConfig | None = None


# ---------------------------------------------------------------- systems


class Accelerator(Strict):
    device: Literal["cpu", "gpu", "cuda", "npu"] = "cpu"
    execution_providers: list[str] | None = Field(
        None, description="e.g. CPUExecutionProvider, CUDAExecutionProvider"
    )

    @field_validator("device", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


def _text(value: Any) -> Any:
    """A version written as a number (`version: 3`) is the text Azure ML expects."""
    return str(value) if isinstance(value, int) else value


class DockerConfig(Strict):
    base_image: str | None = Field(None, description="docker image the environment starts from")
    conda_file_path: str | None = Field(None, description="conda file installed on the image (relative path)")
    dockerfile: str | None = Field(None, description="Dockerfile inside build_context_path")
    build_context_path: str | None = Field(None, description="folder built into the image (relative path)")
    name: str | None = Field(None, description="name the Azure ML environment is registered under")
    version: str | None = Field(None, description="version of that environment")

    _version = field_validator("version", mode="before")(classmethod(lambda cls, v: _text(v)))

    @model_validator(mode="after")
    def _image_or_build(self) -> DockerConfig:
        if self.dockerfile and not self.build_context_path:
            raise ValueError("dockerfile needs build_context_path (the folder it is built in)")
        if self.build_context_path and self.base_image:
            raise ValueError("give base_image (with conda_file_path) or build_context_path, not both")
        return self


class EnvironmentConfig(Strict):
    """An Azure ML environment that exists already in the workspace."""

    name: str = Field(description="environment name")
    version: str | None = Field(None, description="environment version (or give label)")
    label: str | None = Field(None, description="e.g. latest")

    _version = field_validator("version", mode="before")(classmethod(lambda cls, v: _text(v)))

    @model_validator(mode="after")
    def _one_of(self) -> EnvironmentConfig:
        if self.version and self.label:
            raise ValueError("give version or label, not both")
        return self


class System(Strict):
    renamed = {"azureml_client_config": "azureml_client"}
    type: Literal["LocalSystem", "AzureML", "PythonEnvironment", "Docker", "Ray"] = "LocalSystem"
    accelerators: list[Accelerator] = Field(default_factory=lambda: [Accelerator()])
    # AzureML
    aml_compute: str | None = Field(None, description="Azure ML compute cluster name")
    aml_docker_config: DockerConfig | None = Field(None, description="environment built from an image")
    aml_environment_config: EnvironmentConfig | None = Field(
        None, description="an environment of the workspace, by name and version or label"
    )
    azureml_client: AzureMLClient | None = Field(
        None, description="the workspace (default: the config's top-level azureml_client)"
    )
    hf_token: bool | None = Field(
        None, description="the workspace key vault's secret `hf-token` as HF_TOKEN in the job (never logged)"
    )
    instance_count: int | None = Field(None, gt=0, description="nodes; more than 1: PyTorch distribution")
    process_count_per_instance: int | None = Field(
        None, gt=0, description="AzureML: ranks per node of a data-parallel pass (one per GPU of the VM size)"
    )
    resources: dict[str, Any] | None = Field(
        None, description="job resources: instance_type, shm_size, docker_args, properties ..."
    )
    tags: dict[str, str] | None = Field(None, description="tags of the Azure ML job")
    datastores: str | None = Field(None, description="Olive key, not used: outputs go to the job's output")
    is_dev: bool | None = None
    # PythonEnvironment
    python_environment_path: str | None = None
    prepend_to_path: list[str] | None = None
    olive_managed_env: bool | None = None
    requirements_file: str | None = Field(
        None, description="pip requirements installed before the run (AzureML: in the job; relative path)"
    )
    # Docker
    local_docker_config: DockerConfig | None = None
    # Ray (docs/scale-out.md)
    address: str | None = Field(
        None,
        description="Ray: `auto` (a running cluster), `ray://host:port` (a remote one); unset: start one here",
    )
    runtime_env: dict[str, Any] | None = Field(None, description="Ray: runtime environment of the workers")
    resources_per_worker: dict[str, float] | None = Field(
        None, description='Ray: what one pass or training worker takes, e.g. {"CPU": 4, "GPU": 1}'
    )
    num_workers: int | None = Field(None, ge=1, description="Ray: training workers of a data-parallel pass")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = Field(
        None, description="Ray: how training workers are placed on nodes (default PACK)"
    )
    max_failures: int | None = Field(
        None, ge=0, description="Ray: times a lost worker or node is retried (default 2)"
    )

    @field_validator("accelerators", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"device": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _one_environment(self) -> System:
        if self.aml_docker_config and self.aml_environment_config:
            raise ValueError("give aml_docker_config or aml_environment_config, not both")
        return self


class MLflowTracking(Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow server (default: MLFLOW_TRACKING_URI, or the workspace's on Azure ML)"
    )
    experiment: str = Field("slimtune", description="experiment the run is logged under")
    run_name: str | None = Field(None, description="default: the workflow_id or the config file's name")


class Tracking(Strict):
    mlflow: MLflowTracking | None = Field(None, description="log the run to MLflow")


# ---------------------------------------------------------------- evaluation


class Goal(Strict):
    type: Literal[
        "threshold",
        "max-degradation",
        "min-improvement",
        "percent-max-degradation",
        "percent-min-improvement",
    ]
    value: float
    baseline: str | None = Field(
        None, description="stage compared against: `input` (default, as Olive) or a pass name, e.g. the merge"
    )


class SubMetric(Strict):
    name: str
    priority: int = Field(-1, description="1 ranks first; -1 not ranked")
    higher_is_better: bool | None = None
    goal: Goal | None = None
    metric_config: dict[str, Any] | None = None


class CustomMetricConfig(Strict):
    """`user_config` of a metric of type `custom` (signatures: docs/extending.md)."""

    user_script: str | None = Field(
        None,
        description="Python file defining the function (relative to the config file); without it, the function "
        "is a metric an installed package registers in the `slimtune.metrics` entry-point group",
    )
    script_dir: str | None = Field(None, description="folder put on sys.path while the user_script runs")
    evaluate_func: str | None = Field(
        None, description="evaluate_func(model, rows, **evaluate_func_kwargs) -> number or {sub_type: number}"
    )
    evaluate_func_kwargs: dict[str, Any] = Field(default_factory=dict)
    metric_func: str | None = Field(
        None,
        description="metric_func(outputs, targets, **metric_func_kwargs) -> number or {sub_type: number}",
    )
    metric_func_kwargs: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: int = Field(8, gt=0, description="metric_func: tokens generated per row")

    @model_validator(mode="after")
    def _one_function(self) -> CustomMetricConfig:
        if bool(self.evaluate_func) == bool(self.metric_func):
            raise ValueError(
                "give exactly one of evaluate_func (scores the model) or metric_func (scores outputs)"
            )
        return self


class Metric(Strict):
    name: str
    type: Literal["accuracy", "latency", "throughput", "perplexity", "size", "memory", "custom"]
    data_config: str | None = Field(None, description="name of a data config")
    sub_types: list[SubMetric] = Field(default_factory=list)
    user_config: dict[str, Any] | CustomMetricConfig | None = None
    backend: str | None = None

    @field_validator("user_config")
    @classmethod
    def _custom_config(cls, value: Any, info: ValidationInfo) -> Any:
        """A custom metric's user_config is checked key by key; other metrics' user_config stays as given."""
        if info.data.get("type") != "custom" or not isinstance(value, dict):
            return value
        from pydantic import ValidationError

        try:
            return CustomMetricConfig.model_validate(value)
        except ValidationError as err:
            problems = [
                (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "")
                + e["msg"].removeprefix("Value error, ")
                for e in err.errors()
            ]
            raise ValueError("; ".join(problems)) from None

    @model_validator(mode="after")
    def _custom_needs(self) -> Metric:
        if self.type != "custom":
            given = sorted({"evaluate_func", "metric_func"} & set(self.user_config or {}))
            if given:
                raise ValueError(f"user_config.{given[0]} works only on a metric of type `custom`")
            return self
        if not isinstance(self.user_config, CustomMetricConfig):
            raise ValueError("a custom metric needs user_config: {user_script, evaluate_func or metric_func}")
        if not self.sub_types:
            raise ValueError("a custom metric needs sub_types: one per value its function returns")
        unset = [s.name for s in self.sub_types if s.higher_is_better is None]
        if unset:
            raise ValueError(f"custom sub_types need higher_is_better (true or false): {', '.join(unset)}")
        return self


class Evaluator(Strict):
    metrics: list[Metric] = Field(default_factory=list)


# ---------------------------------------------------------------- search


class SearchStrategy(Strict):
    renamed = {"search_algorithm": "sampler", "search_algorithm_config": "sampler_config"}
    execution_order: Literal["joint", "pass-by-pass"] = "joint"
    sampler: Literal["exhaustive", "sequential", "random", "tpe"] = "sequential"
    sampler_config: dict[str, Any] | None = None
    max_iter: int | None = Field(None, gt=0)
    max_time: float | None = Field(None, gt=0)
    max_samples: int | None = Field(None, gt=0)
    stop_when_goals_met: bool = False
    output_model_num: int | None = None
    include_pass_params: bool | None = None
    seed: int = 0


# ---------------------------------------------------------------- the run


class PassEntry(Strict):
    """One pass: `type` names it; its parameters are validated by the pass's own model."""

    model_config = Strict.model_config | {"extra": "allow"}
    type: str = Field(description="pass type, e.g. LoRA, MergeAdapterWeights, ModelBuilder")
    disable_search: bool = False
    host: str | None = None


FOLDER_SCHEMES = ("s3", "az", "abfs", "abfss")  # object stores cache_dir and output_dir may name


def folder_problem(value: str) -> str | None:
    """Why `value` cannot be a cache_dir or output_dir (None: it can)."""
    scheme = value.split("://", 1)[0].lower() if "://" in value else None
    if scheme is None or scheme in FOLDER_SCHEMES:
        return None
    schemes = ", ".join(f"{s}://" for s in FOLDER_SCHEMES)
    return f"{scheme}:// is not a place to keep results; give a local folder or an {schemes} URL"


class RunConfig(Strict):
    workflow_id: str | None = None
    input_model: InputModel
    data_configs: list[DataConfig] = Field(default_factory=list)
    systems: dict[str, System] = Field(default_factory=dict)
    passes: dict[str, PassEntry | list[PassEntry]] = Field(
        default_factory=dict, description="in order; a list of configs under one name: alternatives to search"
    )
    evaluators: dict[str, Evaluator] = Field(default_factory=dict)
    azureml_client: AzureMLClient | None = None
    tracking: Tracking | None = Field(None, description="experiment tracking (MLflow)")
    # engine settings (top level in the current form; under `engine` in the old one)
    host: str | None = Field(None, description="system that runs the passes")
    target: str | None = Field(None, description="system the model is optimized for and evaluated on")
    search_strategy: Literal[False] | SearchStrategy | None = None
    evaluator: str | None = Field(None, description="name of an evaluator in `evaluators`")
    evaluate_input_model: bool = True
    cache_dir: str = Field(
        ".slimtune-cache",
        description="pass outputs, keyed by content; a folder, or an s3:// az:// abfs:// URL (a shared cache)",
    )
    output_dir: str = Field(
        "slimtune-output", description="final model/ and run.json; a folder, or an s3:// az:// abfs:// URL"
    )
    log_severity_level: int = Field(1, ge=0, le=4, description="0 verbose ... 4 fatal")
    skip_memory_check: bool = Field(
        False, description="run even when a pass's memory estimate exceeds the memory available"
    )
    clean_cache: bool = False
    plot_pareto_frontier: bool = False
    publish: list[str] = Field(
        default_factory=list,
        description="earlier stages (pass names) to publish beside the final model, into output_dir/stages/NAME "
        "(run.json always points to every stage's folder in the cache)",
    )

    @field_validator("cache_dir", "output_dir")
    @classmethod
    def _folder_or_bucket(cls, value: str) -> str:
        problem = folder_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("search_strategy", mode="before")
    @classmethod
    def _true_means_default(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value not in (False, None) and not isinstance(value, dict):
            raise ValueError(
                f"must be false or a mapping (sampler, execution_order, max_iter, ...), got {type(value).__name__}"
            )
        return value

    @field_validator("passes", mode="before")
    @classmethod
    def _pass_shapes(cls, value: Any) -> Any:
        """One clear message per bad entry (a union's branches would each add their own)."""
        if not isinstance(value, dict):
            return value
        problems = []
        for name, entry in value.items():
            if isinstance(entry, list):
                bad = [i for i, alt in enumerate(entry) if not isinstance(alt, dict)]
                if bad:
                    problems.append(
                        f"passes.{name}: alternatives must be pass configs (mappings); item {bad[0]} is not"
                    )
            elif not isinstance(entry, dict):
                problems.append(
                    f"passes.{name}: must be a pass config (a mapping with `type`) or a list of them, "
                    f"got {type(entry).__name__}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _unique_data_names(self) -> RunConfig:
        names = [d.name for d in self.data_configs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"data_configs: duplicate names {dup}")
        return self
