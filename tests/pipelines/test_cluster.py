"""A multi-node ``ray.cluster_utils.Cluster`` (head + 2 CPU worker nodes, 100 MiB object stores each): work
is spread over nodes, and a job still ends complete and without duplicates when a worker node that runs a
generate actor is removed mid-run. One job shows both: the spread from the generate calls that started
before the removal (the healthy cluster), the completeness from its output.

The cluster runs in a subprocess (this file run as a script) with its own ``RAY_TMPDIR``: the session's
``ray_local`` Ray, and any other Ray on the machine, is neither shut down nor reachable from it, and
``ray.init()`` elsewhere never discovers this cluster through ``/tmp/ray/ray_current_cluster``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from stand_in_engines import FlatEngine, stage_with

from pipelines.config import PipelineConfig
from pipelines.stages.generate import GenerateStage

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MIB = 1024**2
NODE_CPUS = 2
N_PROMPTS = 32
SHARD_SIZE = 2  # 16 units
# two 1.5-CPU actors never share a 2-CPU node; after one worker node is gone, the restarted actor still fits
RESOURCES = {"actors": 2, "cpus_per_actor": 1.5, "writer_cpus": 0.5, "preprocess_cpus": 0.5, "batch_size": 2}
SUBPROCESS_TIMEOUT_S = 540


def make_config(checkpoint: str, prompts: Path, output: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "cluster-test",
            "input": {"kind": "prompts", "uri": str(prompts)},
            "model": {"checkpoint": checkpoint, "mode": "t2i", "steps": 2},
            "output": {"uri": str(output), "formats": ["parquet", "webdataset"], "shard_size": SHARD_SIZE},
            "resources": RESOURCES,
        }
    )


def node_recording_stage(record_dir: str, delay_s: float) -> type[GenerateStage]:
    """A stand-in generate stage (no model: the claims are about where work runs and what survives a lost node)
    that writes one file per call naming the node (and process) that ran it."""

    class NodeRecordingStage(stage_with(FlatEngine(64))):
        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            import ray

            unit = int(batch["unit"].iloc[0])
            record = {"unit": unit, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
            Path(record_dir).mkdir(parents=True, exist_ok=True)
            name = f"{unit:05d}-{uuid.uuid4().hex}"
            Path(record_dir, f"{name}.start.json").write_text(json.dumps(record | {"t": time.time()}))
            time.sleep(delay_s)  # long enough for a node to be removed while units are in flight
            out = super().__call__(batch)
            Path(record_dir, f"{name}.done.json").write_text(json.dumps(record | {"t": time.time()}))
            return out

    return NodeRecordingStage


# --- the subprocess ------------------------------------------------------------------------------------------


def _started(records: Path) -> list[dict]:
    """The start records written so far; one still being written is read at the next poll."""
    found = []
    for path in sorted(records.glob("*.start.json")):
        try:
            found.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return found


def _remove_a_busy_worker(cluster: Any, workers: list, output: Path, records: Path, result: dict) -> None:
    """Once the first unit has committed and both generate actors have started calls, remove a worker node on
    which a generate actor has run."""
    try:
        deadline = time.time() + 300
        by_id = {w.node_id: w for w in workers}
        while time.time() < deadline and not (
            list((output / "_units").glob("*.json"))
            and len({r["pid"] for r in _started(records)}) >= RESOURCES["actors"]
        ):
            time.sleep(0.05)
        victim = None
        while time.time() < deadline and victim is None:
            for record in _started(records):
                node = record["node"]
                if node in by_id:
                    victim = by_id[node]
                    break
            time.sleep(0.05)
        if victim is None:
            result["remover_error"] = "no generate call ran on a worker node"
            return
        result["committed_before_removal"] = len(list((output / "_units").glob("*.json")))
        result["removed"] = victim.node_id
        result["removed_at"] = time.time()
        cluster.remove_node(victim, allow_graceful=False)
        result["removal_done_at"] = time.time()
    except Exception as exc:  # reported through the result file
        result["remover_error"] = f"{type(exc).__name__}: {exc}"


def cluster_main(work: Path, checkpoint: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.run import run_pipeline

    result: dict[str, Any] = {}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "object_store_memory": 100 * MIB, "include_dashboard": False},
    )
    try:
        workers = [cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=100 * MIB) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        result["head"] = cluster.head_node.node_id
        result["workers"] = [w.node_id for w in workers]
        result["nodes_alive_before"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

        prompts = work / "prompts.txt"
        output, records = work / "removal", work / "removal-nodes"
        remover = threading.Thread(
            target=_remove_a_busy_worker, args=(cluster, workers, output, records, result), daemon=True
        )
        remover.start()
        report = run_pipeline(
            make_config(checkpoint, prompts, output),
            generate_cls=node_recording_stage(str(records), 1.0),
            progress=False,
        )
        result["finished_at"] = time.time()
        remover.join(timeout=60)
        result["removal_summary"] = report.summary
        result["nodes_alive_after"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    finally:
        (work / "result.json").write_text(json.dumps(result, default=str))
        ray.shutdown()
        cluster.shutdown()


# --- the tests -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from unidiffuser.tiny import write_tiny_checkpoint

    work = tmp_path_factory.mktemp("cluster")
    checkpoint = write_tiny_checkpoint(work / "unidiffuser", version=1)
    (work / "prompts.txt").write_text("\n".join(f"cluster prompt {i}" for i in range(N_PROMPTS)) + "\n")
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths live under it
    # generous start-up waits: on a loaded 2-CPU machine a node can take over the 10 s default to register;
    # a removed node is declared dead after 4 failed health checks 1 s apart instead of Ray's 5 at 3 s (a
    # killed raylet refuses at once; a loaded one has 3 s to answer each check)
    env = os.environ | {
        "RAY_TMPDIR": ray_tmp,
        "RAY_raylet_start_wait_time_s": "120",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "3000",
        "RAY_health_check_failure_threshold": "4",
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, __file__, str(work), str(checkpoint)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a hung cluster can be killed as a whole
    )
    try:
        log, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"the cluster subprocess did not finish in {SUBPROCESS_TIMEOUT_S} s:\n{log[-6000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result_path = work / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    assert proc.returncode == 0, (
        f"cluster subprocess failed ({proc.returncode}); result {result}\n{log[-8000:]}"
    )
    return result | {"work": work, "log": log}


def expected_keys() -> list[str]:
    return [f"prompts-{i:09d}" for i in range(N_PROMPTS)]


def check_output(root: Path, summary: dict) -> None:
    """Every key exactly once, parquet and tar agree, markers for all units, the summary adds up."""
    keys: list[str] = []
    for shard in sorted((root / "parquet").glob("*.parquet")):
        rows = pq.read_table(shard, columns=["key", "image", "width"]).to_pylist()
        with tarfile.open(root / "webdataset" / f"{shard.stem}.tar") as tar:
            metas = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
        assert [m["key"] for m in metas] == [row["key"] for row in rows]
        assert all(row["image"] and row["width"] == 64 for row in rows)
        keys += [row["key"] for row in rows]
    duplicates = {k: n for k, n in Counter(keys).items() if n > 1}
    assert not duplicates, f"written more than once: {duplicates}"
    assert sorted(keys) == expected_keys()
    assert not (root / "errors").exists() and not (root / "rejected").exists()
    assert sorted(p.name for p in (root / "_units").glob("*.json")) == [
        f"{u:05d}.json" for u in range(N_PROMPTS // SHARD_SIZE)
    ]
    assert summary["inputs"] == summary["written"] == N_PROMPTS
    assert summary["inputs"] == summary["written"] + summary["rejected"] + summary["errored"]
    on_disk = json.loads((root / "_summary.json").read_text())
    assert {k: on_disk[k] for k in ("inputs", "written", "units")} == {
        k: summary[k] for k in ("inputs", "written", "units")
    }


def records(folder: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"*.{kind}.json"))]


def test_work_is_spread_over_nodes_and_output_is_complete(cluster_run: dict[str, Any]) -> None:
    work = cluster_run["work"]
    nodes = {cluster_run["head"], *cluster_run["workers"]}
    assert set(cluster_run["nodes_alive_before"]) == nodes and len(nodes) == 3
    # the generate calls of the healthy cluster: those that started before the worker node was removed
    before = [r for r in records(work / "removal-nodes", "start") if r["t"] < cluster_run["removed_at"]]
    assert before, "no generate call started before the removal"
    once = Counter(r["unit"] for r in before)
    assert max(once.values()) == 1, f"a unit was retried on the healthy cluster: {dict(once)}"
    used = Counter(r["node"] for r in before)
    assert set(used) <= nodes
    assert len(used) >= 2, f"every unit ran on one node: {dict(used)}"
    assert len({r["pid"] for r in before}) == RESOURCES["actors"]
    check_output(work / "removal", cluster_run["removal_summary"])


def test_removing_a_worker_node_mid_run_still_completes_without_duplicates(
    cluster_run: dict[str, Any],
) -> None:
    work = cluster_run["work"]
    assert "remover_error" not in cluster_run, cluster_run["remover_error"]
    removed = cluster_run["removed"]
    assert removed in cluster_run["workers"]
    assert removed not in cluster_run["nodes_alive_after"]
    assert len(cluster_run["nodes_alive_after"]) == 2
    units = N_PROMPTS // SHARD_SIZE
    assert 1 <= cluster_run["committed_before_removal"] < units, "the node must go while units remain"
    assert cluster_run["removal_done_at"] < cluster_run["finished_at"]
    started = records(work / "removal-nodes", "start")
    done = records(work / "removal-nodes", "done")
    assert any(r["node"] == removed and r["t"] < cluster_run["removed_at"] for r in started), (
        "the removed node was running generate calls"
    )
    # every unit was generated to the end at least once, and the surviving nodes went on after the removal
    # (the removed node's actor process may still finish a call after its raylet is gone: Ray redoes it)
    assert {r["unit"] for r in done} == set(range(units))
    after = [r for r in done if r["t"] > cluster_run["removal_done_at"] and r["node"] != removed]
    assert after, "no unit was generated on a surviving node after the removal"
    redone = sorted(u for u, n in Counter(r["unit"] for r in started).items() if n > 1)
    print(f"units generated more than once because of the removal: {redone}")
    check_output(work / "removal", cluster_run["removal_summary"])
    assert cluster_run["removal_summary"]["units_run"] == units


if __name__ == "__main__":  # the cluster subprocess: python test_cluster.py WORK CHECKPOINT
    cluster_main(Path(sys.argv[1]), sys.argv[2])
