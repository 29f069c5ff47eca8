"""The emotion stages end to end on the tiny prepared pool (offline teacher source)."""
import numpy as np
import pyarrow.dataset as pads
import pytest

from ecr_ray.config import load_config
from ecr_ray.artifacts import POOL, prepared
from ecr_ray.emotion.labels import LABELS
from ecr_ray.pipeline import run_stages

from tests.conftest import TINY_DIALOGUES


def _rows(run_dir, path):
    return pads.dataset(run_dir.path(path), filesystem=run_dir.fs, format="parquet").to_table().to_pylist()


def test_teacher_annotate_classifier_infer(fresh_run, ray_local):
    cfg = load_config("tiny", [f"data.max_dialogues={TINY_DIALOGUES}", "emotion.teacher.max_examples=600", "emotion.eval_examples=200",
                               "emotion.sample_size=80", "emotion.classifier.train.epochs=1", "emotion.classifier.train.num_workers=2",
                               "emotion.classifier.train.cpus_per_worker=0.5"])
    summaries = run_stages(cfg, fresh_run, only=["emotion"])
    assert list(summaries) == ["emotion-teacher", "emotion-annotate", "emotion-classifier", "emotion-infer-pool"]

    teacher = fresh_run.read_json("reports/teacher.json")["goemotions_test"]
    assert teacher["examples"] == 200 and 0.35 < teacher["recall@2"] <= 1  # a uniform guess scores about 0.22
    assert teacher["recall@1"] <= teacher["recall@2"]

    annotations = _rows(fresh_run, "emotion/annotations")
    assert len(annotations) == 80 == len({a["utterance_id"] for a in annotations})
    assert all(a["source"] == "teacher" and a["status"] == "ok" and 1 <= len(a["labels"]) <= 2 for a in annotations)
    assert summaries["emotion-annotate"]["ok"] == 80

    held = fresh_run.read_json("reports/emotion_classifier.json")["held_out"]
    assert held["examples"] == summaries["emotion-classifier"]["held_out"] > 0
    assert held["examples"] + summaries["emotion-classifier"]["train_examples"] == 80

    utterances = _rows(fresh_run, prepared(POOL, "user_utterances"))
    emotions = _rows(fresh_run, "emotion/utterances/pool")
    assert sorted(e["utterance_id"] for e in emotions) == sorted(u["utterance_id"] for u in utterances)  # every one, once
    for e in emotions:
        probs = np.array(e["probs"])
        assert probs.shape == (9,) and ((0 <= probs) & (probs <= 1)).all()
        assert e["labels"][0] == LABELS[int(probs.argmax())] and len(e["labels"]) <= 2
    share = summaries["emotion-infer-pool"]["label_share"]
    assert set(share) == set(LABELS) and abs(sum(summaries["emotion-infer-pool"]["top_label_share"].values()) - 1) < 1e-3

    again = run_stages(cfg, fresh_run, only=["emotion"])
    assert all(s["skipped"] for s in again.values())


def test_the_stance_model_on_the_questionnaires_beside_ecrs_reading(gen_run):
    """stance-train (in the gen run: the chat reads stances): trained on the training split's answers, the dev
    split's figures for both readings on the same examples, and the mixed-message probes."""
    from ecr_ray.emotion.stance import PROBES, STANCES, stance_examples
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.data.kg import load_kg

    cfg, run_dir, summaries = gen_run
    report = run_dir.read_json("reports/stance.json")
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    rows = stance_examples(_rows(run_dir, prepared(POOL, "user_utterances")), _rows(run_dir, prepared(POOL, "dialogues")),
                           lambda item: item_title(kg, item))
    dev = [r for r in rows if r["split"] == "dev"]
    assert report["dev_examples"] == len(dev) == sum(report["dev_stances"].values()) and report["train_examples"] == len(rows) - len(dev)
    assert report["dev_stances"]["liked"] > report["dev_stances"]["disliked"] + report["dev_stances"]["no stance"]  # mostly liked
    for name in ("stance model", "utterance emotion (ECR)"):
        m = report["dev"][name]
        assert 0 <= m["macro_f1"] <= 1 and set(m) >= {"recall_liked", "recall_disliked", "recall_no stance", "accuracy", "intervals"}
        low, high = m["intervals"]["macro_f1"]
        assert low <= m["macro_f1"] <= high
    difference = report["dev"]["stance model − utterance emotion (ECR)"]["macro_f1"]
    assert difference == pytest.approx(report["dev"]["stance model"]["macro_f1"] - report["dev"]["utterance emotion (ECR)"]["macro_f1"])
    probes = report["probes"]
    assert len(probes["probes"]) == len(PROBES) and probes["movies"] == sum(len(truth) for _, truth in PROBES)
    assert probes["disliked"] == sum(v == "disliked" for _, truth in PROBES for v in truth.values())
    assert all(m["read"] in STANCES for p in probes["probes"] for m in p["movies"])
    assert summaries["stance-train"]["macro_f1"] == report["dev"]["stance model"]["macro_f1"]
