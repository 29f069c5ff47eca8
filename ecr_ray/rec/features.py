"""Recommender examples from prepared turns and utterance emotions (plain functions, no Ray).

One example per (recommender turn, target item in the KG), as UniCRS and ECR flatten them. Each
mentioned entity carries the user's emotion towards it: the probabilities of the seeker utterance
that mentioned it, or, for an entity the recommender brought up, of the seeker's reply to it
(zeros when the user has not reacted yet).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from ecr_ray.data.redial import RECOMMENDER, SEEKER
from ecr_ray.emotion.labels import LABELS

ROLE_NAMES = {SEEKER: "User", RECOMMENDER: "Recommender"}
NO_EMOTION = [0.0] * len(LABELS)


def context_text(context: list[str], roles: list[str]) -> str:
    """The dialogue so far as one text, one 'Role: text' line per utterance."""
    return "\n".join(f"{ROLE_NAMES.get(r, r)}: {t}" for t, r in zip(context, roles, strict=True))


def emotion_turn(mention: int, roles: list[str], now: int) -> int | None:
    """The seeker utterance whose emotion applies to an entity mentioned at index `mention`."""
    if roles[mention] == SEEKER:
        return mention
    if mention + 1 < now and roles[mention + 1] == SEEKER:
        return mention + 1
    return None


def entity_emotions(turn: dict, probs: dict[tuple[int, int], list[float]], max_entities: int) -> tuple[list[int], list[list[float]]]:
    """The most recent `max_entities` entities of a turn and the user's emotion towards each."""
    entities, emotions = [], []
    pairs = list(zip(turn["entities"], turn["entity_turns"], strict=True))[-max_entities:]
    for entity, mention in pairs:
        t = emotion_turn(mention, turn["context_roles"], turn["turn"])
        entities.append(int(entity))
        emotions.append(list(probs.get((turn["conversation_id"], t), NO_EMOTION)) if t is not None else NO_EMOTION)
    return entities, emotions


def build_examples(turns: Iterable[dict], probs: dict[tuple[int, int], list[float]], item_index: dict[int, int],
                   max_entities: int) -> tuple[list[dict], dict]:
    """(examples, counts of what was skipped and why)."""
    rows, counts = [], Counter()
    for turn in turns:
        counts["turns"] += 1
        if not turn["target_items"]:
            counts["turns_without_target"] += 1
            continue
        entities, emotions = entity_emotions(turn, probs, max_entities)
        made = 0
        for item, feedback in zip(turn["target_items"], turn["target_feedback"], strict=True):
            if item not in item_index:
                counts["targets_outside_kg"] += 1
                continue
            made += 1
            rows.append({
                "split": turn["split"], "conversation_id": turn["conversation_id"], "turn": turn["turn"],
                "context_text": context_text(turn["context"], turn["context_roles"]),
                "entities": entities, "entity_emotions": emotions, "item": item_index[item], "feedback": int(feedback),
            })
        counts["turns_with_kg_target"] += made > 0
        counts["examples_without_entities"] += made * (not entities)
    counts["examples"] = len(rows)
    return rows, dict(counts)


def pad_batch(entities: Iterable, emotions: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Ragged entity lists -> (ids [B, L] padded with -1, emotions [B, L, 9]); L >= 1."""
    entities, emotions = list(entities), list(emotions)
    width = max([len(e) for e in entities] + [1])
    ids = np.full((len(entities), width), -1, dtype=np.int64)
    emo = np.zeros((len(entities), width, len(LABELS)), dtype=np.float32)
    for i, (ents, emos) in enumerate(zip(entities, emotions, strict=True)):
        if len(ents):
            ids[i, : len(ents)] = np.asarray(ents, dtype=np.int64)
            emo[i, : len(ents)] = np.stack([np.asarray(e, dtype=np.float32) for e in emos])
    return ids, emo
