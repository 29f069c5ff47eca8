"""Training-free recommenders in the same harness and protocol as the model (one example per
(turn, target), ranked over every item, nothing excluded): the bars the neural recommender must clear.

popularity             the items most often recommended in the training examples
co-occurrence          per item, how many training dialogues (any speaker) it shares with each of the
                       context's entities (the `items` table), the most recent entities weighted most
co-occurrence + copy   the same, plus a bonus for items the context already mentions (ReDial's
                       recommenders often come back to a movie the seeker named)
Popularity breaks ties in the other two, so a context without entities still gets a ranking.
"""
from __future__ import annotations

import numpy as np

BASELINES = ("popularity", "co-occurrence", "co-occurrence + copy")


def item_popularity(train_rows: list[dict], num_items: int) -> np.ndarray:
    """How often each item is a training target."""
    return np.bincount([r["item"] for r in train_rows], minlength=num_items).astype(np.float64)


def baseline_scores(kind: str, rows: list[dict], popularity: np.ndarray, items, item_index: dict[int, int],
                    decay: float, copy_bonus: float) -> np.ndarray:
    """Scores [examples, items] of one baseline from `items` (C [entities, items], CSR); an entity never
    seen in training contributes nothing."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    prior = np.log1p(popularity) - 1e-9 * np.arange(len(popularity))  # ties broken by item order
    scores = np.tile(prior if kind == "popularity" else 1e-3 * prior, (len(rows), 1))
    if kind == "popularity":
        return scores
    from ecr_ray.rec.cooccurrence import weighted_rows
    from ecr_ray.rec.features import recency_weights

    for start in range(0, len(rows), 256):
        part = rows[start : start + 256]
        width = max([len(r["entities"]) for r in part] + [1])
        ids = np.array([r["entities"] + [-1] * (width - len(r["entities"])) for r in part], dtype=np.int64)
        scores[start : start + len(part)] += np.log1p(weighted_rows(items, ids, recency_weights(ids, decay)).to_dense().numpy())
    if kind == "co-occurrence + copy":
        for r, row in enumerate(rows):
            scores[r, [item_index[e] for e in row["entities"] if e in item_index]] += copy_bonus
    return scores
