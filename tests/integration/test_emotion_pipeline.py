"""The emotion stages end to end on the tiny prepared pool (offline teacher source)."""
import numpy as np
import pyarrow.dataset as pads

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
