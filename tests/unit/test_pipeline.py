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


def _reports(**summary):
    return lambda cfg, run_dir: dict(summary)


def test_results_leave_out_the_figures_of_stages_whose_inputs_ran_again(monkeypatch, tmp_path):
    """A stage whose needed stage ran again since (here: the recommender with another seed) describes an earlier
    state of the run: `ecr-ray results` names it instead of setting its figures beside the new ones."""
    from ecr_ray import cli

    graph = [Stage("rec-train", run=_reports(), outputs=(), config=("rec.train.seed",)),
             Stage("rec-eval-pool", run=_reports(**{"recall@50": 0.25}), outputs=(), needs=("rec-train",)),
             Stage("gen-train", run=_reports(val_loss=3.5), outputs=()),
             Stage("gen-eval-pool", run=_reports(**{"dist-1": 0.125}), outputs=(), needs=("rec-train", "gen-train"))]
    monkeypatch.setattr(pipeline, "stage_graph", lambda cfg: graph)
    run_dir = RunDir(tmp_path / "run")
    names = [s.name for s in graph]
    pipeline.run(load_config("tiny"), run_dir)
    assert pipeline.stale_stages(run_dir, names) == set()

    graph[1] = Stage("rec-eval-pool", run=_reports(**{"recall@50": 0.5}), outputs=(), needs=("rec-train",))
    pipeline.run(load_config("tiny", ["rec.train.seed=7"]), run_dir, stages=["rec-train", "rec-eval-pool"])
    assert pipeline.stale_stages(run_dir, names) == {"gen-eval-pool"}

    page = tmp_path / "results.md"
    assert cli.main(["results", "--run-dir", str(tmp_path / "run"), "--out", str(page), "--readme", str(tmp_path / "none.md")]) == 0
    text = page.read_text()
    assert "| recommender R@50 | pool dev | 0.5000 |" in text and "| generator validation loss | held-out reviews | 3.5000 |" in text
    assert "batch response: Dist-1" not in text
    assert "Not shown: the figures of prepare-pool (no record), " in text and "gen-eval-pool (older than a stage it reads)" in text
