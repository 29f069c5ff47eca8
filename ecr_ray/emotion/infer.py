"""Emotion inference: a trained classifier -> nine probabilities and the top labels per utterance.

`EmotionPredictor` is the plain callable a Ray Data actor pool runs (the model loads once, in
__init__); `predict` serves plain loops, metrics and, later, the Serve deployment.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from collections import Counter

from ecr_ray.artifacts import CLASSIFIER, model, prepared, utterance_emotions
from ecr_ray.config import ActorPool, Config
from ecr_ray.emotion.labels import LABELS, top_labels
from ecr_ray.rundir import RunDir

PREDICTION_FIELDS = [pa.field("probs", pa.list_(pa.float32())), pa.field("labels", pa.list_(pa.string()))]


class EmotionPredictor:
    def __init__(self, model_dir: str, second_threshold: float, batch_size: int = 64, threads: int | None = None):
        """`model_dir`: a local folder or a run directory URI (fetched here, on the actor's node); `batch_size`: texts
        per forward pass (a Ray Data batch is sorted by length and cut into these); `threads`: torch threads for
        the process (an actor's), None: leave the caller's setting alone."""
        import torch

        from ecr_ray.emotion.classifier import load_classifier
        from ecr_ray.models import torch_device
        from ecr_ray.rundir import fetch

        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer, meta = load_classifier(fetch(model_dir))
        self.device = torch_device()
        self.model.to(self.device)
        self.max_length = meta["config"]["max_length"]
        self.second_threshold = second_threshold
        self.batch_size = batch_size

    def predict(self, texts) -> np.ndarray:
        import torch

        from ecr_ray.emotion.classifier import by_length, encode

        texts = [t if t and t.strip() else "." for t in texts]  # an empty text still gets a row
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        with torch.no_grad():
            for chunk in by_length(texts, self.batch_size):
                enc = encode(self.tokenizer, [texts[i] for i in chunk], self.max_length)
                out[chunk] = torch.sigmoid(self.model(**{k: v.to(self.device) for k, v in enc.items()})).cpu().numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        probs = self.predict(batch.column("text").to_pylist())
        labels = [top_labels(p, self.second_threshold) for p in probs]
        batch = batch.append_column(PREDICTION_FIELDS[0], pa.array(probs.astype(np.float32).tolist(), PREDICTION_FIELDS[0].type))
        return batch.append_column(PREDICTION_FIELDS[1], pa.array(labels, PREDICTION_FIELDS[1].type))


def predictor_kwargs(cfg: Config, run_dir: RunDir, pool: ActorPool) -> dict:
    """What an EmotionPredictor actor of `pool` is built from: the run's classifier, fetched on the actor's node."""
    return {"model_dir": run_dir.location(model(CLASSIFIER)), "second_threshold": cfg.emotion.second_label_threshold,
            "threads": pool.threads}


def infer_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The emotion-infer-<group> stage: the classifier over every seeker utterance of the group (actor pool)."""
    import ray

    from ecr_ray.raytools import connect, map_actors

    connect(cfg.ray)
    e, out = cfg.emotion, utterance_emotions(group)
    ds = ray.data.read_parquet(run_dir.location(prepared(group, "user_utterances"))).select_columns(
        ["split", "conversation_id", "turn", "utterance_id", "text"])
    labelled = map_actors(ds, EmotionPredictor, predictor_kwargs(cfg, run_dir, e.infer_pool), e.infer_pool)
    labelled.drop_columns(["text"]).write_parquet(run_dir.location(out))
    labels = run_dir.read_table(out, columns=["labels"]).column("labels").to_pylist()
    counts, top = Counter(x for row in labels for x in row), Counter(row[0] for row in labels)
    return {"utterances": len(labels), "label_share": {k: round(counts[k] / max(len(labels), 1), 4) for k in LABELS},
            "top_label_share": {k: round(top[k] / max(len(labels), 1), 4) for k in LABELS}}
