"""Recommender examples from prepared turns and utterance emotions (plain functions, no Ray).

One example per (recommender turn, target item in the KG), as UniCRS and ECR flatten them. Each
mentioned entity carries the user's emotion towards it: the kept labels (probability above β, at
most n_f) of the seeker utterance that mentioned it, or, for an entity the recommender brought up,
of the seeker's reply to it (zeros when the user has not reacted yet); and who mentioned it last.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from ecr_ray.config import RecConfig
from ecr_ray.data.redial import RECOMMENDER, SEEKER
from ecr_ray.emotion.labels import LABELS, kept_emotions  # noqa: F401 (the rec modules read it here)

ROLE_NAMES = {SEEKER: "User", RECOMMENDER: "Recommender"}
NO_EMOTION = [0.0] * len(LABELS)


def item_index(kg) -> dict[int, int]:
    """KG entity id of an item -> its index among the items (the recommender's output positions)."""
    return {int(e): i for i, e in enumerate(kg.item_ids)}


def said_items(kg) -> dict[int, list[int]]:
    """KG movie -> the item positions of every movie of its title (a remake, or one of the KG's duplicates): a
    movie the user named is not recommended back as another entity of the same title."""
    from ecr_ray.data.linking import text_key
    from ecr_ray.gen.retrieval import item_title

    index, by_title = item_index(kg), {}
    keys = {e: text_key(item_title(kg, e)) for e in index}
    for e, i in index.items():
        by_title.setdefault(keys[e], []).append(i)
    return {e: by_title[keys[e]] for e in index}


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


def with_stances(probs: dict, stances: dict[tuple[int, int, int], list[float]]) -> dict:
    """The utterances' emotions ((conversation_id, turn) -> nine probabilities) and, for each KG movie an utterance
    names whose stance was read (`stances`: (conversation_id, turn, entity) -> P(liked, disliked, no stance),
    emotion/stance.py), the emotions towards that movie, keyed (conversation_id, turn, entity): the utterance's,
    with "like" and "negative" the stance's liked and disliked. "I loved X but hated Y" likes X, not Y."""
    from ecr_ray.emotion.stance import DISLIKED, LIKED

    out = dict(probs)
    for (cid, turn, entity), stance in stances.items():
        if (cid, turn) in probs:
            p = list(probs[cid, turn])
            p[LABELS.index("like")], p[LABELS.index("negative")] = stance[LIKED], stance[DISLIKED]
            out[cid, turn, entity] = p
    return out


def feeling(probs: dict, conversation_id: int, turn: int, entity: int) -> list[float] | None:
    """The user's emotions towards `entity` in that utterance: its stance-refined ones where read (`with_stances`),
    else the utterance's."""
    return probs.get((conversation_id, turn, entity), probs.get((conversation_id, turn)))


def entity_emotions(turn: dict, probs: dict[tuple[int, int], list[float]], rcfg: RecConfig) -> dict:
    """The most recent `rcfg.max_entities` entities of a turn, the user's emotion towards each (the
    kept labels of the utterance that carries it, refined by the stance where read: `feeling`) and
    whether the seeker mentioned it last."""
    entities, emotions, by_seeker = [], [], []
    pairs = list(zip(turn["entities"], turn["entity_turns"], strict=True))[-rcfg.max_entities:]
    for entity, mention in pairs:
        t = emotion_turn(mention, turn["context_roles"], turn["turn"])
        p = feeling(probs, turn["conversation_id"], t, int(entity)) if t is not None else None
        entities.append(int(entity))
        emotions.append(kept_emotions(p, rcfg.beta, rcfg.max_emotions) if p is not None else NO_EMOTION)
        by_seeker.append(int(turn["context_roles"][mention] == SEEKER))
    return {"entities": entities, "entity_emotions": emotions, "entity_by_seeker": by_seeker}


def build_examples(turns: Iterable[dict], probs: dict[tuple[int, int], list[float]], item_index: dict[int, int],
                   rcfg: RecConfig) -> tuple[list[dict], dict]:
    """(examples, counts of what was skipped and why)."""
    rows, counts = [], Counter()
    for turn in turns:
        counts["turns"] += 1
        if not turn["target_items"]:
            counts["turns_without_target"] += 1
            continue
        mentioned, earlier = entity_emotions(turn, probs, rcfg), set(turn["entities"])
        made = 0
        for item, feedback in zip(turn["target_items"], turn["target_feedback"], strict=True):
            if item not in item_index:
                counts["targets_outside_kg"] += 1
                continue
            made += 1
            rows.append({
                "split": turn["split"], "conversation_id": turn["conversation_id"], "turn": turn["turn"],
                "context_text": context_text(turn["context"], turn["context_roles"]),
                **mentioned, "item": item_index[item], "feedback": int(feedback),
                "new": int(item not in earlier),  # not mentioned earlier in the dialogue: no copy can find it
            })
        counts["turns_with_kg_target"] += made > 0
        counts["examples_without_entities"] += made * (not mentioned["entities"])
    counts["examples"] = len(rows)
    return rows, dict(counts)


def as_columns(part: list[dict]) -> dict:
    """Example rows as one batch of columns (what `ECRRecommender.inputs` takes)."""
    return {k: [r[k] for r in part] for k in part[0]}


def row_batches(rows: list[dict], size: int):
    """Example rows as batches of columns, `size` rows each, in order."""
    return (as_columns(rows[i : i + size]) for i in range(0, len(rows), size))


def pad_mentions(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's ragged mentions -> (entity ids [B, L] padded with -1, emotions [B, L, 9], by the
    seeker [B, L] as 1.0/0.0); L >= 1."""
    entities = list(batch["entities"])
    width = max([len(e) for e in entities] + [1])
    ids = np.full((len(entities), width), -1, dtype=np.int64)
    emo = np.zeros((len(entities), width, len(LABELS)), dtype=np.float32)
    seeker = np.zeros((len(entities), width), dtype=np.float32)
    for i, (ents, emos, by) in enumerate(zip(entities, batch["entity_emotions"], batch["entity_by_seeker"], strict=True)):
        if len(ents):
            ids[i, : len(ents)] = np.asarray(ents, dtype=np.int64)
            emo[i, : len(ents)] = np.stack([np.asarray(e, dtype=np.float32) for e in emos])
            seeker[i, : len(ents)] = np.asarray(by, dtype=np.float32)
    return ids, emo, seeker


def recency_weights(ids: np.ndarray, decay: float) -> np.ndarray:
    """decay ** (steps back from the latest mention) per padded entity [B, L] (0 at padding): the latest weighs 1."""
    mask = ids >= 0
    ages = mask.sum(1, keepdims=True) - 1 - np.arange(ids.shape[1])
    return np.where(mask, decay ** np.maximum(ages, 0), 0.0)
