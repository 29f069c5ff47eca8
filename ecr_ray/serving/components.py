"""A chat turn's parts, plain objects loaded from a trained run directory (no Ray).

emotion classifier -> entity linker + recommender -> review retriever -> generator. Each part loads
its model with the config saved beside it (`artifacts.model_config`). Serve puts each in a deployment
of its own (`ecr_ray/serving/app.py`); `ecr-ray chat` and the benchmarks call them in-process through
`LocalParts`. `recommend` and `answer` compose them once for both; only they shape (and round) what
goes out over HTTP.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ecr_ray.artifacts import (CLASSIFIER, GENERATOR, POOL, RECOMMENDER, RETRIEVAL, STANCE, NotTrained, is_trained, model, model_config,
                               report, split_name)
from ecr_ray.config import Config
from ecr_ray.data.redial import RECOMMENDER as RECOMMENDER_ROLE
from ecr_ray.data.redial import SEEKER
from ecr_ray.rundir import RunDir

ROLES = {"user": SEEKER, "assistant": RECOMMENDER_ROLE}  # chat API roles -> ReDial roles ("system" is not part of the dialogue)
REMEMBERED = 4096  # user messages whose emotions a classifier replica keeps
NEEDED = {"emotion classifier": CLASSIFIER, "recommender": RECOMMENDER, "response generator": GENERATOR}  # models the chat loads


def load_run(run_dir: str | RunDir, overrides: Sequence[str] = ()) -> tuple[Config, RunDir]:
    """The chat's config (the generator's, the last model trained, plus overrides) and the run directory,
    once every model the chat needs and the retrieval base are there."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    trained = [name for name in NEEDED.values() if is_trained(run, name)]
    missing = [what for what, name in NEEDED.items() if name not in trained] + ([] if run.exists(RETRIEVAL) else ["retrieval base"])
    if missing:
        preset = model_config(run, trained[0]).name if trained else "tiny"  # the preset the run was started with, if any
        raise NotTrained(f"{run.uri} has no trained {', '.join(missing)}: train the run first with "
                         f"`ecr-ray run --config {preset} --run-dir {run.uri}`")
    return model_config(run, GENERATOR, overrides), run


def turn_messages(context: list[str], roles: list[str]) -> list[dict]:
    """A logged dialogue's context as the chat messages a client sends (empty utterances left out)."""
    by_role = {v: k for k, v in ROLES.items()}
    return [{"role": by_role[r], "content": c} for c, r in zip(context, roles, strict=True) if c.strip()]


def conversation_turn(messages: list[dict], linker) -> dict:
    """OpenAI-style messages -> the recommender turn after them, as the prepared ReDial turns are:
    context, roles, and the entities met so far with the index of their latest mention."""
    dialogue = [m for m in messages if m["role"] in ROLES]
    latest: dict[int, int] = {}
    for i, m in enumerate(dialogue):
        for entity in linker.link(m["content"]):
            latest.pop(entity, None)
            latest[entity] = i
    return {"conversation_id": 0, "turn": len(dialogue), "context": [m["content"] for m in dialogue],
            "context_roles": [ROLES[m["role"]] for m in dialogue], "entities": list(latest), "entity_turns": list(latest.values())}


class EmotionDetector:
    """The emotion classifier over user messages; a message's emotions are kept (the last REMEMBERED
    texts), since a chat client sends the whole conversation every turn and only its newest message is new."""

    def __init__(self, run: RunDir, overrides: Sequence[str] = (), threads: int = 1):
        import torch

        from ecr_ray.emotion.infer import EmotionPredictor

        torch.set_num_threads(threads)
        cfg = model_config(run, CLASSIFIER, overrides)
        self.threshold = cfg.emotion.second_label_threshold
        self.predictor = EmotionPredictor(run.local_copy(model(CLASSIFIER)), self.threshold)
        self.known: dict[str, dict] = {}
        self.stance = None  # a run trained before the stance model reads no stance
        if run.exists(model(STANCE)):
            from ecr_ray.data.kg import load_kg
            from ecr_ray.data.linking import TextEntityLinker
            from ecr_ray.emotion.stance import StancePredictor

            self.kg = load_kg(cfg.data.path(cfg.data.kg_dir))
            self.linker, self.stance = TextEntityLinker(self.kg, items=True), StancePredictor(run.local_copy(model(STANCE)))

    def detect(self, texts: list[str]) -> list[dict]:
        """Per text: the nine probabilities (label order of `LABELS`), the one or two labels the classifier gives,
        and the user's stance towards each movie the text names (with a stance model)."""
        from ecr_ray.emotion.labels import top_labels

        new = [t for t in dict.fromkeys(texts) if t not in self.known]
        stances = self.stances(new)
        for text, p, s in zip(new, self.predictor.predict(new), stances, strict=True):
            self.known[text] = {"labels": top_labels(p, self.threshold), "probs": [float(x) for x in p], "stances": s}
        while len(self.known) > REMEMBERED:  # the oldest go first (dicts keep insertion order)
            del self.known[next(iter(self.known))]
        return [self.known[t] for t in texts]

    def stances(self, texts: list[str]) -> list[list[dict]]:
        """Per text, each movie it names: {entity, name, stance, probs by stance}; empty lists without a stance model."""
        if self.stance is None:
            return [[] for _ in texts]
        from ecr_ray.emotion.stance import STANCES, named_movies

        named = [(i, e, name) for i, t in enumerate(texts) for e, name in named_movies(self.linker, self.kg, t)]
        probs = self.stance.predict([name for _, _, name in named], [texts[i] for i, _, _ in named]) if named else []
        out = [[] for _ in texts]
        for (i, e, name), p in zip(named, probs, strict=True):
            out[i].append({"entity": e, "name": name, "stance": STANCES[int(p.argmax())], "probs": {k: round(float(v), 4) for k, v in zip(STANCES, p, strict=True)}})
        return out


class ItemRecommender:
    """Entity linking over the chat text (movie titles included) and the emotion-aware recommender."""

    def __init__(self, run: RunDir, overrides: Sequence[str] = (), threads: int = 1):
        import torch

        from ecr_ray.data.kg import load_kg
        from ecr_ray.data.linking import TextEntityLinker
        from ecr_ray.data.movie_info import movie_cards
        from ecr_ray.gen.reviews import item_neighbours
        from ecr_ray.rec.context import ContextEmbedder
        from ecr_ray.rec.evaluate import load_trained
        from ecr_ray.rec.features import said_items

        torch.set_num_threads(threads)
        cfg = model_config(run, RECOMMENDER, overrides)
        self.rcfg = cfg.rec
        self.kg = load_kg(cfg.data.path(cfg.data.kg_dir))
        self.linker = TextEntityLinker(self.kg, items=True)
        self.model = load_trained(cfg, run)
        self.embedder = (ContextEmbedder(cfg.rec.context_model, cfg.rec.context_max_length, allow_download=cfg.models.allow_download,
                                         threads=threads) if cfg.rec.context_encoder == "minilm" else None)
        self.said = said_items(self.kg)  # a movie the user named, under any of its title's entities
        self.facts = item_neighbours(self.kg)  # what a reason may say an entity and an item share
        self.cards = movie_cards(self.kg, cfg.data.path(cfg.data.movie_info_file)) if cfg.data.movie_info_file else {}
        with torch.no_grad():
            self.embeds = self.model.kg()  # the KG encoding does not depend on the conversation: once per replica

    def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int, user_stances: list[list[dict]] | None = None) -> dict:
        """Items with their probabilities, titles, movie cards (None where the metadata has none) and
        reasons, and the entities linked in the conversation. `user_probs`: the emotion
        probabilities of each user message, in order; `user_stances`: the stances read in each (EmotionDetector)."""
        import torch

        from ecr_ray.gen.retrieval import item_title
        from ecr_ray.rec.reasons import recommendation_reasons

        logits, turn, mentioned, stances, batch = self.scores(messages, user_probs, user_stances)
        scores, top = torch.softmax(logits, 0).topk(top_k)
        with torch.no_grad():
            evidence = self.model.entity_evidence(batch, top)
        items = []
        for column, (s, i) in enumerate(zip(scores.tolist(), top.tolist(), strict=True)):
            item = int(self.kg.item_ids[i])
            items.append({"item": item, "title": item_title(self.kg, item), "score": float(s), "movie": self.cards.get(item),
                          "reasons": recommendation_reasons(self.kg, self.facts, mentioned["entities"], mentioned["entity_emotions"],
                                                            evidence, column, item, stances, mentioned["entity_by_seeker"])})
        return {"items": items, "entities": [{"id": e, "name": self.kg.names[e]} for e in turn["entities"]]}

    def scores(self, messages: list[dict], user_probs: list[list[float]], user_stances: list[list[dict]] | None = None) -> tuple:
        """The logits over every item (-inf for the movies the user named), and the turn, its mentioned
        entities, the stance read for each and the example batch they were scored from."""
        import torch

        from ecr_ray.emotion.stance import STANCES
        from ecr_ray.rec.features import context_text, entity_emotions, with_stances

        turn = conversation_turn(messages, self.linker)
        users = [i for i, r in enumerate(turn["context_roles"]) if r == SEEKER]
        said = [(users[u], s) for u, found in enumerate(user_stances or []) for s in found]
        probs = dict(zip(((0, i) for i in users), user_probs))
        if self.rcfg.entity_stance:  # the recommender reads the stance towards each movie too, as it was trained
            probs = with_stances(probs, {(0, t, s["entity"]): [s["probs"][k] for k in STANCES] for t, s in said})
        mentioned = entity_emotions(turn, probs, self.rcfg)
        read = {(t, s["entity"]): s["stance"] for t, s in said}
        latest = dict(zip(turn["entities"], turn["entity_turns"], strict=True))
        stances = [read.get((latest[e], e)) for e in mentioned["entities"]]  # at the entity's latest mention, as its emotions
        text = context_text(turn["context"], turn["context_roles"])
        batch = {"conversation_id": [0], "context_text": [text], **{k: [v] for k, v in mentioned.items()}}
        if self.embedder is not None:
            batch["context_vec"] = [self.embedder.embed([text])[0]]
        with torch.no_grad():
            logits = self.model(self.model.inputs(batch), self.embeds)[0]
        logits[[i for e in turn["entities"] for i in self.said.get(e, ())]] = float("-inf")  # not what was said
        return logits, turn, mentioned, stances, batch


class KnowledgeRetriever:
    def __init__(self, run: RunDir, overrides: Sequence[str] = (), threads: int = 1):
        from ecr_ray.gen.retrieval import load_retriever

        cfg = model_config(run, GENERATOR, overrides)
        self.max_entities, self.max_triples = cfg.gen.max_entities, cfg.gen.max_triples
        self.retriever = load_retriever(cfg, run)

    def knowledge(self, item: int) -> dict:
        return self.retriever.knowledge(item, self.max_entities, self.max_triples)


def evaluated_decoding(run: RunDir) -> list[str]:
    """The decoding the chat path was evaluated with (gen-eval-served's report on the pool's dev turns), as
    overrides: the chat decodes as its figures were measured, not as the generator's training run was configured."""
    path = report(f"gen-eval-served-{split_name(POOL)}")
    return decoding_overrides(run.read_json(path).get("decoding", {}) if run.exists(path) else {})


def decoding_overrides(decoding: dict) -> list[str]:
    """Decoding knobs as `--set` overrides."""
    import json

    return [f"gen.decoding.{k}={json.dumps(v)}" for k, v in decoding.items()]


class Responder:
    """The fine-tuned generator with retrieval, prompted as in training and batch generation."""

    def __init__(self, run: RunDir, overrides: Sequence[str] = (), threads: int = 1):
        from ecr_ray.gen.generate import ResponseGenerator

        cfg = model_config(run, GENERATOR, [*evaluated_decoding(run), *overrides])
        self.turns = cfg.gen.context_turns
        self.generator = ResponseGenerator(run.local_copy(model(GENERATOR)), cfg.gen.generator, cfg.gen.decoding, retrieval=True,
                                           allow_download=cfg.models.allow_download, threads=threads)

    def row(self, messages: list[dict], title: str, knowledge: dict) -> dict:
        """The generator's input for a chat turn: the last gen.context_turns messages, the item, its knowledge."""
        from ecr_ray.rec.features import context_text

        dialogue = [m for m in messages if m["role"] in ROLES][-self.turns:]
        return {"context": context_text([m["content"] for m in dialogue], [ROLES[m["role"]] for m in dialogue]),
                "title": title, "knowledge": knowledge}

    def reply(self, messages: list[dict], title: str, knowledge: dict, options: dict | None = None) -> dict:
        return self.generator.reply(self.row(messages, title, knowledge), options)

    def stream(self, messages: list[dict], title: str, knowledge: dict, options: dict | None = None):
        yield from self.generator.stream(self.row(messages, title, knowledge), options)

    def chat_batch(self):
        """Concurrent chat turns decoded together (`ChatBatch` over `row`s)."""
        from ecr_ray.gen.generate import ChatBatch

        return ChatBatch(self.generator)


class LocalParts:
    """Every part in this process, behind the awaitable interface `answer` takes (what Serve's handles give)."""

    def __init__(self, run: RunDir, overrides: Sequence[str] = (), threads: int = 1):
        self.classifier = EmotionDetector(run, overrides, threads)
        self.recommender = ItemRecommender(run, overrides, threads)
        self.retriever = KnowledgeRetriever(run, overrides, threads)
        self.generator = Responder(run, overrides, threads)

    async def detect(self, texts: list[str]) -> list[dict]:
        return self.classifier.detect(texts)

    async def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int, user_stances: list[list[dict]] | None = None) -> dict:
        return self.recommender.recommend(messages, user_probs, top_k, user_stances)

    async def knowledge(self, item: int) -> dict:
        return self.retriever.knowledge(item)

    async def reply(self, messages: list[dict], title: str, knowledge: dict, options: dict | None = None) -> dict:
        return self.generator.reply(messages, title, knowledge, options)

    async def stream(self, messages: list[dict], title: str, knowledge: dict, options: dict | None = None):
        for piece in self.generator.stream(messages, title, knowledge, options):
            yield piece
            await asyncio.sleep(0)


def user_emotions(messages: list[dict], detected: list[dict]) -> list[dict]:
    """The detected emotions next to each user message they belong to, probabilities by label (rounded for the answer)."""
    from ecr_ray.emotion.labels import LABELS

    users = [m["content"] for m in messages if m["role"] == "user"]
    return [{"message": text, "labels": d["labels"], "probs": {label: round(p, 4) for label, p in zip(LABELS, d["probs"], strict=True)},
             "stances": d["stances"]} for text, d in zip(users, detected, strict=True)]


async def recommend(parts, messages: list[dict], top_k: int) -> dict:
    """emotions of every user message -> items, scores, entities (what POST /recommend answers)."""
    detected = await parts.detect([m["content"] for m in messages if m["role"] == "user"])
    found = await parts.recommend(messages, [d["probs"] for d in detected], top_k, [d["stances"] for d in detected])
    items = [{**i, "score": round(i["score"], 6)} for i in found["items"]]
    return {**found, "items": items, "emotions": user_emotions(messages, detected)}


async def answer(parts, messages: list[dict], top_k: int) -> tuple[dict, tuple]:
    """The recommendation and the top item's knowledge, and the generator's arguments for the response
    (the caller generates it whole or streams it)."""
    found = await recommend(parts, messages, top_k)
    top = found["items"][0]
    knowledge = await parts.knowledge(top["item"])
    return {**found, "knowledge": {"item": top["title"], "entities": knowledge["entities"], "triples": knowledge["triples"]}}, (
        messages, top["title"], knowledge)
