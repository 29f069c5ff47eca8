"""Global emotion-aware neighbours: P(e_i | e_j) over training dialogues, counted only where the
user's top emotions towards e_i and e_j overlap (plain functions, no Ray)."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import permutations

import numpy as np

from ecr_ray.artifacts import POOL, emotion_probs, read_rows, write_neighbours
from ecr_ray.config import Config
from ecr_ray.rec.features import emotion_turn
from ecr_ray.rundir import RunDir


def entity_emotion_sets(dialogue: dict, probs: dict[tuple[int, int], list[float]], top: int) -> dict[int, frozenset[int]]:
    """Entity -> the union of the user's top-`top` emotions towards it over one dialogue."""
    utterances = dialogue["utterances"]
    roles = [u["role"] for u in utterances]
    sets: dict[int, set[int]] = defaultdict(set)
    for t, utterance in enumerate(utterances):
        for entity in utterance["entities"]:
            et = emotion_turn(t, roles, len(utterances))
            p = probs.get((dialogue["conversation_id"], et)) if et is not None else None
            if p is not None:
                sets[entity] |= set(np.argsort(-np.asarray(p), kind="stable")[:top].tolist())
    return {e: frozenset(s) for e, s in sets.items()}


def emotion_neighbours(dialogues: Iterable[dict], probs: dict[tuple[int, int], list[float]], num_entities: int,
                       top: int, k: int, min_count: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids [N, k], P(neighbour | entity) [N, k], stats); unused slots hold id 0 with weight 0."""
    seen, pairs = Counter(), Counter()
    for dialogue in dialogues:
        sets = entity_emotion_sets(dialogue, probs, top)
        seen.update(sets.keys())
        pairs.update((i, j) for i, j in permutations(sets, 2) if sets[i] & sets[j])
    ranked: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for (i, j), count in pairs.items():
        if count >= min_count:
            ranked[j].append((count / seen[j], i))
    ids = np.zeros((num_entities, k), dtype=np.int64)
    weights = np.zeros((num_entities, k), dtype=np.float32)
    for j, candidates in ranked.items():
        best = sorted(candidates, key=lambda c: (-c[0], c[1]))[:k]
        ids[j, : len(best)] = [i for _, i in best]
        weights[j, : len(best)] = [p for p, _ in best]
    stats = {"entities_with_emotion": len(seen), "pairs_counted": sum(c >= min_count for c in pairs.values()),
             "entities_with_neighbours": len(ranked)}
    return ids, weights, stats


def build_neighbours(cfg: Config, run_dir: RunDir) -> dict:
    """The rec-cooccurrence stage: neighbours from the pool's training dialogues -> rec/neighbours."""
    from ecr_ray.data.kg import load_kg

    r = cfg.rec
    dialogues = [d for d in read_rows(run_dir, POOL, "dialogues") if d["split"] == "train"]
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    ids, weights, stats = emotion_neighbours(dialogues, emotion_probs(run_dir, POOL), kg.num_entities, r.top_emotions,
                                             r.neighbours, r.min_cooccurrence)
    write_neighbours(run_dir, ids, weights)
    return {"dialogues": len(dialogues), **stats}
