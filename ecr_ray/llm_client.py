"""Talking to an OpenAI-compatible endpoint with one discipline for every stage that does.

Transient errors (429, 5xx, timeouts, connection errors) are retried with exponential backoff and
counted; an answer that fails validation gets one corrective request naming the reason, then is
recorded as failed with its raw text; requests are bounded in rate. Answers are cached in parquet
parts by key, one part per batch written by the actor that asked, so a re-run or a crash resumes
without asking again. Used by the emotion annotation and the generation scorer.
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

    def ask(self, messages: list[dict], parse: Callable[[str], object], out: dict) -> tuple[dict, object]:
        """(the record with its status, the parsed value or None)."""
        for attempt in range(2):  # the answer, then one corrective retry
            try:
                answer = self._complete(messages, out)
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


class CachedAsker:
    """Ray Data UDF base: a batch's rows asked in threads (`ask`), their results written as one cache part by
    this actor before it returns, so a stage killed mid-way loses at most the batches in flight (Ray Data
    itself would gather the small outputs into one write at the end of the dataset). Returns the keys."""

    schema = None  # of the cache rows (subclasses)

    def __init__(self, llm: dict, actors: int, run: str, cache: str):
        import pyarrow.fs as pafs

        self.chat = ValidatedChat(llm, llm["qps"] / actors)
        self.threads, self.run = max(1, llm["concurrency"] // actors), run
        self.fs, self.cache = pafs.FileSystem.from_uri(cache)

    def ask(self, row: dict) -> dict:
        raise NotImplementedError

    def __call__(self, batch):
        import uuid
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow as pa
        import pyarrow.parquet as pq

        with ThreadPoolExecutor(self.threads) as pool:
            table = pa.Table.from_pylist(list(pool.map(self.ask, batch.to_pylist())), schema=self.schema)
        pq.write_table(table, f"{self.cache}/part-{self.run}-{uuid.uuid4().hex[:8]}.parquet", filesystem=self.fs)
        return table.select(["key"])


def ask_pending(cfg, run_dir, cache: str, asker: type, rows: list[dict], llm, actors: int, cpus: float, batch_size: int,
                server_model: str | None = None, **asker_kwargs) -> str:
    """Every row through `asker` on a Ray Data actor pool against `llm.base_url` (None: the local server,
    started and stopped here); the results land in `cache`. Returns the run id the rows carry."""
    import dataclasses
    import uuid

    import ray

    from ecr_ray.ray_session import ensure_ray
    from ecr_ray.serving.llm import start_llm_server, stop_llm_server

    ensure_ray(cfg.ray)
    run_id, base_url = uuid.uuid4().hex, llm.base_url
    if base_url is None:
        base_url = start_llm_server(cfg, model=server_model, client_cpus=actors * cpus)
    try:
        settings = {**dataclasses.asdict(llm), "base_url": base_url}
        probe_endpoint(base_url, settings)
        run_dir.fs.create_dir(run_dir.path(cache), recursive=True)
        (ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
         .map_batches(asker, batch_format="pyarrow", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
                      fn_constructor_kwargs={"llm": settings, "actors": actors, "run": run_id, "cache": run_dir.location(cache), **asker_kwargs})
         .materialize())
    finally:
        if llm.base_url is None:
            stop_llm_server()
    return run_id


def check_answered(mine: list[dict], pending: int, llm, section: str, what: str) -> None:
    """Fail the stage when more than `llm.max_failed_fraction` of the `pending` rows it asked got no answer."""
    unanswered = [r for r in mine if r["status"] == ERROR]
    if pending and len(unanswered) / pending > llm.max_failed_fraction:
        raise RuntimeError(f"the {section} endpoint {llm.base_url or 'local server'} left {len(unanswered)} of {pending} {what} unanswered "
                           f"after {llm.max_retries} retries each (> {section}.max_failed_fraction); first error: {unanswered[0]['error']}")


def this_run(rows: list[dict], run_id: str) -> list[dict]:
    """The cache rows one run wrote, once per key (a batch retried after its actor died is written twice)."""
    return list({r["key"]: r for r in rows if r["run"] == run_id}.values())


def read_cache(run_dir, folder: str, schema) -> list[dict]:
    """Every readable cache part; a part cut short by a crash is skipped (its rows are asked again)."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if not run_dir.exists(folder):
        return []
    rows = []
    for info in run_dir.fs.get_file_info(pafs.FileSelector(run_dir.path(folder))):
        try:
            rows += pq.read_table(info.path, filesystem=run_dir.fs, schema=schema).to_pylist()
        except (pa.ArrowInvalid, OSError):
            continue
    return rows


def best_results(rows: list[dict], keep_errors: bool = False) -> dict[str, dict]:
    """key -> the final result (an answer, or a recorded failure); unanswered rows only with keep_errors."""
    best: dict[str, dict] = {}
    rank = {OK: 2, FAILED: 1, ERROR: 0}
    for row in rows:
        if (row["status"] != ERROR or keep_errors) and rank[row["status"]] >= rank[best.get(row["key"], {"status": ERROR})["status"]]:
            best[row["key"]] = row
    return best
