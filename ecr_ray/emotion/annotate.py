"""Annotating the sample of user utterances: by an LLM through any OpenAI-compatible endpoint (the
official `openai` client), or by the GoEmotions teacher.

`LLMAnnotator` is the Ray Data UDF: it sends each utterance with its context, validates the answer
(JSON, known labels, one or two of them), asks once more with the reason when it is invalid, and
records a still-invalid answer as failed with the raw text. Transient errors (429, 5xx, timeouts,
connection errors) are retried with exponential backoff; requests are bounded in concurrency and
rate. Every result carries its cache key: (model, prompt version, utterance hash).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter

import pyarrow as pa

from ecr_ray.artifacts import ANNOTATION_CACHE, ANNOTATIONS, POOL, TEACHER, model, read_rows
from ecr_ray.config import Config
from ecr_ray.emotion.labels import LABELS, MAX_LABELS, top_labels
from ecr_ray.llm.cache import CachedAsker, ask_pending, best_results, read_cache, this_run
from ecr_ray.llm.client import ERROR, FAILED, OK, InvalidAnswer, ValidatedChat, check_answered, json_answer
from ecr_ray.rundir import RunDir

PROMPT_VERSION = "v2"  # v2: the answer's JSON schema is asked for (ANSWER_FORMAT)
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


ANSWER_FORMAT = {"type": "json_schema", "json_schema": {"name": "emotions", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["emotions"],
    "properties": {"emotions": {"type": "array", "items": {"type": "string", "enum": list(LABELS)}, "minItems": 1, "maxItems": MAX_LABELS}}}}}


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
        result, labels = self.chat.ask(messages, parse_labels, out, ANSWER_FORMAT)
        return {**result, "labels": labels or []}


def annotation_sample(cfg: Config, run_dir: RunDir) -> list[dict]:
    """A seeded sample of train-split seeker utterances, each with its cache key."""
    e = cfg.emotion
    rows = [r for r in read_rows(run_dir, POOL, "user_utterances") if r["split"] == "train"]
    rows.sort(key=lambda r: hashlib.sha256(f"{e.sample_seed}:{r['utterance_id']}".encode()).hexdigest())
    name = e.llm.model if e.source == "llm" else TEACHER
    return [{**r, "key": cache_key(name, r["context"], r["text"])} for r in rows[: e.sample_size]]


def annotate_sample(cfg: Config, run_dir: RunDir) -> dict:
    """The emotion-annotate stage: every sampled utterance ends answered, failed or unanswered, never silently absent."""
    sample = annotation_sample(cfg, run_dir)
    results, summary = (_annotate_llm if cfg.emotion.source == "llm" else _annotate_teacher)(cfg, run_dir, sample)
    missing = [s["utterance_id"] for s in sample if s["key"] not in results]
    if missing:
        raise RuntimeError(f"{len(missing)} sampled utterances have no annotation result, e.g. {missing[:3]}")
    rows = [{"utterance_id": s["utterance_id"], "conversation_id": s["conversation_id"], "turn": s["turn"], "text": s["text"],
             **{k: results[s["key"]][k] for k in ("labels", "status", "source", "raw", "error")}} for s in sample]
    run_dir.write_parquet(f"{ANNOTATIONS}/part-0.parquet", pa.Table.from_pylist(rows))
    counts = Counter(label for r in rows if r["status"] == OK for label in r["labels"])
    answered = sum(r["status"] == OK for r in rows)
    return {"sample": len(rows), "ok": answered, "failed": sum(r["status"] == FAILED for r in rows),
            "unanswered": sum(r["status"] == ERROR for r in rows), **summary,
            "label_share": {label: round(counts[label] / max(answered, 1), 4) for label in LABELS}}


def _annotate_teacher(cfg: Config, run_dir: RunDir, sample: list[dict]):
    from ecr_ray.emotion.infer import EmotionPredictor

    predictor = EmotionPredictor(run_dir.local_copy(model(TEACHER)), cfg.emotion.second_label_threshold)
    probs = predictor.predict([s["text"] for s in sample])
    results = {s["key"]: {"labels": top_labels(p, cfg.emotion.second_label_threshold), "status": OK, "source": TEACHER,
                          "raw": None, "error": None} for s, p in zip(sample, probs, strict=True)}
    return results, {"source": TEACHER}


def _annotate_llm(cfg: Config, run_dir: RunDir, sample: list[dict]):
    e = cfg.emotion
    cached = best_results(read_cache(run_dir, ANNOTATION_CACHE, RESULT_SCHEMA))
    pending = [s for s in sample if s["key"] not in cached]
    run_id = None
    if pending:
        columns = ["key", "utterance_id", "text", "context", "context_roles"]
        run_id = ask_pending(cfg, run_dir, ANNOTATION_CACHE, LLMAnnotator, [{c: s[c] for c in columns} for s in pending], e.llm,
                             e.annotate_pool, context_turns=e.context_turns, max_chars=e.max_chars)
    rows = read_cache(run_dir, ANNOTATION_CACHE, RESULT_SCHEMA)
    mine = this_run(rows, run_id)
    check_answered(mine, len(pending), e.llm, "emotion.llm", "utterances")
    results = best_results(rows, keep_errors=True)
    totals = {k: sum(r[k] for r in mine) for k in ("requests", "retries", "prompt_tokens", "completion_tokens")}
    return results, {"source": f"llm:{e.llm.model}", "reused_from_cache": len(sample) - len(pending),
                     "corrective_retries": sum(r["corrected"] for r in mine), **totals}
