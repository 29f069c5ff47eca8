"""Talking to an OpenAI-compatible endpoint with one discipline for every caller.

Transient errors (429, 5xx, timeouts, connection errors) are retried with exponential backoff and
counted; an answer that fails validation gets one corrective request naming the reason, then is
recorded as failed with its raw text; requests are bounded in rate. Used by the emotion annotation
and the generation scorer (through `ecr_ray.llm.cache`).
"""
from __future__ import annotations

import os
import random
import threading
import time
from typing import Callable

OK, FAILED, ERROR = "ok", "failed", "error"  # answered; answered invalidly twice; no answer after retries


class InvalidAnswer(ValueError):
    pass


def json_answer(answer: str | None):
    """The JSON value of the first {...} in an answer, or InvalidAnswer saying what is wrong."""
    import json
    import re

    match = re.search(r"\{.*\}", answer or "", re.DOTALL)
    if not match:
        raise InvalidAnswer("the answer holds no JSON object")
    try:
        return json.loads(match.group(0))
    except json.JSONDecodeError:
        raise InvalidAnswer("the answer is not valid JSON") from None


def require_api_key(llm, user: str, section: str) -> None:
    """A remote endpoint needs its key: fail before any work starts, naming the variable."""
    from ecr_ray.config import ConfigError

    if llm.base_url and not os.environ.get(llm.api_key_env):
        raise ConfigError(f"{user} with endpoint {llm.base_url} needs an API key in ${llm.api_key_env} "
                          f"(or set {section}.api_key_env to the variable that holds it)")


def openai_client(base_url: str, api_key_env: str, timeout_s: float):
    """The official client; retries are ours (counted), so its own are off."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "unused", max_retries=0, timeout=timeout_s)


def transient_errors() -> tuple:
    """429, 5xx, timeouts and connection errors: worth retrying with backoff."""
    import openai

    return (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


def probe_endpoint(base_url: str, llm: dict) -> None:
    """GET /models with the same retries; a clear error naming the URL when it is down."""
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


class ValidatedChat:
    """Chat requests with retries, a rate bound and one corrective retry of an invalid answer.

    `ask` fills a result record: status, the parsed value, raw answer, error and request counts.
    """

    def __init__(self, llm: dict, qps: float):
        self.llm = llm
        self.client = openai_client(llm["base_url"], llm["api_key_env"], llm["timeout_s"])
        self.transient = transient_errors()
        self.limiter = RateLimiter(qps)

    @staticmethod
    def record(**fields) -> dict:
        return {"raw": None, "error": None, "requests": 0, "retries": 0, "corrected": False, "prompt_tokens": 0,
                "completion_tokens": 0, **fields}

    def ask(self, messages: list[dict], parse: Callable[[str], object], out: dict, response_format: dict | None = None) -> tuple[dict, object]:
        """(the record with its status, the parsed value or None); `response_format` is sent when
        given and the config's `structured` allows it."""
        fmt = response_format if self.llm.get("structured") else None
        for attempt in range(2):  # the answer, then one corrective retry
            try:
                answer = self._complete(messages, out, fmt)
            except self.transient as err:
                return {**out, "status": ERROR, "error": f"{type(err).__name__} from {self.llm['base_url']} after {out['retries']} retries"}, None
            out["raw"] = answer
            try:
                return {**out, "status": OK, "error": None}, parse(answer)
            except InvalidAnswer as err:
                out["error"] = str(err)
            if attempt == 0:
                out["corrected"] = True
                messages = messages + [{"role": "assistant", "content": answer or ""},
                                       {"role": "user", "content": f"That answer is invalid: {out['error']}. Answer again with JSON only."}]
        return {**out, "status": FAILED}, None

    def top_logprobs(self, messages: list[dict], out: dict, top: int = 20) -> list[dict] | None:
        """The first answer token's `top` alternatives ({token, logprob}) with greedy decoding, or None
        when the endpoint gives no logprobs. Transient errors are retried, then raised."""
        choice = self._create(messages, out, temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=top).choices[0]
        content = choice.logprobs.content if choice.logprobs else None
        return [{"token": t.token, "logprob": t.logprob} for t in content[0].top_logprobs] if content else None

    def text(self, messages: list[dict], out: dict, **kwargs) -> str:
        """One answer's text with these request arguments (transient errors retried, then raised)."""
        return self._create(messages, out, **kwargs).choices[0].message.content or ""

    def _complete(self, messages: list[dict], out: dict, response_format: dict | None) -> str:
        response = self._create(messages, out, temperature=self.llm["temperature"], max_tokens=self.llm["max_tokens"],
                                **({"response_format": response_format} if response_format else {}))
        return response.choices[0].message.content or ""

    def _create(self, messages: list[dict], out: dict, **kwargs):
        for retry in range(self.llm["max_retries"] + 1):
            self.limiter.wait()
            out["requests"] += 1
            try:
                response = self.client.chat.completions.create(model=self.llm["model"], messages=messages, **kwargs)
            except self.transient:
                if retry == self.llm["max_retries"]:
                    raise
                out["retries"] += 1
                time.sleep(self.llm["backoff_s"] * 2**retry * (0.5 + random.random()))
                continue
            if response.usage:
                out["prompt_tokens"] += response.usage.prompt_tokens
                out["completion_tokens"] += response.usage.completion_tokens
            return response
        raise AssertionError("unreachable")


def check_answered(mine: list[dict], pending: int, llm, section: str, what: str) -> None:
    """Fail the stage when more than `llm.max_failed_fraction` of the `pending` rows it asked got no answer."""
    unanswered = [r for r in mine if r["status"] == ERROR]
    if pending and len(unanswered) / pending > llm.max_failed_fraction:
        raise RuntimeError(f"the {section} endpoint {llm.base_url or 'local server'} left {len(unanswered)} of {pending} {what} unanswered "
                           f"after {llm.max_retries} retries each (> {section}.max_failed_fraction); first error: {unanswered[0]['error']}")


