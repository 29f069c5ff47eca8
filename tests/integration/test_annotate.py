"""LLM annotation through the real `openai` client over HTTP: the local Ray Serve LLM, and a
server that injects faults on a fixed schedule."""
import dataclasses
import json
import pyarrow.dataset as pads
import pytest
import torch

from ecr_ray.config import ConfigError, load_config
from ecr_ray.artifacts import ANNOTATION_CACHE as CACHE
from ecr_ray.artifacts import ANNOTATIONS
from ecr_ray.emotion.annotate import RESULT_SCHEMA, annotate_sample, annotation_sample, build_messages, parse_labels
from ecr_ray.emotion.labels import LABELS
from ecr_ray.eval.judge import CRITERIA, LocalJudge, logprob_score
from ecr_ray.eval.scorer import ResponseScorer
from ecr_ray.llm.cache import read_cache
from ecr_ray.llm.client import InvalidAnswer
from ecr_ray.pipeline import run_stages

from tests.conftest import SERVE_PORT, TINY_DIALOGUES, free_port
from tests.integration.fault_server import FaultServer


def _cfg(*overrides):
    return load_config("tiny", [f"data.max_dialogues={TINY_DIALOGUES}", "emotion.source=llm", *overrides])


def _annotations(run_dir):
    return pads.dataset(run_dir.path(ANNOTATIONS), filesystem=run_dir.fs, format="parquet").to_table().to_pylist()


@pytest.mark.parametrize("answer, labels", [
    ('{"emotions": ["like"]}', ["like"]),
    ('```json\n{"emotions": ["Curious", "happy"]}\n```', ["curious", "happy"]),
    ('Sure! {"emotions": ["negative", "negative"]}', ["negative"]),
])
def test_parse_valid_answers(answer, labels):
    assert parse_labels(answer) == labels


@pytest.mark.parametrize("answer, reason", [
    ("like", "no JSON object"), ('{"emotions": ["like"', "no JSON object"), ("{'emotions': 1}", "not valid JSON"),
    ('{"labels": ["like"]}', 'no "emotions" list'), ('{"emotions": ["sleepy"]}', "unknown labels ['sleepy']"),
    ('{"emotions": ["like", "happy", "curious"]}', "3 labels given"), ('{"emotions": []}', "0 labels given"), (None, "no JSON object"),
])
def test_parse_invalid_answers(answer, reason):
    with pytest.raises(InvalidAnswer, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_labels(answer)


def test_prompt_shows_context_and_cuts_long_text():
    messages = build_messages(["Hi!", "What do you like?"], ["recommender", "seeker"], "x" * 5000, context_turns=1, max_chars=100)
    assert "seeker: What do you like?" in messages[1]["content"] and "Hi!" not in messages[1]["content"]
    assert "x" * 100 in messages[1]["content"] and "x" * 101 not in messages[1]["content"]
    assert all(label in messages[0]["content"] for label in LABELS)


def test_local_llm_server_and_annotation(fresh_run, ray_local, tmp_path):
    """The packaged SmolLM2 behind Ray Serve answers the official client; the stage uses it."""
    import openai

    from ecr_ray.llm.server import start_llm_server, stop_llm_server

    cfg = _cfg(f"llm_server.port={SERVE_PORT}", "emotion.sample_size=6", "emotion.llm.max_tokens=24")
    base_url = start_llm_server(cfg, cfg.emotion.llm.model)
    try:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
        ask = lambda **kw: client.chat.completions.create(  # noqa: E731
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}], **kw)
        full = ask(max_tokens=30, temperature=0)
        assert full.usage.prompt_tokens > 10 and 0 < full.usage.completion_tokens <= 30
        assert ask(max_tokens=30, temperature=0).choices[0].message.content == full.choices[0].message.content  # greedy
        cut = ask(max_tokens=30, temperature=0, stop=["4"]).choices[0].message.content
        assert "4" not in cut and full.choices[0].message.content.startswith(cut)
        assert ask(max_tokens=3, temperature=0).choices[0].finish_reason == "length"
        streamed = "".join(c.choices[0].delta.content or "" for c in ask(max_tokens=30, temperature=0, stream=True))
        assert streamed == full.choices[0].message.content
        # logprobs in the API's shape: greedy decoding takes the most likely token every time
        tokens = ask(max_tokens=6, temperature=0, logprobs=True, top_logprobs=3).choices[0].logprobs.content
        assert "".join(t.token for t in tokens) == ask(max_tokens=6, temperature=0).choices[0].message.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and bytes(t.bytes).decode() == t.token
                   for t in tokens)
        # structured outputs: a schema-valid answer from a 135M model, plain and streamed
        schema = {"type": "object", "properties": {"title": {"type": "string"}, "year": {"type": "integer"},
                                                   "mood": {"type": "string", "enum": ["happy", "sad"]}},
                  "required": ["title", "year", "mood"], "additionalProperties": False}
        structured = {"type": "json_schema", "json_schema": {"name": "movie", "schema": schema, "strict": True}}
        movie = lambda **kw: client.chat.completions.create(  # noqa: E731
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Name a movie you like."}], max_tokens=60,
            response_format=structured, **kw)
        plain = json.loads(movie(temperature=0).choices[0].message.content)
        assert set(plain) == {"title", "year", "mood"} and isinstance(plain["year"], int) and plain["mood"] in ("happy", "sad")
        assert json.loads("".join(c.choices[0].delta.content or "" for c in movie(temperature=0, stream=True))) == plain
        sampled = ask(max_tokens=120, temperature=0.7, seed=1, response_format={"type": "json_object"}).choices[0]
        assert sampled.finish_reason == "stop" and isinstance(json.loads(sampled.message.content), dict)
        with pytest.raises(openai.BadRequestError, match="response_format"):
            ask(response_format={"type": "xml"})
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="smollm2-135m-instruct", messages=[])

        # the generation judge against an endpoint reads the same digit distribution from top_logprobs
        judged = dict(context="User: I loved Inception, anything like it?", title="Interstellar (2014)",
                      response="You should watch Interstellar (2014): Christopher Nolan's moving space epic about love and time.")
        remote = ResponseScorer({**dataclasses.asdict(cfg.eval.scorer), "base_url": base_url}, 1, "r", str(tmp_path)).ask({"key": "k", **judged})
        assert remote["status"] == "ok" and remote["source"] == "logprobs" and remote["requests"] == len(CRITERIA)
        judge = LocalJudge("smollm2-135m-instruct")  # the same model in-process, seen through the same 20 most likely tokens
        prefix, suffixes = judge.parts(**judged)
        for c in CRITERIA:
            with torch.inference_mode():
                logprobs = torch.log_softmax(judge.model(input_ids=torch.tensor([prefix + suffixes[c]])).logits[0, -1].float(), -1)
            top = [{"token": judge.tokenizer.decode([t]), "logprob": v} for v, t in zip(*(x.tolist() for x in torch.topk(logprobs, 20)), strict=True)]
            assert abs(remote[c] - logprob_score(top)) < 0.05, (c, remote[c], logprob_score(top))

        cfg.emotion.llm.base_url = base_url
        summary = annotate_sample(cfg, fresh_run)
    finally:
        stop_llm_server()
    rows = _annotations(fresh_run)
    assert len(rows) == 6 == len({r["utterance_id"] for r in rows}) and summary["unanswered"] == 0
    assert summary["ok"] == 6 and summary["prompt_tokens"] > 0 and summary["requests"] == 6  # the schema is enforced: no invalid answer
    for r in rows:
        assert r["source"] == "llm:smollm2-135m-instruct"
        assert (r["status"] == "ok" and 1 <= len(r["labels"]) <= 2 and set(r["labels"]) <= set(LABELS)) or (
            r["status"] == "failed" and r["raw"] is not None and r["labels"] == [])


def test_faults_are_retried_validated_and_nothing_is_lost(fresh_run, ray_local):
    cfg = _cfg("emotion.sample_size=24", "emotion.annotate_pool.batch_size=8", "emotion.llm.timeout_s=1.0", "emotion.llm.backoff_s=0.01", "emotion.llm.max_retries=3",
               "emotion.llm.model=fault", "emotion.llm.api_key_env=ECR_TEST_KEY")
    sample = annotation_sample(cfg, fresh_run)
    prompt = lambda s: build_messages(s["context"], s["context_roles"], s["text"], cfg.emotion.context_turns, cfg.emotion.max_chars)[1]["content"]  # noqa: E731
    plan = {prompt(s): i % 6 for i, s in enumerate(sample)}
    assert len(plan) == 24
    with FaultServer(plan, slow_s=3.0) as server:
        cfg.emotion.llm.base_url = server.base_url
        summary = annotate_sample(cfg, fresh_run)
        rows = {r["utterance_id"]: r for r in _annotations(fresh_run)}
        assert len(rows) == 24 and set(rows) == {s["utterance_id"] for s in sample}  # none lost, none duplicated
        assert summary["requests"] == 4 * (2 + 3 + 2 + 2 + 2 + 1)  # per cycle of 6 plans
        assert summary["retries"] == 4 * (1 + 2 + 1) and summary["corrective_retries"] == 4 * 2
        assert (summary["ok"], summary["failed"], summary["unanswered"]) == (20, 4, 0)
        assert summary["prompt_tokens"] == 10 * summary["requests"] - 10 * 4 * 4  # transient faults carry no usage
        expected = {0: ["like"], 1: ["curious"], 2: ["happy", "grateful"], 3: ["negative"], 5: ["agreement"]}
        for s in sample:
            row, p = rows[s["utterance_id"]], plan[prompt(s)]
            if p == 4:  # never silently mislabelled: failed, with the raw answer and the reason
                assert row["status"] == "failed" and row["labels"] == [] and "sleepy" in row["raw"] and "unknown labels" in row["error"]
            else:
                assert row["status"] == "ok" and row["labels"] == expected[p]

        # a re-run asks nothing again: answers and recorded failures come from the cache
        before = len(server.log)
        again = annotate_sample(cfg, fresh_run)
        assert len(server.log) == before and again["reused_from_cache"] == 24 and again["requests"] == 0
        assert {r["utterance_id"]: r["labels"] for r in _annotations(fresh_run)} == {k: r["labels"] for k, r in rows.items()}

        # a cache part cut short by a crash is skipped, and only its utterances are asked again
        parts = sorted(fresh_run.fs.get_file_info(__import__("pyarrow").fs.FileSelector(fresh_run.path(CACHE))), key=lambda i: i.path)
        lost = __import__("pyarrow").parquet.read_table(parts[0].path).num_rows
        with open(parts[0].path, "r+b") as f:
            f.truncate(100)
        resumed = annotate_sample(cfg, fresh_run)
        assert resumed["reused_from_cache"] == 24 - lost and 0 < lost < 24
        assert len({r["utterance_id"] for r in _annotations(fresh_run)}) == 24


def test_a_killed_annotation_run_resumes_from_its_cached_batches(fresh_run, ray_local, data_root):
    """The whole stage (driver, its Ray, its actors) SIGKILLed mid-way: the batches answered before the kill
    are in the cache; the next run asks only the rest, and the annotations hold every utterance once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import pyarrow.fs as pafs

    overrides = ["emotion.sample_size=48", "emotion.annotate_pool.batch_size=4", "emotion.llm.model=fault", "emotion.llm.api_key_env=ECR_TEST_KEY"]
    cfg = _cfg(*overrides)
    sample = annotation_sample(cfg, fresh_run)
    prompt = lambda s: build_messages(s["context"], s["context_roles"], s["text"], cfg.emotion.context_turns, cfg.emotion.max_chars)[1]["content"]  # noqa: E731
    with FaultServer({prompt(s): 5 for s in sample}, slow_s=0, delay_s=0.4) as server:  # every answer valid, 0.4 s late
        cfg.emotion.llm.base_url = server.base_url
        command = [str(Path(sys.executable).parent / "ecr-ray"), "run", "--config", "tiny", "--run-dir", fresh_run.root, "--stages", "emotion-annotate",
                   *[a for o in [f"data.max_dialogues={TINY_DIALOGUES}", "emotion.source=llm", f"emotion.llm.base_url={server.base_url}", *overrides]
                     for a in ("--set", o)]]
        log = open(Path(fresh_run.root).parent / "run.log", "w+")  # noqa: SIM115
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "ECR_DATA_DIR": str(data_root), "ECR_TEST_KEY": "test"})
        parts = lambda: fresh_run.fs.get_file_info(pafs.FileSelector(fresh_run.path(CACHE), allow_not_found=True))  # noqa: E731
        deadline = time.monotonic() + 300
        while len(parts()) < 3:  # three batches answered and written
            assert proc.poll() is None and time.monotonic() < deadline, open(log.name).read()[-4000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
        time.sleep(1.0)  # the requests in flight at the kill are answered into the void
        asked_before = len(server.log)
        cached = {r["utterance_id"] for r in read_cache(fresh_run, CACHE, RESULT_SCHEMA)}
        assert 12 <= len(cached) < 48 and not fresh_run.exists(ANNOTATIONS)  # killed mid-way, before the stage wrote its output

        resumed = annotate_sample(cfg, fresh_run)
        assert resumed["reused_from_cache"] == len(cached) and resumed["requests"] == 48 - len(cached) == len(server.log) - asked_before
        rows = _annotations(fresh_run)
        assert sorted(r["utterance_id"] for r in rows) == sorted(s["utterance_id"] for s in sample)  # none lost, none twice
        assert all(r["status"] == "ok" and r["labels"] == ["agreement"] for r in rows)


def test_endpoint_down_names_the_url(fresh_run, ray_local, monkeypatch):
    monkeypatch.setenv("ECR_TEST_KEY", "secret")
    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = _cfg("emotion.sample_size=4", f"emotion.llm.base_url={url}", "emotion.llm.max_retries=1", "emotion.llm.backoff_s=0.01",
               "emotion.llm.api_key_env=ECR_TEST_KEY")
    with pytest.raises(RuntimeError, match=f"endpoint {url} is not reachable after 1 retries"):
        annotate_sample(cfg, fresh_run)
    assert not fresh_run.exists(ANNOTATIONS)


def test_missing_api_key_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("ECR_TEST_MISSING_KEY", raising=False)
    cfg = _cfg("emotion.llm.base_url=https://llm.example/v1", "emotion.llm.api_key_env=ECR_TEST_MISSING_KEY")
    from ecr_ray.rundir import RunDir

    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"needs an API key in \$ECR_TEST_MISSING_KEY"):
        run_stages(cfg, run_dir)
    assert not run_dir.exists("prepared")
