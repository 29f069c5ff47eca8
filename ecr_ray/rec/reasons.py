"""Why an item was recommended, in words, from the model's own scores
(`ECRRecommender.entity_evidence`): the mentioned entities whose evidence raised the item most, the
user's emotion towards each, and a knowledge-graph fact they share with the item where there is one,
e.g. "you liked Inception: same director, Christopher Nolan". Nothing is invented: an entity is
named only when its evidence added to the item's score."""
from __future__ import annotations

import re

from ecr_ray.emotion.labels import LABELS

MOST = 2  # reasons given per recommended item
CHANNEL_TEXT = {"co-occurrence": "often talked about together with it",
                "emotion-related neighbours": "people who felt the same about it went on to this one"}


def _words(relation: str) -> str:
    """A relation URI in words: '.../musicComposer>' -> 'music composer'."""
    from ecr_ray.gen.retrieval import relation_name

    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", relation_name(relation)).lower()


def shared_fact(kg, facts: dict[int, list[tuple[int, int]]], entity: int, item: int) -> str | None:
    """A KG fact linking a mentioned entity to an item: the entity is one of the item's facts (its
    genre, director, an actor), or both share one (the same director); None when the graph has none."""
    from ecr_ray.gen.retrieval import item_title

    own = facts.get(item, [])
    for relation, other in own:
        if other == entity:
            return f"{_words(kg.relations[relation])}: {item_title(kg, entity)}"
    theirs = set(facts.get(entity, []))
    for relation, other in own:
        if (relation, other) in theirs:
            return f"same {_words(kg.relations[relation])}, {item_title(kg, other)}"
    return None


def recommendation_reasons(kg, facts: dict, entities: list[int], emotions: list[list[float]], evidence: dict, column: int,
                           item: int, most: int = MOST) -> list[dict]:
    """The `most` mentioned entities that raised `item` (its `column` in `evidence`: channel ->
    [entities, items] logits, rows in the order of `entities`), largest first: each with the user's
    kept emotions towards it, its main channel, what it added to the score, a shared KG fact (or
    None) and a sentence. An entity mentioned twice is one reason."""
    from ecr_ray.gen.retrieval import item_title

    added: dict[int, dict[str, float]] = {}
    for channel, parts in evidence.items():
        for row, entity in enumerate(entities):
            value = float(parts[row, column])
            if value > 0:
                added.setdefault(entity, {}).setdefault(channel, 0.0)
                added[entity][channel] += value
    felt = {e: [LABELS[i] for i, p in enumerate(probs) if p > 0] for e, probs in zip(entities, emotions, strict=True)}
    out = []
    for entity, channels in sorted(added.items(), key=lambda kv: -sum(kv[1].values()))[:most]:
        channel, labels = max(channels, key=channels.get), felt[entity]
        verb = "liked" if "like" in labels else "felt negative about" if "negative" in labels else "mentioned"
        fact = shared_fact(kg, facts, entity, item)
        name = item_title(kg, entity)
        out.append({"entity": entity, "name": name, "emotions": labels, "channel": channel, "score": round(sum(channels.values()), 4),
                    "fact": fact, "text": f"you {verb} {name}: {fact if fact is not None else CHANNEL_TEXT[channel]}"})
    return out
