"""Training-free recommenders in the same harness and protocol as the model (one example per
(turn, target), ranked over every item, nothing excluded): the bars the neural recommender must clear.

popularity             the items most often recommended in the training examples
co-occurrence          per item, how many training dialogues (any speaker) it shares with each of the
                       context's entities, the most recent entities weighted most
co-occurrence + copy   the same, plus a bonus for items the context already mentions (ReDial's
                       recommenders often come back to a movie the seeker named)
Popularity breaks ties in the other two, so a context without entities still gets a ranking.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

BASELINES = ("popularity", "co-occurrence", "co-occurrence + copy")


def item_cooccurrence(dialogues: list[dict], item_index: dict[int, int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """entity -> (item positions, number of dialogues in which the entity and that item both occur)."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for dialogue in dialogues:
        entities = {e for u in dialogue["utterances"] for e in u["entities"]}
        items = {item_index[e] for e in entities if e in item_index}
        for entity in entities:
            counts[entity].update(items - {item_index.get(entity)})  # an item is no evidence for itself
    return {e: (np.fromiter(c.keys(), np.int64, len(c)), np.fromiter(c.values(), np.float64, len(c))) for e, c in counts.items()}


def item_popularity(train_rows: list[dict], num_items: int) -> np.ndarray:
    """How often each item is a training target."""
    return np.bincount([r["item"] for r in train_rows], minlength=num_items).astype(np.float64)


def baseline_scores(kind: str, rows: list[dict], popularity: np.ndarray, cooccurrence: dict, item_index: dict[int, int],
                    decay: float, copy_bonus: float) -> np.ndarray:
    """Scores [examples, items] of one baseline; an entity never seen in training contributes nothing."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    prior = np.log1p(popularity) - 1e-9 * np.arange(len(popularity))  # ties broken by item order
    scores = np.tile(prior if kind == "popularity" else 1e-3 * prior, (len(rows), 1))
    if kind == "popularity":
        return scores
    for r, row in enumerate(rows):
        evidence = np.zeros(len(popularity))
        for age, entity in enumerate(reversed(row["entities"])):  # the latest mention first
            if entity in cooccurrence:
                items, counts = cooccurrence[entity]
                evidence[items] += decay**age * counts
        scores[r] += np.log1p(evidence)
        if kind == "co-occurrence + copy":
            scores[r, [item_index[e] for e in row["entities"] if e in item_index]] += copy_bonus
    return scores
