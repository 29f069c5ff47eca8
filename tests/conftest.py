"""Shared fixtures: the real data, one local Ray for the session, one prepared tiny run.

tests/unit/<package>/ need no Ray; tests/integration/ run the real Ray pieces (marked `integration`)."""
import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the offline path is what the tests exercise

import pytest

from ecr_ray.config import load_config

TINY_DIALOGUES = 120
PREPARE_STAGES = ["prepare", "linking-report"]
# emotion stages small enough for a test, still trained and inferred for real
FAST_EMOTION = ["emotion.teacher.max_examples=600", "emotion.eval_examples=200", "emotion.sample_size=80", "emotion.classifier.train.epochs=1"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def fast_config(*overrides):
    return load_config("tiny", [f"data.max_dialogues={TINY_DIALOGUES}", *FAST_EMOTION, *overrides])


@pytest.fixture(scope="session")
def data_root():
    return load_config("tiny").data.root()


@pytest.fixture
def tiny_cfg():
    return load_config("tiny", [f"data.max_dialogues={TINY_DIALOGUES}"])


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared_run(ray_local, tmp_path_factory):
    """The tiny preset prepared once on Ray Data: (config, RunDir, stage summaries)."""
    from ecr_ray.pipeline import run_stages
    from ecr_ray.rundir import RunDir

    cfg = load_config("tiny", [f"data.max_dialogues={TINY_DIALOGUES}"])
    run_dir = RunDir(tmp_path_factory.mktemp("run"))
    return cfg, run_dir, run_stages(cfg, run_dir, only=PREPARE_STAGES)


@pytest.fixture
def fresh_run(prepared_run, tmp_path):
    """A run directory of its own holding the tiny prepared pool (stages after prepare start clean)."""
    import shutil

    from ecr_ray.rundir import RunDir

    cfg, shared, _ = prepared_run
    shutil.copytree(shared.path("prepared"), tmp_path / "run" / "prepared")
    return RunDir(tmp_path / "run")


@pytest.fixture(scope="session")
def labelled_run(prepared_run, tmp_path_factory):
    """The tiny pool prepared and labelled with emotions once (the recommender's inputs): a RunDir."""
    import shutil

    from ecr_ray.pipeline import run_stages
    from ecr_ray.rundir import RunDir

    _, shared, _ = prepared_run
    run_dir = RunDir(tmp_path_factory.mktemp("labelled"))
    shutil.copytree(shared.root, run_dir.root, dirs_exist_ok=True)  # prepared artifacts and their manifests
    run_stages(fast_config(), run_dir, only=["emotion"])
    return run_dir


def raw_file_outside_the_tiny_pool(cfg, data_root, folder, n: int):
    """The pool file's last `n` dialogues by conversationId (beyond the tiny pool) as a raw ReDial file."""
    import json

    lines = (data_root / cfg.data.pool_file).read_text().splitlines()
    path = folder / "test_data.jsonl"
    path.write_text("\n".join(sorted(lines, key=lambda line: int(json.loads(line)["conversationId"]))[-n:]) + "\n")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Serve's HTTP proxy keeps the port it first started on for the whole Ray session: every test's local
# LLM server uses this one
SERVE_PORT = free_port()

REC = ["rec-context-pool", "rec-cooccurrence", "rec-train"]
GEN = ["gen-reviews", "gen-train", "gen-respond-pool", "gen-eval-pool", "gen-eval-served-pool"]
# the scorer's local server; the chat's recommender reads each named movie's stance (its own check in test_serve)
TINY_GEN = ["eval.scorer.max_tokens=60", f"llm_server.port={SERVE_PORT}", "rec.entity_stance=true", "eval.readings={informativeness: pairwise}"]


@pytest.fixture(scope="session")
def gen_run(labelled_run, tmp_path_factory):
    """The tiny pool with a trained stance model, recommender and generator (every model the chat needs): (config, RunDir, summaries)."""
    import shutil

    from ecr_ray.pipeline import run_stages
    from ecr_ray.rundir import RunDir

    run_dir = RunDir(tmp_path_factory.mktemp("gen"))
    shutil.copytree(labelled_run.root, run_dir.root, dirs_exist_ok=True)
    cfg = fast_config(*TINY_GEN)
    return cfg, run_dir, run_stages(cfg, run_dir, only=["stance"] + REC + GEN)
