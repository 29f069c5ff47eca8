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
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from ecr_ray.emotion.labels import LABELS, MAX_LABELS

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
OK, FAILED, ERROR = "ok", "failed", "error"  # answered; answered invalidly twice; no answer after retries


class InvalidAnswer(ValueError):
    pass


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
    match = re.search(r"\{.*\}", answer or "", re.DOTALL)
    if not match:
        raise InvalidAnswer("the answer holds no JSON object")
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        raise InvalidAnswer("the answer is not valid JSON") from None
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


def openai_client(base_url: str, api_key_env: str, timeout_s: float):
    """The official client; retries are ours (counted), so its own are off."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused", max_retries=0, timeout=timeout_s)


def transient_errors() -> tuple:
    """429, 5xx, timeouts and connection errors: worth retrying with backoff."""
    import openai

    return (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


def probe_endpoint(base_url: str, llm: dict) -> None:
    """GET /models with the annotation's retries; a clear error naming the URL when it is down."""
    import openai

    client = openai_client(base_url, llm["api_key_env"], llm["timeout_s"])
    for retry in range(llm["max_retries"] + 1):
        try:
            client.models.list()
            return
        except openai.NotFoundError:
            return  # a server without /models can still answer chat completions
        except transient_errors() as err:
            if retry == llm["max_retries"]:
                raise RuntimeError(f"the LLM endpoint {base_url} is not reachable after {llm['max_retries']} retries: {err}") from None
            time.sleep(llm["backoff_s"] * 2**retry)


class RateLimiter:
    """At most `qps` starts per second (shared by the threads of one actor)."""

    def __init__(self, qps: float):
        self._interval = 1.0 / qps if qps > 0 else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        time.sleep(max(0.0, start - now))


class LLMAnnotator:
    """Ray Data UDF over batches of user utterances (pyarrow in, RESULT_SCHEMA out)."""

    def __init__(self, llm: dict, actors: int, context_turns: int, max_chars: int, run: str = ""):
        self.llm = llm
        self.context_turns, self.max_chars, self.run = context_turns, max_chars, run
        self.client = openai_client(llm["base_url"], llm["api_key_env"], llm["timeout_s"])
        self.transient = transient_errors()
        self.threads = max(1, llm["concurrency"] // actors)
        self.limiter = RateLimiter(llm["qps"] / actors)

    def __call__(self, batch: pa.Table) -> pa.Table:
        with ThreadPoolExecutor(self.threads) as pool:
            rows = list(pool.map(self.annotate, batch.to_pylist()))
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

    def annotate(self, row: dict) -> dict:
        messages = build_messages(row["context"], row["context_roles"], row["text"], self.context_turns, self.max_chars)
        out = {"key": row["key"], "utterance_id": row["utterance_id"], "labels": [], "source": f"llm:{self.llm['model']}",
               "raw": None, "error": None, "requests": 0, "retries": 0, "corrected": False, "prompt_tokens": 0, "completion_tokens": 0,
               "run": self.run}
        for attempt in range(2):  # the answer, then one corrective retry
            try:
                answer = self._complete(messages, out)
            except self.transient as err:
                return {**out, "status": ERROR, "error": f"{type(err).__name__} from {self.llm['base_url']} after {out['retries']} retries"}
            out["raw"] = answer
            try:
                return {**out, "status": OK, "labels": parse_labels(answer)}
            except InvalidAnswer as err:
                out["error"] = str(err)
            if attempt == 0:
                out["corrected"] = True
                messages = messages + [{"role": "assistant", "content": answer or ""},
                                       {"role": "user", "content": f"That answer is invalid: {out['error']}. Answer again with JSON only."}]
        return {**out, "status": FAILED}

    def _complete(self, messages: list[dict], out: dict) -> str:
        for retry in range(self.llm["max_retries"] + 1):
            self.limiter.wait()
            out["requests"] += 1
            try:
                response = self.client.chat.completions.create(
                    model=self.llm["model"], messages=messages, temperature=self.llm["temperature"], max_tokens=self.llm["max_tokens"])
            except self.transient:
                if retry == self.llm["max_retries"]:
                    raise
                out["retries"] += 1
                time.sleep(self.llm["backoff_s"] * 2**retry * (0.5 + random.random()))
                continue
            if response.usage:
                out["prompt_tokens"] += response.usage.prompt_tokens
                out["completion_tokens"] += response.usage.completion_tokens
            return response.choices[0].message.content or ""
        raise AssertionError("unreachable")
