"""The Ray system on a real two-node Ray cluster started on this machine (ray.cluster_utils.Cluster: a head and a
second node, one CPU each, both reading the same cache folder as a cluster's nodes read a shared file system),
torn down at the end: a search spread over both nodes with its LoRA trained once, two-worker training through Ray
Train that matches one process, and the faults: a node killed mid-search, a training worker killed mid-run, an
unreachable cluster, resources no node has, a runtime environment that does not build."""

from __future__ import annotations

import os

# every node and driver on 127.0.0.1: Ray otherwise takes the address of the machine's outward interface, and
# the project's tests and benchmarks talk to loopback only (read by ray_constants at import, so before `import ray`)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from workflows import emotion_data_config

from slimtune.cli.main import main
from slimtune.engine.cache import Cache

LORA = {
    "type": "LoRA",
    "r": 4,
    "alpha": 8,
    "train_data_config": "emotion",
    "eval_dataset_size": 0.2,
    "training_args": {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 2},
}
BUILDER = {"type": "ModelBuilder", "int4_block_size": {"search": [16, 32, 64, 128]}}
# ranked by size, which differs for every block size: the tiny model's accuracy (0) and latency (noise) would
# leave the choice to chance
BY_SIZE = {
    "quality": {
        "metrics": [
            {
                "name": "size",
                "type": "size",
                "data_config": "emotion",
                "sub_types": [{"name": "size", "priority": 1}],
            }
        ]
    }
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def free_port() -> int:
    """A port nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node on this machine, one CPU each; the second one is `cluster.second`. The
    head serves Ray Client (`ray://`) on `cluster.client_port`, as `ray start --head` does."""
    client_port = free_port()
    started = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "ray_client_server_port": client_port},
    )
    started.client_port = client_port
    try:
        started.second = started.add_node(num_cpus=1)
        started.wait_for_nodes()
        yield started
    finally:
        if ray.is_initialized():
            ray.shutdown()
        started.shutdown()


def write(folder: Path, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg.setdefault("cache_dir", "cache")
    cfg.setdefault("output_dir", "out")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_json(path: Path) -> dict:
    return json.loads((path.parent / "out" / "run.json").read_text())


def ray_system(address: str | None, **settings) -> dict:
    """The Olive form: the Ray settings under `config`."""
    return {"cluster": {"type": "Ray", "config": {"address": address, **settings}}}


def search_config(model: Path, address: str) -> dict:
    return {
        "input_model": {"model_path": str(model)},
        "data_configs": [emotion_data_config(80)],
        "systems": ray_system(address, placement_strategy="SPREAD"),
        "host": "cluster",
        "passes": {"lora": LORA, "merge": {"type": "MergeAdapterWeights"}, "builder": BUILDER},
        "search_strategy": {"sampler": "exhaustive"},
        "evaluators": BY_SIZE,
        "evaluator": "quality",
    }


def node_ids(records: list[dict]) -> set[str]:
    return {r["node"] for r in records}


def assert_cache_whole(cache_dir: Path) -> None:
    """Every entry is complete and matches its manifest; no attempt is left half-written."""
    cache = Cache(cache_dir)
    folders = sorted((cache_dir / "entries").iterdir())
    assert folders and all(cache.lookup(f.name) is not None for f in folders)
    assert all(not cache.problems(cache.lookup(f.name)) for f in folders)
    assert not list((cache_dir / "tmp").glob("*"))


def onnx_files(folder: Path) -> dict[str, str]:
    """The sha256 of each ONNX file of a published model (its JSON files hold the run's paths)."""
    from slimtune.files import sha256_file

    found = {p.name: sha256_file(p) for p in folder.iterdir() if ".onnx" in p.name}
    assert found
    return found


def raylet_children_running(node, task: str) -> bool:
    """Whether a worker of this Ray node is running `task` now (Ray names the process after its task)."""
    raylet = node.all_processes["raylet"][0].process.pid
    try:
        children = psutil.Process(raylet).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            if task in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


# ---------------------------------------------------------------- search over the cluster


def test_auto_with_no_cluster_running_is_named(tiny, tmp_path):
    """First in the file, before the module's cluster starts: `address: auto` (join the cluster running on this
    machine) with none running stops the run, named, in its own process as a user starts it."""
    from ray._private.services import find_gcs_addresses

    assert not find_gcs_addresses(), "a Ray cluster already runs on this machine: `auto` would join it"
    path = write(tmp_path, build_alone(tiny, {"type": "Ray", "config": {"address": "auto"}}))
    done = run_in_own_process(path, expect=2)
    assert "systems.here.address: cannot reach the Ray cluster at auto" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_search_spreads_over_both_nodes_and_survives_losing_one(tiny, cluster, tmp_path):
    # fault-free: LoRA trained once, the export candidates spread over both nodes
    path = write(tmp_path / "whole", search_config(tiny, cluster.address))
    assert main(["run", "--config", str(path)]) == 0
    record = run_json(path)
    candidates = record["candidates"]
    assert len(candidates) == 4 and all(c["status"] == "ok" for c in candidates)
    passes = [p for c in candidates for p in c["passes"]]
    assert all(p["node"] for p in passes)  # every pass names the node it ran on
    assert [p["cache_hit"] for p in passes if p["name"] == "lora"].count(False) == 1
    built = [p for p in passes if p["name"] == "builder" and not p["cache_hit"]]
    assert len(built) == 4 and len(node_ids(built)) == 2
    assert all(p["node"] for p in record["passes"])
    chosen = next(c for c in candidates if c["chosen"])
    assert_cache_whole(path.parent / "cache")

    # the second node is killed while it runs a candidate's pass: its work is redone on the head node
    finished, killed = threading.Event(), []

    def kill_second_node_mid_task() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not finished.is_set():
            merged = any((tmp_path / "killed" / "cache" / "entries").glob("*/output/model.safetensors"))
            if merged and raylet_children_running(cluster.second, "run_on_node"):
                cluster.remove_node(cluster.second, allow_graceful=False)
                killed.append(time.time())
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_second_node_mid_task, daemon=True)
    path = write(tmp_path / "killed", search_config(tiny, cluster.address))
    watcher.start()
    try:
        assert main(["run", "--config", str(path)]) == 0
    finally:
        finished.set()
        watcher.join()
        if killed:
            cluster.second = cluster.add_node(num_cpus=1)  # back to two nodes for the next tests
            cluster.wait_for_nodes()
    assert killed, "the second node never ran a pass after the merge: the test did not test a fault"
    again = run_json(path)
    assert all(c["status"] == "ok" for c in again["candidates"])
    rechosen = next(c for c in again["candidates"] if c["chosen"])
    assert rechosen["params"] == chosen["params"]
    assert again["passes"][-1]["key"] == record["passes"][-1]["key"]
    assert onnx_files(path.parent / "out" / "model") == onnx_files(tmp_path / "whole" / "out" / "model")
    assert_cache_whole(path.parent / "cache")


def cluster_node_names(cluster) -> set[str]:
    """run.json's `node` of each live node of the test cluster (systems.ray.node_name's form)."""
    return {f"{n.node_ip_address}/{n.node_id[:12]}" for n in cluster.list_all_nodes()}


PROGRESS = re.compile(r"^search: (\d+) running, (\d+) done, (\d+) failed$", re.M)


def test_tpe_on_the_cluster_keeps_a_bounded_number_in_flight_and_names_a_failed_candidates_node(
    tiny, cluster, tmp_path, capsys, monkeypatch
):
    from slimtune.search.samplers import TPESampler

    asked: list[int] = []  # after each ask: how many candidates were asked and not yet told
    suggest = TPESampler.suggest

    def counted(self):
        candidate = suggest(self)
        asked.append(len(self.trials))
        return candidate

    monkeypatch.setattr(TPESampler, "suggest", counted)
    builder = {
        "type": "ModelBuilder",
        "int4_algo_config": {"search": ["no_such_algorithm", "rtn"]},
        "int4_block_size": {"search": [32, 64]},
    }
    cfg = search_config(tiny, cluster.address)
    cfg["passes"] = {"lora": LORA, "builder": builder}
    cfg["search_strategy"] = {"sampler": "tpe", "seed": 0}
    path = write(tmp_path, cfg)
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    record = run_json(path)
    assert record["search"]["strategy"]["sampler"] == "tpe"
    candidates = record["candidates"]
    assert len(candidates) == 4  # the whole finite space, each point once
    # two candidates were in flight at once (the cluster's two CPUs), never more
    assert "search: up to 2 candidates at once" in out
    assert max(asked) == 2
    failed = [c for c in candidates if c["status"] == "failed"]
    assert len(failed) == 2 and record["search"]["failed"] == 2
    nodes = cluster_node_names(cluster)
    for candidate in failed:
        assert candidate["params"]["builder"]["int4_algo_config"] == "no_such_algorithm"
        assert "no_such_algorithm" in candidate["reason"]
        stopped = candidate["passes"][-1]
        assert stopped["name"] == "builder" and stopped["failed"]
        assert stopped["node"] in nodes  # the Ray node it failed on, not the driver's host
    ok = [c for c in candidates if c["status"] == "ok"]
    assert len(ok) == 2 and any(c["chosen"] for c in ok)
    assert all(p["node"] in nodes for c in ok for p in c["passes"] if not p["cache_hit"])
    lora = [p for c in candidates for p in c["passes"] if p["name"] == "lora"]
    assert [p["cache_hit"] for p in lora].count(False) == 1  # the shared prefix ran once
    # progress after each result: never more running than the bound, and the end counts every candidate
    progress = [tuple(map(int, m)) for m in PROGRESS.findall(out)]
    assert progress and all(running <= 2 for running, _, _ in progress)
    assert progress[-1] == (0, 2, 2)
    assert_cache_whole(path.parent / "cache")


def test_a_killed_driver_leaves_a_rerun_only_what_is_missing(tiny, cluster, tmp_path, monkeypatch):
    # `address: auto` joins the running cluster (RAY_ADDRESS, as `ray job submit` and KubeRay's head set it)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    path = write(tmp_path, search_config(tiny, "auto"))
    entries = tmp_path / "cache" / "entries"
    driver = subprocess.Popen(
        [sys.executable, "-m", "slimtune", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = False
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            merged = any(entries.glob("*/output/model.safetensors"))
            if merged and any(raylet_children_running(n, "run_on_node") for n in cluster.list_all_nodes()):
                driver.kill()  # SIGKILL: no handler, no cleanup of its own
                killed = True
                break
            time.sleep(0.2)
    finally:
        if driver.poll() is None and not killed:
            driver.kill()
        driver.wait()
    assert killed, "the driver finished before a candidate's build started: the test did not test a fault"
    # the driver's tasks end with it (Ray ends a job's workers when its driver is gone)
    deadline = time.time() + 60
    while any(raylet_children_running(n, "run_on_node") for n in cluster.list_all_nodes()):
        assert time.time() < deadline, "a task of the killed driver still runs after 60 s"
        time.sleep(0.5)
    before = {p.name for p in entries.iterdir()}
    assert len(before) >= 2  # LoRA and the merge at least

    assert main(["run", "--config", str(path)]) == 0
    record = run_json(path)
    assert all(c["status"] == "ok" for c in record["candidates"])
    passes = [p for c in record["candidates"] for p in c["passes"]]
    # what the killed driver committed is reused, and only what was missing is run, once each
    assert all(p["cache_hit"] for p in passes if p["key"] in before)
    redone = [p["key"] for p in passes if not p["cache_hit"]]
    assert redone and len(redone) == len(set(redone)) and not set(redone) & before
    assert {p["name"] for p in passes if not p["cache_hit"]} == {"builder"}
    assert {p["node"] for p in passes if not p["cache_hit"]} <= cluster_node_names(cluster)
    assert_cache_whole(tmp_path / "cache")


def build_alone(model: Path, system: dict) -> dict:
    """One ModelBuilder pass on the input model (the cheapest pass), hosted on `system`."""
    return {
        "input_model": {"model_path": str(model)},
        "data_configs": [emotion_data_config(40)],
        "systems": {"here": system},
        "host": "here",
        "passes": {"builder": {"type": "ModelBuilder"}},
        "evaluate_input_model": False,
    }


def run_in_own_process(path: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """`slimtune run` as a user starts it, without RAY_ADDRESS; its exit code must be `expect`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "slimtune", "run", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == expect, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_a_ray_client_address_runs_the_passes_on_that_cluster(tiny, cluster, tmp_path):
    # in its own process: a Ray Client connection is process-wide, like a second cluster (below)
    address = f"ray://127.0.0.1:{cluster.client_port}"
    path = write(tmp_path, build_alone(tiny, {"type": "Ray", "config": {"address": address}}))
    done = run_in_own_process(path)
    assert f"ray: connecting to {address} (systems.here)" in done.stdout
    assert run_json(path)["passes"][0]["node"] in cluster_node_names(cluster)
    assert_cache_whole(tmp_path / "cache")


def test_no_address_starts_a_cluster_of_its_own(tiny, cluster, tmp_path):
    # a cluster runs on this machine (the fixture's, written where `ray.init()` looks): left out, the address
    # still means a new cluster here, stopped when the run ends. In its own process, as a user runs it: a
    # process that started a cluster and then joins another one cannot start Ray Train there (its
    # controller is pinned to the driver's node of the first), which would break the training tests below
    path = write(tmp_path, build_alone(tiny, {"type": "Ray"}))
    done = run_in_own_process(path)
    assert "ray: connecting to a new local cluster (systems.here)" in done.stdout
    node = run_json(path)["passes"][0]["node"]
    assert re.fullmatch(r"[0-9.]+/[0-9a-f]{12}", node) and node not in cluster_node_names(cluster)


# ---------------------------------------------------------------- training across workers


TRAIN = {
    "type": "LoRA",
    "r": 4,
    "alpha": 8,
    "train_data_config": "emotion",
    # effective batch 4: 2 x 2 accumulation in one process, 2 x 1 on each of two workers
    "training_args": {
        "max_steps": 6,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "save_steps": 2,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
    },
}


def training_config(model: Path, address: str | None) -> dict:
    cfg = {
        "input_model": {"model_path": str(model)},
        "data_configs": [emotion_data_config(40)],
        "passes": {"lora": TRAIN},
        "evaluate_input_model": False,
    }
    if address is not None:
        cfg["systems"] = ray_system(address, num_workers=2)
        cfg["host"] = "cluster"
    return cfg


def losses(record: dict) -> list[float]:
    return [point["loss"] for point in record["passes"][0]["metrics"]["loss_curve"]]


@pytest.fixture(scope="module")
def trained(tiny, cluster, tmp_path_factory):
    """The same LoRA pass in one process and on two Ray Train workers, no fault."""
    out = {}
    for name, address in (("one", None), ("two", cluster.address)):
        path = write(tmp_path_factory.mktemp(name), training_config(tiny, address))
        assert main(["run", "--config", str(path)]) == 0
        out[name] = run_json(path)
    return out


def test_two_workers_train_as_one_process_does(trained):
    one, two = trained["one"], trained["two"]
    assert len(losses(one)) == len(losses(two)) == 6
    # the same rows make each step's batch: the first loss (before any update) is the same to float rounding;
    # later ones drift by the order gloo sums the gradients in, which Adam amplifies (3e-4 relative seen)
    assert losses(two)[0] == pytest.approx(losses(one)[0], rel=1e-6)
    assert losses(two) == pytest.approx(losses(one), rel=1e-3)
    lora = two["passes"][0]
    assert lora["metrics"]["world_size"] == 2
    # the effective batch is the config's whatever the worker count: each worker steps on half of it
    single, both = one["passes"][0]["metrics"]["batch"], lora["metrics"]["batch"]
    assert single["effective_batch"] == both["effective_batch"] == 4
    assert (single["ranks"], single["accumulation"]) == (1, 2) and (both["ranks"], both["accumulation"]) == (
        2,
        1,
    )
    assert len(lora["node"].split(",")) == 2  # one worker on each node (one CPU each)


def test_a_killed_training_worker_resumes_from_the_last_checkpoint(tiny, cluster, trained, tmp_path):
    path = write(tmp_path, training_config(tiny, cluster.address))
    work = tmp_path / "cache" / "work"
    killed: list[int] = []

    def kill_rank_one_after_a_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            ranks = list(work.glob("*/ray_nodes/1.json"))
            states = list(work.glob("*/checkpoints/checkpoint-*/trainer_state.json"))
            if ranks and states:
                pid = json.loads(ranks[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_rank_one_after_a_checkpoint, daemon=True)
    watcher.start()
    assert main(["run", "--config", str(path)]) == 0
    watcher.join()
    assert killed, "no worker was killed: the test did not test a fault"
    lora = run_json(path)["passes"][0]
    # restarted from a checkpoint before the last step (the first attempt's work folder was empty): the
    # restarted group trained the remaining steps, not all 6 and not none
    assert lora["metrics"]["resumed_from"] in ("checkpoint-2", "checkpoint-4")
    assert lora["metrics"]["steps"] == 6
    assert losses(run_json(path)) == pytest.approx(losses(trained["two"]), rel=1e-3)
    assert_cache_whole(tmp_path / "cache")


# ---------------------------------------------------------------- clear errors


def test_an_unreachable_cluster_is_named(tiny, tmp_path, capsys):
    port = free_port()
    path = write(tmp_path, training_config(tiny, f"ray://127.0.0.1:{port}"))
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"systems.cluster.address: cannot reach the Ray cluster at ray://127.0.0.1:{port}" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_malformed_address_fails_validation(tiny, tmp_path, capsys):
    path = write(tmp_path, training_config(tiny, "http://head:8265"))
    assert main(["validate", str(path)]) == 2
    assert "systems.cluster.address: 'http://head:8265' is not a Ray address" in capsys.readouterr().err


def test_resources_no_node_has_are_named_with_what_the_cluster_has(tiny, cluster, tmp_path, capsys):
    cfg = training_config(tiny, cluster.address)
    cfg["systems"] = {
        "cluster": {"type": "Ray", "address": cluster.address, "resources_per_worker": {"CPU": 8}}
    }
    path = write(tmp_path, cfg)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "systems.cluster.resources_per_worker" in err and "CPU 8" in err
    assert "2 nodes" in err and "CPU 1" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def slimtune_lines(err: str) -> str:
    """stderr without the lines Ray forwards from its own processes: a raylet that fails to build a runtime
    environment logs its own traceback, "(raylet) Traceback ...", at a time of Ray's choosing (seen once in
    four CI runs); those lines are Ray's log, not slimtune's answer to the user."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", err)
    return "\n".join(
        line for line in plain.splitlines() if not re.match(r"\s*\((raylet|[\w.]*\s*pid=)[^)]*\)", line)
    )


def test_a_runtime_env_that_does_not_build_is_named(tiny, cluster, tmp_path, capsys):
    cfg = training_config(tiny, cluster.address)
    cfg["systems"]["cluster"]["config"]["num_workers"] = 1
    cfg["systems"]["cluster"]["config"]["runtime_env"] = {"conda": "no-such-environment"}
    path = write(tmp_path, cfg)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "systems.cluster.runtime_env" in err and "Traceback" not in slimtune_lines(err)
    assert not any((tmp_path / "cache" / "entries").glob("*"))


# ---------------------------------------------------------------- GPUs


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_gpu_workers_train_through_nccl(tiny, tmp_path):
    import torch

    workers = min(torch.cuda.device_count(), 2)
    cfg = training_config(tiny, None)
    cfg["systems"] = {
        "cluster": {
            "type": "Ray",
            "accelerators": ["gpu"],
            "num_workers": workers,
            "resources_per_worker": {"CPU": 1},
        }
    }
    cfg["host"] = "cluster"
    path = write(tmp_path, cfg)
    assert main(["run", "--config", str(path)]) == 0
    lora = run_json(path)["passes"][0]
    assert lora["metrics"]["device"] == "cuda"
    assert lora["metrics"].get("world_size", 1) == workers
