"""Failures injected for real: a Ray Train worker killed mid-training, a Ray Data inference actor killed
mid-stage. The runs finish with the same epochs and with every row once. And a pool whose batches are slow
is failed only after its own `stall_s`, not Ray Data's 30 minutes."""
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from ecr_ray.artifacts import POOL, prepared
from ecr_ray.pipeline import run_stages
from ecr_ray.rundir import RunDir

from tests.conftest import fast_config


def _kill_actor(class_prefix: str, until: float, started_after: float) -> int:
    """SIGKILL the process of a live actor started after `started_after` (epoch seconds) whose class name
    starts with `class_prefix`; its pid."""
    import ray

    while time.monotonic() < until:
        alive = [a for a in ray._private.state.actors().values() if a["State"] == "ALIVE" and a["StartTime"] / 1000 > started_after
                 and a["ActorClassName"].startswith(class_prefix)]
        if alive:
            os.kill(alive[0]["Pid"], signal.SIGKILL)
            return alive[0]["Pid"]
        time.sleep(0.2)
    raise AssertionError(f"no live {class_prefix} actor to kill")


def _registered_checkpoints(storage: Path) -> int:
    """Checkpoints the Ray Train controller has registered (a folder on disk alone may not be, yet)."""
    import json

    snapshots = list(storage.glob("recommender-*/checkpoint_manager_snapshot.json"))
    try:
        return len(json.loads(snapshots[0].read_text())["checkpoint_results"]) if snapshots else 0
    except (ValueError, KeyError):  # being written
        return 0


def _in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_killed_training_worker_resumes_from_the_last_checkpoint(labelled_run, ray_local, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    shutil.copytree(labelled_run.root, run_dir.root, dirs_exist_ok=True)
    cfg = fast_config("rec.train.num_workers=2", "rec.train.cpus_per_worker=0.5", "rec.train.epochs=6", "rec.patience=10")
    run_stages(cfg, run_dir, only=["rec-context-pool", "rec-cooccurrence"])

    started = time.time()
    thread, out = _in_thread(lambda: run_stages(cfg, run_dir, only=["rec-train"]))
    deadline = time.monotonic() + 600
    while not _registered_checkpoints(Path(run_dir.root, "train")):  # Ray Train holds the first epoch's checkpoint
        assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.5)
    _kill_actor("RayTrainWorker", deadline, started)
    thread.join(600)
    assert not thread.is_alive() and "result" in out, "training did not finish after the worker was killed"

    training = run_dir.read_json("reports/recommender.json")["training"]
    epochs = cfg.rec.pretrain_epochs + 6
    assert out["result"]["rec-train"]["epochs_run"] == training["epochs_run"] == epochs  # the same number of epochs
    assert len(training["resumed_at"]) == 1 and 1 <= training["resumed_at"][0] < epochs  # from a checkpoint, not from scratch


def test_a_killed_inference_actor_loses_and_duplicates_no_row(labelled_run, ray_local, tmp_path):
    run_dir = RunDir(tmp_path / "run")
    shutil.copytree(labelled_run.root, run_dir.root, dirs_exist_ok=True)
    cfg = fast_config("emotion.infer_pool.batch_size=8")  # many small batches: the kill lands mid-stage

    started = time.time()
    thread, out = _in_thread(lambda: run_stages(cfg, run_dir, only=["emotion-infer-pool"], force=True))
    _kill_actor("MapWorker(MapBatches(EmotionPredictor", time.monotonic() + 300, started)
    thread.join(600)
    assert not thread.is_alive() and "result" in out, "inference did not finish after its actor was killed"

    expected = run_dir.read_table(prepared(POOL, "user_utterances"), columns=["utterance_id"]).column("utterance_id").to_pylist()
    got = run_dir.read_table(f"emotion/utterances/{POOL}", columns=["utterance_id", "probs"]).to_pydict()
    assert len(got["utterance_id"]) == len(set(got["utterance_id"])) == len(expected)  # nothing duplicated
    assert set(got["utterance_id"]) == set(expected) and all(len(p) == 9 for p in got["probs"])  # nothing lost


class _Slow:
    """A Ray Data UDF whose batch takes `seconds` (as a 1.5B seeker's batch takes over 30 min on 2 AVX2 cores)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, batch):
        time.sleep(self.seconds)
        return batch


def test_a_pool_fails_only_after_its_own_stall_time(ray_local):
    import pytest
    from ray.data.context import DataContext

    from ecr_ray.config import ActorPool
    from ecr_ray.raytools import map_actors

    def run(stall_s: float) -> list[dict]:
        ds = ray_local.data.from_items([{"x": i} for i in range(2)], override_num_blocks=1)
        return map_actors(ds, _Slow, {"seconds": 6}, ActorPool(actors=1, cpus=0.5, batch_size=2, stall_s=stall_s)).take_all()

    default = DataContext.get_current().execution_no_progress_timeout_s
    with pytest.raises(Exception, match="made no progress"):  # a batch longer than the pool's stall time fails it
        run(2.0)
    assert sorted(r["x"] for r in run(-1)) == [0, 1]  # -1: a batch may take as long as it takes
    assert DataContext.get_current().execution_no_progress_timeout_s == default  # the pool's own, not the process's
