"""Entity-prediction pre-training examples, as UniCRS and ECR pre-train the recommender before it
learns to recommend: every entity of every utterance of the training dialogues (both speakers),
predicted among all entities from the entities mentioned before it (with their emotions) and the
dialogue so far; several times the recommendation pairs, and no target is withheld by the
questionnaire. Examples carry no context vector (only recommender turns have cached ones): the
minilm path sees a zero context, the prompt path reads `context_text`."""
from __future__ import annotations

from ecr_ray.config import RecConfig
from ecr_ray.data.redial import FEEDBACK_NOT_SAID
from ecr_ray.rec.features import context_text, entity_emotions


def entity_examples(dialogues: list[dict], probs: dict[tuple[int, int], list[float]], rcfg: RecConfig, context_dim: int) -> list[dict]:
    rows = []
    for dialogue in dialogues:
        cid, utterances = dialogue["conversation_id"], dialogue["utterances"]
        roles = [u["role"] for u in utterances]
        latest: dict[int, int] = {}  # entity -> its latest mention so far
        for t, utterance in enumerate(utterances):
            if latest and utterance["entities"]:
                turn = {"conversation_id": cid, "turn": t, "context_roles": roles[:t], "entities": list(latest),
                        "entity_turns": list(latest.values())}
                context = {"context_vec": [0.0] * context_dim} if rcfg.context_encoder == "minilm" else {
                    "context_text": context_text([u["text"] for u in utterances[:t]], roles[:t])}
                mentioned = entity_emotions(turn, probs, rcfg)
                rows += [{"conversation_id": cid, "turn": t, **mentioned, **context, "item": int(e), "feedback": FEEDBACK_NOT_SAID}
                         for e in dict.fromkeys(utterance["entities"])]
            for e in utterance["entities"]:
                latest.pop(e, None)
                latest[e] = t
    return rows
