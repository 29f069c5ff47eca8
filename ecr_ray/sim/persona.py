"""A simulated seeker's persona, read from one logged dialogue: the movies the recommender suggested there (the
hidden targets) with what the seeker said of each (questionnaire), what the KG knows about them, and the seeker's
emotions as the emotion classifier read them in the logged utterances."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from ecr_ray.artifacts import POOL, emotion_probs, read_rows
from ecr_ray.config import Config
from ecr_ray.rundir import RunDir

ATTRIBUTES = ("genre", "starring", "director")  # what a seeker may say it wants (iEvaLM's attributes), in the order asked
PER_ATTRIBUTE = 3  # values per attribute, the targets' most common first
FEEDBACK = {1: "liked", 0: "disliked", 2: "did not say"}


def personas(cfg: Config, run_dir: RunDir) -> list[dict]:
    """`sim.dialogues` seeded personas of `sim.split`: {conversation_id, targets (KG items), titles, feedback (by
    item), attributes {attribute: [names]}, emotions (the two labels the seeker felt most), turns (the logged
    recommender turns with a KG target: the turn-by-turn reference)}."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.emotion.labels import LABELS
    from ecr_ray.gen.retrieval import item_title

    from ecr_ray.data.movie_info import movie_cards

    s, kg = cfg.sim, load_kg(cfg.data.path(cfg.data.kg_dir))
    cards = movie_cards(kg, cfg.data.path(cfg.data.movie_info_file)) if cfg.data.movie_info_file else {}
    turns: dict[int, list[dict]] = {}
    for t in read_rows(run_dir, POOL, "rec_turns"):
        if t["split"] == s.split and any(i >= 0 for i in t["target_items"]):
            turns.setdefault(t["conversation_id"], []).append(t)
    if not turns:
        raise RuntimeError(f"split {s.split!r} has no recommender turn with a KG movie: no seeker to simulate")
    chosen = sorted(turns, key=lambda d: hashlib.sha256(f"{s.seed}:sim:{d}".encode()).hexdigest())[: s.dialogues]
    probs = emotion_probs(run_dir, POOL)
    out = []
    for d in sorted(chosen):
        logged = sorted(turns[d], key=lambda t: t["turn"])
        feedback = {i: f for t in logged for i, f in zip(t["target_items"], t["target_feedback"], strict=True) if i >= 0}
        felt = np.mean([probs[(d, i)] for t in logged[-1:] for i, r in enumerate(t["context_roles"]) if r == "seeker" and (d, i) in probs]
                       or [[0.0] * len(LABELS)], axis=0)
        emotions = [LABELS[i] for i in np.argsort(-felt) if LABELS[i] != "neutral" and felt[i] > 0][:2]
        out.append({"conversation_id": d, "targets": list(feedback), "titles": [item_title(kg, i) for i in feedback],
                    "feedback": {i: FEEDBACK[f] for i, f in feedback.items()}, "attributes": target_attributes(kg, cards, list(feedback)),
                    "emotions": emotions, "turns": logged})
    return out


def target_attributes(kg, cards: dict, items: list[int]) -> dict[str, list[str]]:
    """Per attribute, what the targets share (the most shared first, at most PER_ATTRIBUTE): genres from the movie
    metadata (the KG links few films to a genre), actors and directors from the KG."""
    from ecr_ray.data.kg import split_qualifier

    out = {"genre": [g for g, _ in Counter(g for i in items for g in (cards.get(i) or {}).get("genres", [])).most_common(PER_ATTRIBUTE)]}
    for name in ATTRIBUTES[1:]:
        rows = kg.triples[np.isin(kg.triples[:, 0], items) & (kg.triples[:, 1] == kg.relation_id(name))]
        counts = Counter(int(t) for t in rows[:, 2] if t not in items)
        out[name] = [split_qualifier(kg.names[e])[0] for e, _ in counts.most_common(PER_ATTRIBUTE)]
    return out
