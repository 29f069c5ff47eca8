"""The paper's LLM scorer: five 0-9 scores per response from an OpenAI-compatible endpoint.

A fixed rubric (its hash is part of the cache key), the answer's JSON schema asked for
(`SCORE_FORMAT`: the local server enforces it, so even SmolLM2 answers validly), JSON answers
validated (all five criteria, integers 0..9), one corrective retry, transient errors retried with backoff, answers
cached by (model, rubric, context, item, response) in cache/scores.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from ecr_ray.llm.cache import CachedAsker
from ecr_ray.llm.client import InvalidAnswer, ValidatedChat, json_answer

CRITERIA = ("emotional_intensity", "emotional_persuasiveness", "logic_persuasiveness", "informativeness", "lifelikeness")
RUBRIC = (
    "You are an impartial judge of a movie recommender's response to a user. Rate it on five criteria, each an "
    "integer from 0 (worst) to 9 (best): emotional_intensity (how strongly it expresses emotion), "
    "emotional_persuasiveness (how much its feelings make the user want to watch the movie), logic_persuasiveness "
    "(how well its reasons support the recommendation), informativeness (how much specific information about the "
    "movie it gives), lifelikeness (how natural and human it sounds). Answer with one JSON object only, holding "
    "exactly these five keys, each with an integer value from 0 to 9: emotional_intensity, emotional_persuasiveness, "
    "logic_persuasiveness, informativeness, lifelikeness."
)
SCORE_FORMAT = {"type": "json_schema", "json_schema": {"name": "scores", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": list(CRITERIA),
    "properties": {c: {"type": "integer", "enum": list(range(10))} for c in CRITERIA}}}}
SCORE_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("raw", pa.string()), ("error", pa.string()),
    ("requests", pa.int32()), ("retries", pa.int32()), ("corrected", pa.bool_()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()), ("run", pa.string()),
    *[(c, pa.int8()) for c in CRITERIA],
])


def score_key(model: str, context: str, title: str, response: str) -> str:
    text = hashlib.sha256(json.dumps([context, title, response]).encode()).hexdigest()
    rubric = hashlib.sha256((RUBRIC + json.dumps(SCORE_FORMAT)).encode()).hexdigest()  # another rubric or format never reuses these scores
    return hashlib.sha256(f"{model}|{rubric}|{text}".encode()).hexdigest()[:32]


def score_messages(context: str, title: str, response: str) -> list[dict]:
    user = f"Conversation:\n{context}\n\nRecommended movie: {title}\n\nResponse to rate:\n{response}\n\nJSON scores:"
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def parse_scores(answer: str | None) -> dict[str, int]:
    value = json_answer(answer)
    if not isinstance(value, dict):
        raise InvalidAnswer("the JSON is not an object")
    missing = [c for c in CRITERIA if c not in value]
    if missing:
        raise InvalidAnswer(f"missing criteria {missing}; give all of {', '.join(CRITERIA)}")
    bad = [c for c in CRITERIA if not (isinstance(value[c], int) and not isinstance(value[c], bool) and 0 <= value[c] <= 9)]
    if bad:
        raise InvalidAnswer(f"{bad} should be integers from 0 to 9")
    return {c: value[c] for c in CRITERIA}


class ResponseScorer(CachedAsker):
    """Ray Data UDF over batches {key, context, title, response}; SCORE_SCHEMA rows into the cache."""

    schema = SCORE_SCHEMA

    def ask(self, row: dict) -> dict:
        out = ValidatedChat.record(key=row["key"], run=self.run)
        result, scores = self.chat.ask(score_messages(row["context"], row["title"], row["response"]), parse_scores, out,
                                       SCORE_FORMAT)
        return {**result, **(scores or dict.fromkeys(CRITERIA))}
