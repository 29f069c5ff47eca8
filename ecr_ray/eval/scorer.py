"""The paper's LLM scores as a cached Ray Data UDF: five 0-9 scores per response from the judge.

Without an endpoint the judge runs in the actor (`judge.LocalJudge`: the digit distribution read
from the model itself). With one (`eval.scorer.base_url`) each criterion's digit distribution comes
from `top_logprobs`; an endpoint that gives no logprobs is asked instead for all five as one JSON
object of the schema `SCORE_FORMAT` (validated, one corrective retry). Scores are cached by (judge,
rubric, context, item, response) in cache/scores, so a re-run or a crash resumes.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from ecr_ray.eval.judge import ASK, CRITERIA, QUESTIONS, RUBRIC, judge_messages, logprob_score
from ecr_ray.llm.cache import CachedAsker
from ecr_ray.llm.client import ERROR, OK, InvalidAnswer, ValidatedChat, json_answer

JSON_RUBRIC = (
    "You are an impartial judge of a movie recommender's response to a user. Rate it on five criteria, each an "
    "integer from 0 (worst) to 9 (best): " + "; ".join(f"{c}: {q}" for c, q in QUESTIONS.items()) +
    " Answer with one JSON object only, holding exactly these five keys, each with an integer value from 0 to 9.")
SCORE_FORMAT = {"type": "json_schema", "json_schema": {"name": "scores", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": list(CRITERIA),
    "properties": {c: {"type": "integer", "enum": list(range(10))} for c in CRITERIA}}}}
SCORE_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("source", pa.string()), ("raw", pa.string()), ("error", pa.string()),
    ("requests", pa.int32()), ("retries", pa.int32()), ("corrected", pa.bool_()),
    ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()), ("run", pa.string()),
    *[(c, pa.float32()) for c in CRITERIA],
])


def score_key(judge: str, context: str, title: str, response: str) -> str:
    text = hashlib.sha256(json.dumps([context, title, response]).encode()).hexdigest()
    rubric = hashlib.sha256(json.dumps([RUBRIC, ASK, QUESTIONS, JSON_RUBRIC, SCORE_FORMAT]).encode()).hexdigest()  # another rubric never reuses these
    return hashlib.sha256(f"{judge}|{rubric}|{text}".encode()).hexdigest()[:32]


def json_messages(context: str, title: str, response: str) -> list[dict]:
    user = f"Conversation:\n{context}\n\nRecommended movie: {title}\n\nResponse to rate:\n{response}\n\nJSON scores:"
    return [{"role": "system", "content": JSON_RUBRIC}, {"role": "user", "content": user}]


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
    """Ray Data UDF over batches {key, context, title, response}; SCORE_SCHEMA rows into the cache.
    `llm` without a base_url: the judge model `llm["model"]` runs here, on `threads` torch threads."""

    schema = SCORE_SCHEMA

    def __init__(self, llm: dict, actors: int, run: str, cache: str, threads: int = 1, allow_download: bool = False):
        import pyarrow.fs as pafs

        from ecr_ray.eval.judge import LocalJudge

        if llm["base_url"]:
            super().__init__(llm, actors, run, cache)
            self.judge = None
        else:
            self.judge = LocalJudge(llm["model"], allow_download, threads)
            self.threads, self.run = 1, run  # one model, one response at a time
            self.fs, self.cache = pafs.FileSystem.from_uri(cache)

    def ask(self, row: dict) -> dict:
        import openai

        out = ValidatedChat.record(key=row["key"], run=self.run)
        args = row["context"], row["title"], row["response"]
        if self.judge:
            return {**out, "status": OK, "source": "local", **self.judge.score(*args)}
        try:
            scores = {c: logprob_score(self.chat.top_logprobs(judge_messages(*args, c), out) or []) for c in CRITERIA}
        except self.chat.transient as err:
            return {**out, "status": ERROR, "source": "logprobs", "error": f"{type(err).__name__} after {out['retries']} retries",
                    **dict.fromkeys(CRITERIA)}
        except openai.BadRequestError:  # an endpoint that refuses logprobs
            scores = {}
        if scores and None not in scores.values():
            return {**out, "status": OK, "source": "logprobs", **scores}
        result, parsed = self.chat.ask(json_messages(*args), parse_scores, out, SCORE_FORMAT)  # no logprobs offered
        return {**result, "source": "json", **(parsed or dict.fromkeys(CRITERIA))}
