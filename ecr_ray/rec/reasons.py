"""Why an item was recommended, in words, from the model's own scores
(`ECRRecommender.entity_evidence`): the mentioned entities whose evidence raised the item most, the
user's emotion towards each, and a knowledge-graph fact they share with the item where there is one,
e.g. "you liked Inception: same director, Christopher Nolan". Nothing is invented: an entity is
named only when its evidence added to the item's score, and "liked" only when the stance model read that
the user liked that very movie (emotion/stance.py); a disliked movie is never a reason. The utterance's
emotions are not a stance: in "I loved X but hated Y" they cover both."""
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
                           item: int, stances: list[str | None] | None = None, by_seeker: list[int] | None = None,
                           most: int = MOST) -> list[dict]:
    """The `most` mentioned entities that raised `item` (its `column` in `evidence`: channel ->
    [entities, items] logits, rows in the order of `entities`), largest first, leaving out those the user
    disliked (`stances`, in the order of `entities`: "liked", "disliked", "no stance" or None where no
    stance was read): each with the user's kept emotions towards it, its stance, its main channel, what it
    added to the score, a shared KG fact (or None) and a sentence. An entity mentioned twice is one reason;
    one the recommender brought up (`by_seeker` 0) is something "we talked about", not something "you" said."""
    from ecr_ray.gen.retrieval import item_title

    added: dict[int, dict[str, float]] = {}
    for channel, parts in evidence.items():
        for row, entity in enumerate(entities):
            value = float(parts[row, column])
            if value > 0:
                added.setdefault(entity, {}).setdefault(channel, 0.0)
                added[entity][channel] += value
    felt = {e: [LABELS[i] for i, p in enumerate(probs) if p > 0] for e, probs in zip(entities, emotions, strict=True)}
    stance = dict(zip(entities, stances or [None] * len(entities), strict=True))  # the latest mention's, as `felt`
    seeker = dict(zip(entities, by_seeker or [1] * len(entities), strict=True))
    out = []
    for entity, channels in sorted(((e, c) for e, c in added.items() if stance[e] != "disliked"), key=lambda kv: -sum(kv[1].values()))[:most]:
        channel = max(channels, key=channels.get)
        said = "you liked" if stance[entity] == "liked" else "you mentioned" if seeker[entity] else "we talked about"
        fact = shared_fact(kg, facts, entity, item)
        name = item_title(kg, entity)
        out.append({"entity": entity, "name": name, "emotions": felt[entity], "stance": stance[entity], "channel": channel,
                    "score": round(sum(channels.values()), 4), "fact": fact,
                    "text": f"{said} {name}: {fact if fact is not None else CHANNEL_TEXT[channel]}"})
    return out
