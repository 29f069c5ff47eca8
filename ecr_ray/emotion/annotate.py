"""LLM emotion annotation through any OpenAI-compatible endpoint (the official `openai` client).

`LLMAnnotator` is the Ray Data UDF: it sends each utterance with its context, validates the answer
(JSON, known labels, one or two of them), asks once more with the reason when it is invalid, and
records a still-invalid answer as failed with the raw text. Transient errors (429, 5xx, timeouts,
connection errors) are retried with exponential backoff; requests are bounded in concurrency and
rate. Every result carries its cache key: (model, prompt version, utterance hash).
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from ecr_ray.emotion.labels import LABELS, MAX_LABELS
from ecr_ray.llm_client import ERROR, FAILED, OK, CachedAsker, InvalidAnswer, ValidatedChat, json_answer  # noqa: F401 - re-exported for the stages

PROMPT_VERSION = "v1"
SYSTEM_PROMPT = (
    "You label the emotions of a movie seeker talking to a movie recommender. Choose one or two labels "
    "from: like, curious, happy, grateful, negative, neutral, nostalgia, agreement, surprise. "
    'Answer with JSON only, for example {"emotions": ["like"]} or {"emotions": ["curious", "happy"]}.'
)
RESULT_SCHEMA = pa.schema([
    ("key", pa.string()), ("utterance_id", pa.string()), ("labels", pa.list_(pa.string())),
    ("status", pa.string()), ("source", pa.string()), ("raw", pa.string()), ("error", pa.string()),
    ("requests", pa.int32()), ("retries", pa.int32()), ("corrected", pa.bool_()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()), ("run", pa.string()),
])


def cache_key(model: str, context: list[str], text: str) -> str:
    utterance = hashlib.sha256(json.dumps([context, text]).encode()).hexdigest()
    return hashlib.sha256(f"{model}|{PROMPT_VERSION}|{utterance}".encode()).hexdigest()[:32]


def build_messages(context: list[str], roles: list[str], text: str, context_turns: int, max_chars: int) -> list[dict]:
    shown = [f"{role}: {utt[:max_chars]}" for role, utt in zip(roles[-context_turns:], context[-context_turns:], strict=True)]
    dialogue = "\n".join(shown) if shown else "(start of the dialogue)"
    user = f"Dialogue so far:\n{dialogue}\n\nSeeker's utterance to label:\n{text[:max_chars]}\n\nJSON answer:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_labels(answer: str | None) -> list[str]:
    """The labels of a valid answer, or InvalidAnswer saying what is wrong."""
    value = json_answer(answer)
    labels = value.get("emotions") if isinstance(value, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InvalidAnswer('the JSON has no "emotions" list of strings')
    labels = list(dict.fromkeys(x.strip().lower() for x in labels))
    unknown = [x for x in labels if x not in LABELS]
    if unknown:
        raise InvalidAnswer(f"unknown labels {unknown}; use only {', '.join(LABELS)}")
    if not 1 <= len(labels) <= MAX_LABELS:
        raise InvalidAnswer(f"{len(labels)} labels given; give one or two")
    return labels


class LLMAnnotator(CachedAsker):
    """Ray Data UDF over batches of user utterances; RESULT_SCHEMA rows into the cache."""

    schema = RESULT_SCHEMA

    def __init__(self, llm: dict, actors: int, run: str, cache: str, context_turns: int, max_chars: int):
        super().__init__(llm, actors, run, cache)
        self.context_turns, self.max_chars = context_turns, max_chars

    def ask(self, row: dict) -> dict:
        messages = build_messages(row["context"], row["context_roles"], row["text"], self.context_turns, self.max_chars)
        out = ValidatedChat.record(key=row["key"], utterance_id=row["utterance_id"], source=f"llm:{self.chat.llm['model']}", run=self.run)
        result, labels = self.chat.ask(messages, parse_labels, out)
        return {**result, "labels": labels or []}
