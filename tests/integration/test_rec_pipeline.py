"""The recommender stages end to end on the tiny labelled pool: Ray Data context embeddings, DDP
training on Ray Train, evaluation of the dev split and of a raw ReDial file, the ablations."""
import re
import shutil

import pytest

from ecr_ray.cli import main
from ecr_ray.data.kg import load_kg
from ecr_ray.artifacts import POOL, prepared
from ecr_ray.pipeline import run_stages
from ecr_ray.config import REC_METRICS as METRIC_KEYS
from ecr_ray.rec.ablations import PAPER, VARIANTS
from ecr_ray.rec.channels import MIX_GRID
from ecr_ray.rec.baselines import BASELINES
from ecr_ray.rundir import RunDir

from tests.conftest import FAST_EMOTION, TINY_DIALOGUES, fast_config, raw_file_outside_the_tiny_pool

DDP = ["rec.train.num_workers=2", "rec.train.cpus_per_worker=0.5"]


def _cli(command, run_dir, *extra):
    sets = [f"data.max_dialogues={TINY_DIALOGUES}", *FAST_EMOTION, *DDP]
    return main([command, "--config", "tiny", "--run-dir", run_dir.root, *[a for s in sets for a in ("--set", s)], *extra])


@pytest.fixture(scope="module")
def trained(labelled_run, ray_local, tmp_path_factory):
    run_dir = RunDir(tmp_path_factory.mktemp("rec"))
    shutil.copytree(labelled_run.root, run_dir.root, dirs_exist_ok=True)
    cfg = fast_config(*DDP)
    return cfg, run_dir, run_stages(cfg, run_dir, only=["rec"])


def test_train_and_evaluate_on_dev(trained):
    cfg, run_dir, summaries = trained
    assert list(summaries) == ["rec-context-pool", "rec-cooccurrence", "rec-train", "rec-eval-pool"]  # ablations only on request
    items = load_kg(cfg.data.path(cfg.data.kg_dir)).item_set
    turns = run_dir.read_table(prepared(POOL, "rec_turns")).to_pylist()
    with_target = [t for t in turns if any(i in items for i in t["target_items"])]
    assert summaries["rec-context-pool"] == {**summaries["rec-context-pool"], "contexts": len(with_target), "dim": 384}
    dev = sum(i in items for t in turns if t["split"] == "dev" for i in t["target_items"])

    report = run_dir.read_json("reports/eval-dev.json")
    assert report["examples"] == dev == report["liked"] + report["disliked"] + report["not_said"]
    assert report["counts"]["targets_outside_kg"] == sum(i == -1 for t in turns for i in t["target_items"])
    assert all(0 <= report[k] <= 1 for k in METRIC_KEYS)
    assert report["recall@1"] <= report["recall@10"] <= report["recall@50"]
    assert all(0 <= lo <= report[k] <= hi <= 1 for k, (lo, hi) in report["intervals"].items() if k in METRIC_KEYS)
    assert report["intervals"]["recall@50"][1] - report["intervals"]["recall@50"][0] > 0.01  # a few hundred examples: wide
    assert report["recall@50"] > 3 * 50 / len(items)  # a random ranking finds 0.8% at 50 (3 tiny epochs: ~6%)
    # R@n on items the dialogue had not mentioned: a subset of the examples, no easier than all of them with copying
    assert 0 < report["new"] < report["examples"] and all(0 <= report[f"recall_new@{k}"] <= 1 for k in (1, 10, 50))
    # the training-free baselines on the same examples, and the model's paired differences against each
    baselines = report["baselines"]
    assert set(baselines) == set(BASELINES) and all(b["examples"] == report["examples"] for b in baselines.values())
    assert report["variant"] == cfg.rec.variant == "hybrid"
    parts = report["variants"]  # the hybrid's learned part alone (the paper variant) and its channels alone, same examples
    assert set(parts) == {"paper", "channels alone"} and all(p["examples"] == report["examples"] for p in parts.values())
    added = report["differences"]["hybrid − channels alone"]
    assert added["recall@50"] == pytest.approx(report["recall@50"] - parts["channels alone"]["recall@50"])
    assert summaries["rec-eval-pool"]["paper − co-occurrence: recall@50"] == report["differences"]["paper − co-occurrence"]["recall@50"]
    diff = report["differences"]["hybrid − popularity"]
    assert diff["recall@50"] == pytest.approx(report["recall@50"] - baselines["popularity"]["recall@50"])
    lo, hi = diff["intervals"]["recall@50"]
    assert lo <= diff["recall@50"] <= hi
    assert summaries["rec-eval-pool"]["co-occurrence + copy: recall@50"] == baselines["co-occurrence + copy"]["recall@50"]
    trained_with = run_dir.read_json("reports/recommender.json")
    training = trained_with["training"]
    # the epoch is selected on training dialogues held out from the updates, never on the dev split
    assert training["train_examples"] + training["stop_examples"] + dev == trained_with["examples"]["examples"]
    assert 0 < training["stop_examples"] < training["train_examples"] and training["epochs_run"] <= cfg.rec.train.epochs
    assert trained_with["feedback_weights"] == {"like": 2.0, "dislike": 1.0, "not_said": 0.5}
    assert run_dir.exists("models/recommender/tables.npz")
    # ECR's model learned: an epoch after pre-training beat the network before training; its curve is in reports/
    assert training["best_epoch"] >= cfg.rec.pretrain_epochs
    assert [p["epoch"] for p in training["curve"]] == list(range(-1, training["epochs_run"]))
    assert f"| {training['best_epoch']} (selected) | train |" in run_dir.read_text("reports/recommender-curve.md")
    assert training["mix"]["weight"] in MIX_GRID  # the learned score's weight beside the channels, fitted on held-out dialogues
    assert set(training["mix"]["channels"]) == set(training["channel_fit"]["weights"])  # refitted beside it there
    assert set(training["seconds"]) == {"channel fit", "training", "mix fit"} and all(v > 0 for v in training["seconds"].values())
    effects = report["emotion parts"]  # how far the trained emotion parts move the user representation
    assert 0 < effects["entities reacted to"] <= 1 and effects["local fusion: state change / state"] >= 0

    again = run_stages(cfg, run_dir, only=["rec"])
    assert all(s.get("skipped") for s in again.values())
    # forced, the same Ray Train run resumes from its last checkpoint: no epoch is trained twice
    resumed = run_stages(cfg, run_dir, only=["rec-train"], force=True)["rec-train"]
    assert resumed["epochs_run"] == summaries["rec-train"]["epochs_run"] and resumed["best_epoch"] == summaries["rec-train"]["best_epoch"]


def test_evaluate_a_raw_redial_file_and_refuse_another_config(trained, data_root, tmp_path, capsys):
    cfg, run_dir, _ = trained
    test_file = raw_file_outside_the_tiny_pool(cfg, data_root, tmp_path, 30)

    assert _cli("evaluate", run_dir, "--split-file", f"test={test_file}") == 0
    report = run_dir.read_json("reports/eval-test.json")
    assert set(METRIC_KEYS) <= set(report) and {"examples", "liked", "disliked", "counts", "auc_per_batch"} <= set(report)
    assert report["counts"]["turns"] == run_dir.read_table(prepared("test", "rec_turns")).num_rows > 0
    assert report["examples"] == report["counts"]["examples"] > 0
    assert run_dir.exists("emotion/utterances/test") and run_dir.exists("rec/context/test")

    capsys.readouterr()
    assert _cli("evaluate", run_dir, "--split-file", f"test={test_file}", "--set", "rec.hidden=64") == 1  # a stage failed
    assert re.search(r"rec-eval-test: ValueError: .*rec\.hidden: trained 32, config 64", capsys.readouterr().err)

    empty = RunDir(tmp_path / "empty")
    assert _cli("evaluate", empty, "--split-file", f"test={test_file}") == 2
    assert "no trained recommender" in capsys.readouterr().err


def test_ablations_cross_validate_every_system_on_every_pool_example(trained):
    cfg, run_dir, _ = trained
    assert _cli("ablations", run_dir) == 0
    report = run_dir.read_json("reports/ablations.json")
    results, differences = report["systems"], report["differences"]
    systems = [*BASELINES, *[s for name in VARIANTS for s in (name, name + PAPER, *(["channels alone"] if name == "full ECR" else []))]]
    assert report["folds"] == cfg.rec.cv_folds == 2 and set(results) == set(systems)
    pool_examples = run_dir.read_json("reports/recommender.json")["examples"]["examples"]
    for name, metrics in results.items():
        assert metrics["examples"] == pool_examples, name  # each pool example scored once, by a model that never saw its dialogue
        assert all(0 <= metrics[k] <= 1 for k in METRIC_KEYS if metrics[k] is not None), name
        assert all(lo <= metrics[k] <= hi for k, (lo, hi) in metrics["intervals"].items() if k in METRIC_KEYS), name
    for name, diff in differences.items():
        first, second = name.split(" − ")
        assert diff["recall@50"] == pytest.approx(results[first]["recall@50"] - results[second]["recall@50"])
        lo, hi = diff["intervals"]["recall@50"]
        assert lo <= diff["recall@50"] <= hi
    assert run_dir.exists("models/ablations/fold-1/full-ecr/tables.npz")
    table = run_dir.read_text("reports/ablations.md")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1 : 1 + len(results)]] == [f"| {name}" for name in systems]
    assert {"full ECR − channels alone", "full ECR (paper) − without local emotion (paper)"} <= set(differences)
    assert "Paired differences" in table and " [" in rows[1]  # every figure with its interval
    signal = report["diagnostics"]["emotion signal"]  # is the utterance emotion informative about the seeker's stance?
    assert signal["utterances"]["liked"] > 0 and 0 <= signal["auc of P(like), liked vs disliked"] <= 1
    assert "full ECR's emotion parts (mean over folds)" in report["diagnostics"] and "Why an emotion part helps or not" in table
    with run_dir.fs.open_input_stream(run_dir.path("reports/ablations.png")) as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert results["popularity"]["recall@50"] > 0.05  # popular films are often the answer in ReDial
    assert results["co-occurrence + copy"]["recall@50"] >= results["co-occurrence"]["recall@50"] > results["popularity"]["recall@50"]

    # full ECR again, reading each named movie's own stance (the stance model and its inference run first), on the same examples
    from ecr_ray.artifacts import read_rows
    from ecr_ray.rec.ablations import ALSO, DISLIKED_CONTEXT, STANCE, disliked_context
    from ecr_ray.rec.examples import load_examples

    # and full ECR at another width (`rec.cv_also`), paired against it on the same folds
    assert _cli("ablations", run_dir, "--set", "rec.cv_entity_stance=true", "--set", "rec.cv_emotion_ablations=false",
                "--set", 'rec.cv_also={"hidden 16": {hidden: 16}}') == 0
    assert run_dir.exists("models/stance") and run_dir.exists("emotion/stances/pool")
    report = run_dir.read_json("reports/ablations.json")
    narrow = ALSO.format("hidden 16")
    assert {STANCE, STANCE + PAPER, narrow, narrow + PAPER} <= set(report["systems"])
    assert report["systems"][STANCE]["examples"] == report["systems"][narrow]["examples"] == pool_examples
    assert [run_dir.read_json(f"models/ablations/fold-{f}/full-ecr-hidden-16/ecr_config.json")["rec"]["hidden"] for f in (0, 1)] == [16, 16]
    for first, second in ((STANCE, "full ECR"), (STANCE + PAPER, "full ECR" + PAPER), (narrow, "full ECR"), (narrow + PAPER, "full ECR" + PAPER),
                          (narrow, "channels alone"), (narrow + PAPER, "co-occurrence")):
        diff = report["differences"][f"{first} − {second}"]["recall@50"]
        assert diff == pytest.approx(report["systems"][first]["recall@50"] - report["systems"][second]["recall@50"])
    rows, _ = load_examples(cfg, run_dir, "pool")
    hated = int(disliked_context(rows, read_rows(run_dir, "pool", "dialogues")).sum())
    subset = report["differences"].get(f"{STANCE} − full ECR{DISLIKED_CONTEXT}")
    assert (subset is not None) == (hated > 0) and (subset is None or subset["examples"] == hated)
