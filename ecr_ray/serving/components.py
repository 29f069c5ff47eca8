"""A chat turn's parts, plain objects loaded from a trained run directory (no Ray).

emotion classifier -> entity linker + recommender -> review retriever -> generator. Serve puts each
in a deployment of its own (`ecr_ray/serving/app.py`); `ecr-ray chat` and the benchmarks call them
in-process through `LocalParts`. `answer` composes them once for both.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ecr_ray.config import Config, load_config
from ecr_ray.data.redial import RECOMMENDER, SEEKER
from ecr_ray.rundir import RunDir

ROLES = {"user": SEEKER, "assistant": RECOMMENDER}  # chat API roles -> ReDial roles ("system" is not part of the dialogue)
CLASSIFIER_DIR, GENERATOR_DIR = "models/emotion_classifier", "models/generator"
RECORDED_CONFIG = "_stages/gen-train.json"  # the config the generator (the last model) was trained with


class NotTrained(RuntimeError):
    """The run directory lacks a model the chat needs; the message names the command that trains it."""


def load_run(run_dir: str | RunDir, overrides: Sequence[str] = ()) -> tuple[Config, RunDir]:
    """The run's recorded config (plus overrides) and the run directory, once every model is there."""
    from ecr_ray.rec.checkpoint import META_FILE
    from ecr_ray.rec.stages import MODEL

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    needed = {"emotion classifier": CLASSIFIER_DIR, "recommender": f"models/{MODEL}/{META_FILE}",
              "response generator": f"{GENERATOR_DIR}/generator.json", "retrieval base": "gen/retrieval"}
    missing = [what for what, path in needed.items() if not run.exists(path)]
    if missing or not run.exists(RECORDED_CONFIG):
        preset = "tiny"
        for stage in ("prepare-pool", "emotion-classifier", "rec-train"):  # the preset the run was started with, if any
            if run.exists(f"_stages/{stage}.json"):
                preset = run.read_json(f"_stages/{stage}.json")["config"]["name"]
        raise NotTrained(f"{run.uri} has no trained {', '.join(missing) or 'generator'}: train the run first with "
                         f"`ecr-ray run --config {preset} --run-dir {run.uri}`")
    return load_config(None, overrides, base=run.read_json(RECORDED_CONFIG)["config"]), run


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
    def __init__(self, cfg: Config, run: RunDir, threads: int = 1):
        from ecr_ray.emotion.infer import EmotionPredictor

        self.predictor = EmotionPredictor(run.local_copy(CLASSIFIER_DIR), cfg.emotion.second_label_threshold)
        self.threshold = cfg.emotion.second_label_threshold

    def detect(self, texts: list[str]) -> list[dict]:
        """Per text: the nine probabilities by label and the one or two labels the classifier gives."""
        from ecr_ray.emotion.labels import LABELS, top_labels

        return [{"labels": top_labels(p, self.threshold), "probs": {label: round(float(x), 4) for label, x in zip(LABELS, p)}}
                for p in self.predictor.predict(texts)]


class ItemRecommender:
    """Entity linking over the chat text (movie titles included) and the emotion-aware recommender."""

    def __init__(self, cfg: Config, run: RunDir, threads: int = 1):
        import torch

        from ecr_ray.data.kg import load_kg
        from ecr_ray.data.linking import TextEntityLinker
        from ecr_ray.rec.checkpoint import load_recommender
        from ecr_ray.rec.context import ContextEmbedder
        from ecr_ray.rec.stages import MODEL

        torch.set_num_threads(threads)
        self.cfg = cfg
        self.kg = load_kg(cfg.data.path(cfg.data.kg_dir))
        self.linker = TextEntityLinker(self.kg, items=True)
        self.model, _ = load_recommender(run.local_copy(f"models/{MODEL}"), cfg.rec, cfg.models.allow_download)
        self.embedder = (ContextEmbedder(cfg.rec.context_model, cfg.rec.context_max_length, allow_download=cfg.models.allow_download,
                                         threads=threads) if cfg.rec.context_encoder == "minilm" else None)
        self.item_index = {int(e): i for i, e in enumerate(self.kg.item_ids)}
        with torch.no_grad():
            self.embeds = self.model.kg()  # the KG encoding does not depend on the conversation: once per replica

    def recommend(self, messages: list[dict], user_probs: list[list[float]], top_k: int) -> dict:
        """Items with scores and titles, and the entities linked in the conversation.
        `user_probs`: the emotion probabilities of each user message, in order."""
        import torch

        from ecr_ray.gen.retrieval import item_title
        from ecr_ray.rec.features import context_text, entity_emotions

        turn = conversation_turn(messages, self.linker)
        users = [i for i, r in enumerate(turn["context_roles"]) if r == SEEKER]
        entities, emotions = entity_emotions(turn, dict(zip(((0, i) for i in users), user_probs)), self.cfg.rec.max_entities)
        text = context_text(turn["context"], turn["context_roles"])
        batch = {"context_text": [text], "entities": [entities], "entity_emotions": [emotions]}
        if self.embedder is not None:
            batch["context_vec"] = [self.embedder.embed([text])[0]]
        with torch.no_grad():
            logits = self.model(self.model.inputs(batch), self.embeds)[0]
        logits[[self.item_index[e] for e in turn["entities"] if e in self.item_index]] = float("-inf")  # not what was said
        probs = torch.softmax(logits, 0)
        scores, top = probs.topk(top_k)
        items = [{"item": int(self.kg.item_ids[i]), "title": item_title(self.kg, int(self.kg.item_ids[i])), "score": round(float(s), 6)}
                 for s, i in zip(scores.tolist(), top.tolist())]
        return {"items": items, "entities": [{"id": e, "name": self.kg.names[e]} for e in turn["entities"]]}


class KnowledgeRetriever:
    def __init__(self, cfg: Config, run: RunDir, threads: int = 1):
        from ecr_ray.data.kg import load_kg
        from ecr_ray.gen.retrieval import Retriever
        from ecr_ray.gen.stages import RETRIEVAL

        self.cfg = cfg.gen
        self.retriever = Retriever(load_kg(cfg.data.path(cfg.data.kg_dir)), run.read_table(RETRIEVAL).to_pylist())

    def knowledge(self, item: int) -> dict:
        return self.retriever.knowledge(item, self.cfg.max_entities, self.cfg.max_triples)


class Responder:
    """The fine-tuned generator with retrieval, prompted as in training and batch generation."""

    def __init__(self, cfg: Config, run: RunDir, threads: int = 1):
        from ecr_ray.gen.generate import ResponseGenerator, decoding_settings

        self.turns = cfg.gen.context_turns
        self.generator = ResponseGenerator(run.local_copy(GENERATOR_DIR), {}, decoding_settings(cfg.gen), retrieval=True,
                                           allow_download=cfg.models.allow_download, threads=threads)

    def _row(self, messages: list[dict], title: str, knowledge: dict) -> dict:
        from ecr_ray.rec.features import context_text

        dialogue = [m for m in messages if m["role"] in ROLES][-self.turns:]
        return {"context": context_text([m["content"] for m in dialogue], [ROLES[m["role"]] for m in dialogue]),
                "title": title, "knowledge": knowledge}

    def respond(self, messages: list[dict], title: str, knowledge: dict) -> str:
        return self.generator.respond([self._row(messages, title, knowledge)])[0][0]

    def stream(self, messages: list[dict], title: str, knowledge: dict):
        yield from self.generator.stream(self._row(messages, title, knowledge))


PARTS = {"classifier": EmotionDetector, "recommender": ItemRecommender, "retriever": KnowledgeRetriever, "generator": Responder}
METHODS = {"detect": "classifier", "recommend": "recommender", "knowledge": "retriever", "respond": "generator", "stream": "generator"}


class LocalParts:
    """Every part in this process, behind the awaitable interface `answer` takes (what Serve's handles give)."""

    def __init__(self, cfg: Config, run: RunDir, threads: int = 1):
        self.parts = {name: cls(cfg, run, threads) for name, cls in PARTS.items()}

    async def call(self, method: str, *args):
        return getattr(self.parts[METHODS[method]], method)(*args)

    async def stream(self, *args):
        for piece in self.parts["generator"].stream(*args):
            yield piece
            await asyncio.sleep(0)


def user_emotions(messages: list[dict], detected: list[dict]) -> list[dict]:
    """The detected emotions next to each user message they belong to."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return [{"message": text, **d} for text, d in zip(users, detected, strict=True)]


async def recommend(parts, messages: list[dict], top_k: int) -> dict:
    """emotions of every user message -> items, scores, entities (what POST /recommend answers)."""
    detected = await parts.call("detect", [m["content"] for m in messages if m["role"] == "user"])
    found = await parts.call("recommend", messages, [list(d["probs"].values()) for d in detected], top_k)
    return {**found, "emotions": user_emotions(messages, detected)}


async def answer(parts, messages: list[dict], top_k: int) -> tuple[dict, tuple]:
    """The recommendation and the top item's knowledge, and the generator's arguments for the response
    (the caller generates it whole or streams it)."""
    found = await recommend(parts, messages, top_k)
    top = found["items"][0]
    knowledge = await parts.call("knowledge", top["item"])
    return {**found, "knowledge": {"item": top["title"], "entities": knowledge["entities"], "triples": knowledge["triples"]}}, (
        messages, top["title"], knowledge)

