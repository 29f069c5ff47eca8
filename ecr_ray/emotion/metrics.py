"""Multi-label emotion metrics."""
from __future__ import annotations

import numpy as np

from ecr_ray.emotion.labels import LABELS


def emotion_metrics(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Recall@k = |top-k predicted ∩ gold| / |gold|, averaged over examples (gold has 1-2 labels,
    so Recall@1 of a two-label example is at most 0.5). Macro-F1 over the labels present in gold,
    predicting every label with probability >= 0.5 and always the top one."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0
    keep = targets.any(1)
    probs, targets = probs[keep], targets[keep]
    order = np.argsort(-probs, axis=1)
    out = {"examples": int(len(probs))}
    for k in (1, 2):
        hits = np.take_along_axis(targets, order[:, :k], axis=1).sum(1)
        out[f"recall@{k}"] = round(float((hits / targets.sum(1)).mean()), 4) if len(probs) else 0.0
    predicted = probs >= 0.5
    predicted[np.arange(len(probs)), order[:, 0]] = True
    f1s = {}
    for i, label in enumerate(LABELS):
        if targets[:, i].any():
            tp = float((predicted[:, i] & targets[:, i]).sum())
            f1s[label] = 2 * tp / max(predicted[:, i].sum() + targets[:, i].sum(), 1)
    out["macro_f1"] = round(float(np.mean(list(f1s.values()))), 4) if f1s else 0.0
    out["f1_per_label"] = {k: round(float(v), 4) for k, v in f1s.items()}
    return out
