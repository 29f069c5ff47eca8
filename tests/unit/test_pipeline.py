"""The runner: a stage that fails stops only the stages that need it; the run still reports what it did."""
import pytest

from ecr_ray import pipeline
from ecr_ray.artifacts import RUN_REPORT, SUMMARY, manifest
from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir
from ecr_ray.stage import Stage


def _writes(name):
    def run(cfg, run_dir):
        run_dir.write_text(f"out/{name}.txt", name)
        return {"wrote": name}
    return run


def _fails(cfg, run_dir):
    raise RuntimeError("no generator training examples")


def test_a_failing_stage_skips_its_dependents_and_the_rest_still_runs(monkeypatch, tmp_path):
    graph = [Stage("reviews", run=_fails, outputs=("out/reviews.txt",)),
             Stage("train", run=_writes("train"), outputs=("out/train.txt",), needs=("reviews",)),
             Stage("respond", run=_writes("respond"), outputs=("out/respond.txt",), needs=("train",)),
             Stage("recommend", run=_writes("recommend"), outputs=("out/recommend.txt",))]
    monkeypatch.setattr(pipeline, "stage_graph", lambda cfg: graph)
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(pipeline.StagesFailed) as failed:
        pipeline.run(load_config("tiny"), run_dir)
    assert failed.value.failed == {"reviews": "RuntimeError: no generator training examples",
                                   "train": "not run: it needs reviews, which failed",
                                   "respond": "not run: it needs train, which failed"}
    assert run_dir.read_text("out/recommend.txt") == "recommend" and run_dir.exists(manifest("recommend"))
    assert not run_dir.exists("out/train.txt") and not run_dir.exists(manifest("reviews"))  # a failed stage runs again next time
    summary = run_dir.read_json(SUMMARY)
    assert summary["recommend"]["wrote"] == "recommend" and "no generator training examples" in summary["reviews"]["failed"]
    report = run_dir.read_text(RUN_REPORT)
    assert "| reviews |" in report and "FAILED: RuntimeError: no generator training examples" in report and "Machine:" in report
