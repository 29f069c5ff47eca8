"""The systems a simulated seeker talks to, each answering the conversation so far with its ranked items (the
top `TOP` of them) and a reply naming its first.

ecr-ray                   the chat API's parts as served (`serving.components.answer`, one decode), or a running
                          `serve run` asked over HTTP by the openai client (`sim.system_url`)
ecr-ray without emotion   the same, with every user message read as neutral and no stance (the recommender's
                          emotion parts see nothing)
co-occurrence + copy      the training-free baseline (`rec.baselines`) with a template reply
always target / random    the simulator's sanity checks: the first target always first; a seeded random order
"""
from __future__ import annotations

import asyncio
import random

import numpy as np

TOP = 50  # the longest list a round's success is read from (success@1/10/50)
KS = (1, 10, 50)
TEMPLATE = "How about {title}? I think you would enjoy it."
SYSTEMS = ("ecr-ray", "ecr-ray without emotion", "co-occurrence + copy", "always target", "random")
SANITY = ("always target", "random")  # checks of the simulator, not systems: their replies are not judged


def listed(value: str, known: tuple[str, ...], key: str) -> list[str]:
    """A comma-separated knob's entries, each checked against `known`."""
    from ecr_ray.config import ConfigError

    entries = [x.strip() for x in value.split(",") if x.strip()]
    if not entries or [x for x in entries if x not in known]:
        raise ConfigError(f"{key} should list some of {', '.join(known)}, got {value!r}")
    return entries


class System:
    """`answer` one conversation; `answer_many` a round's conversations (one by one, unless a system batches)."""

    def answer(self, persona: dict, messages: list[dict]) -> dict:
        raise NotImplementedError

    def answer_many(self, asked: list[tuple[dict, list[dict]]]) -> list[dict]:
        return [self.answer(persona, messages) for persona, messages in asked]


class Served(System):
    """ecr-ray through the chat API's parts (in this process); a round's replies decoded together by the chat's
    continuous batcher, as concurrent chat requests are."""

    def __init__(self, parts, neutral: bool = False):
        self.parts = NeutralParts(parts) if neutral else parts

    def answer_many(self, asked: list[tuple[dict, list[dict]]]) -> list[dict]:
        from ecr_ray.serving.components import answer

        found = [asyncio.run(answer(self.parts, messages, TOP)) for _, messages in asked]
        batch, texts = self.parts.generator.chat_batch(), {}
        keys = [batch.add(self.parts.generator.row(*args)) for _, args in found]
        while batch.in_flight:
            for key, (piece, _) in batch.step().items():
                texts[key] = texts.get(key, "") + piece
        return [{"items": [i["item"] for i in f["items"]], "reply": texts[k].strip()} for (f, _), k in zip(found, keys, strict=True)]

    def answer(self, persona: dict, messages: list[dict]) -> dict:
        return self.answer_many([(persona, messages)])[0]


class Remote(System):
    """ecr-ray behind a running `serve run`, asked as any chat client asks it: the openai client's chat completion
    with the `top_k` extension, the items read from the answer's `ecr` field. A round's conversations are sent
    at once (the deployment batches concurrent requests). The bearer token, if any, from `token_env`."""

    def __init__(self, base_url: str, model: str, token_env: str):
        import os

        import openai

        self.client, self.model = openai.OpenAI(base_url=base_url, api_key=os.environ.get(token_env) or "none", max_retries=3), model

    def answer(self, persona: dict, messages: list[dict]) -> dict:
        from ecr_ray.sim.seeker import seed_of

        done = self.client.chat.completions.create(model=self.model, messages=messages, seed=seed_of(persona["conversation_id"], len(messages)) % 2**31,
                                                   extra_body={"top_k": TOP})
        return {"items": [i["item"] for i in done.model_extra["ecr"]["items"]], "reply": (done.choices[0].message.content or "").strip()}

    def answer_many(self, asked: list[tuple[dict, list[dict]]]) -> list[dict]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(16, len(asked)))) as pool:
            return list(pool.map(lambda a: self.answer(*a), asked))


class NeutralParts:
    """The parts, with every user message read as neutral and no stance towards any movie."""

    def __init__(self, parts):
        self.parts = parts

    def __getattr__(self, name):
        return getattr(self.parts, name)

    async def detect(self, texts: list[str]) -> list[dict]:
        from ecr_ray.emotion.labels import LABELS

        return [{"labels": ["neutral"], "probs": [float(x == "neutral") for x in LABELS], "stances": []} for _ in texts]


class CoOccurrence(System):
    """The co-occurrence + copy baseline over the conversation's linked entities, with a template reply."""

    def __init__(self, kg, items_table, popularity: np.ndarray, decay: float, copy_bonus: float):
        from ecr_ray.data.linking import TextEntityLinker

        self.kg, self.table, self.popularity, self.decay, self.copy_bonus = kg, items_table, popularity, decay, copy_bonus
        self.linker, self.index = TextEntityLinker(kg, items=True), {int(e): i for i, e in enumerate(kg.item_ids)}

    def answer(self, persona: dict, messages: list[dict]) -> dict:
        from ecr_ray.rec.baselines import baseline_scores
        from ecr_ray.serving.components import conversation_turn

        turn = conversation_turn(messages, self.linker)
        scores = baseline_scores("co-occurrence + copy", [turn], self.popularity, self.table, self.index, self.decay, self.copy_bonus)[0]
        items = [int(self.kg.item_ids[i]) for i in np.argsort(-scores, kind="stable")[:TOP]]
        return templated(self.kg, items)


class AlwaysTarget(System):
    """Knows the seeker's targets: the first one first, then a seeded random order."""

    def __init__(self, kg, seed: int):
        self.kg, self.random = kg, Random(kg, seed)

    def answer(self, persona: dict, messages: list[dict]) -> dict:
        items = [persona["targets"][0], *(i for i in self.random.answer(persona, messages)["items"] if i != persona["targets"][0])][:TOP]
        return templated(self.kg, items)


class Random(System):
    """A seeded random order of every item, another each round."""

    def __init__(self, kg, seed: int):
        self.kg, self.rng = kg, random.Random(seed)

    def answer(self, persona: dict, messages: list[dict]) -> dict:
        items = [int(i) for i in self.rng.sample(list(self.kg.item_ids), TOP)]
        return templated(self.kg, items)


def hits(items: list[int], targets: list[int]) -> dict[int, bool]:
    """Per k of KS: does the top k of `items` hold a target (the round's success rule)."""
    wanted = set(targets)
    return {k: any(i in wanted for i in items[:k]) for k in KS}


def templated(kg, items: list[int]) -> dict:
    """A system's answer with the template reply naming its first item."""
    from ecr_ray.gen.retrieval import item_title

    return {"items": items, "reply": TEMPLATE.format(title=item_title(kg, items[0]))}
