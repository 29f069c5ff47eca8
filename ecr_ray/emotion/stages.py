"""The emotion stages: teacher -> annotation sample -> classifier -> inference on every split.

emotion-teacher      trains the GoEmotions teacher (only when emotion.source=teacher)
emotion-annotate     labels a sample of train-split seeker utterances (LLM endpoint or teacher);
                     LLM answers are cached in cache/annotations/ by (model, prompt version,
                     utterance), so a re-run or a crash resumes without asking again
emotion-classifier   trains the classifier on the annotations (Ray Train), metrics on a held-out part
emotion-infer-<g>    nine probabilities and top labels for every seeker utterance of group g
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from functools import partial

import pyarrow as pa

from ecr_ray.config import Config, ConfigError
from ecr_ray.data.prepare import POOL, prepared
from ecr_ray.emotion.annotate import PROMPT_VERSION, RESULT_SCHEMA, LLMAnnotator, cache_key
from ecr_ray.emotion.labels import LABELS, read_goemotions, top_labels
from ecr_ray.llm_client import ERROR, FAILED, OK, ask_pending, best_results, check_answered, read_cache, require_api_key, this_run
from ecr_ray.pipeline import Stage, file_digest
from ecr_ray.rundir import RunDir

TEACHER, ANNOTATE, CLASSIFIER = "emotion-teacher", "emotion-annotate", "emotion-classifier"
ANNOTATIONS, CACHE = "emotion/annotations", "cache/annotations"
SOURCES = ("teacher", "llm")


def emotion_stages(cfg: Config) -> list[Stage]:
    e = cfg.emotion
    if e.source not in SOURCES:
        raise ConfigError(f"emotion.source should be one of {SOURCES}, got {e.source!r}")
    if e.source == "llm":
        check_api_key(cfg)
    stages = []
    if e.source == "teacher":
        stages.append(Stage(TEACHER, run=train_teacher, outputs=("models/teacher", "reports/teacher.json"),
                            key=lambda c: {"teacher": dataclasses.asdict(c.emotion.teacher), **_goemotions_key(c)}))
    stages.append(Stage(
        ANNOTATE, run=annotate_sample, outputs=(ANNOTATIONS,),
        needs=(f"prepare-{POOL}",) + ((TEACHER,) if e.source == "teacher" else ()),
        key=lambda c: {k: getattr(c.emotion, k) for k in ("source", "sample_size", "sample_seed", "max_chars", "context_turns", "second_label_threshold")}
        | ({"model": c.emotion.llm.model, "base_url": c.emotion.llm.base_url, "prompt": PROMPT_VERSION} if c.emotion.source == "llm" else {}),
    ))
    stages.append(Stage(
        CLASSIFIER, run=train_classifier, outputs=("models/emotion_classifier", "reports/emotion_classifier.json"), needs=(ANNOTATE,),
        key=lambda c: {"classifier": dataclasses.asdict(c.emotion.classifier), "goemotions": c.emotion.include_goemotions}
        | (_goemotions_key(c) if c.emotion.include_goemotions else {}),
    ))
    for group in [POOL, *sorted(cfg.data.split_files)]:
        stages.append(Stage(
            f"emotion-infer-{group}", run=partial(infer_group, group=group), outputs=(f"emotion/utterances/{group}",),
            needs=(CLASSIFIER, f"prepare-{group}"), key=lambda c: {"second_label_threshold": c.emotion.second_label_threshold},
        ))
    return stages


def check_api_key(cfg: Config) -> None:
    require_api_key(cfg.emotion.llm, "emotion.source=llm", "emotion.llm")


def _goemotions_key(cfg: Config) -> dict:
    folder = cfg.data.path(cfg.emotion.goemotions_dir)
    return {"goemotions": {f: file_digest(folder / f) for f in ("labels.txt", "train.tsv", "dev.tsv", "test.tsv")},
            "eval_examples": cfg.emotion.eval_examples}


def _shuffled(rows: list[dict], seed: int, limit: int | None) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit is not None else rows


def _held_out(utterance_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(f"holdout:{utterance_id}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def evaluate_model(run_dir: RunDir, model: str, rows: list[dict], cfg: Config) -> dict:
    """Metrics of a saved classifier on rows {text, labels}, through the inference path."""
    import numpy as np

    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.emotion.labels import multi_hot
    from ecr_ray.emotion.metrics import emotion_metrics

    predictor = EmotionPredictor(run_dir.local_copy(f"models/{model}"), cfg.emotion.second_label_threshold)
    probs = predictor.predict([r["text"] for r in rows])
    return emotion_metrics(probs, np.array([multi_hot(r["labels"]) for r in rows]))


def train_teacher(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.emotion.train import fit_classifier

    e, folder = cfg.emotion, cfg.data.path(cfg.emotion.goemotions_dir)
    train = _shuffled(read_goemotions(folder, "train"), e.teacher.seed, e.teacher.max_examples)
    dev = _shuffled(read_goemotions(folder, "dev"), e.teacher.seed, e.eval_examples)
    test = _shuffled(read_goemotions(folder, "test"), e.teacher.seed, e.eval_examples)
    fit_classifier(cfg, "teacher", e.teacher, train, dev, run_dir)
    report = {"train_examples": len(train), "goemotions_test": evaluate_model(run_dir, "teacher", test, cfg)}
    run_dir.write_json("reports/teacher.json", report)
    t = report["goemotions_test"]
    return {"train_examples": len(train), "test_examples": t["examples"], "test_recall@1": t["recall@1"],
            "test_recall@2": t["recall@2"], "test_macro_f1": t["macro_f1"]}


def annotation_sample(cfg: Config, run_dir: RunDir) -> list[dict]:
    """A seeded sample of train-split seeker utterances, each with its cache key."""
    e = cfg.emotion
    rows = [r for r in run_dir.read_table(prepared(POOL, "user_utterances")).to_pylist() if r["split"] == "train"]
    rows.sort(key=lambda r: hashlib.sha256(f"{e.sample_seed}:{r['utterance_id']}".encode()).hexdigest())
    model = e.llm.model if e.source == "llm" else "teacher"
    return [{**r, "key": cache_key(model, r["context"], r["text"])} for r in rows[: e.sample_size]]


def annotate_sample(cfg: Config, run_dir: RunDir) -> dict:
    sample = annotation_sample(cfg, run_dir)
    results, summary = (_annotate_llm if cfg.emotion.source == "llm" else _annotate_teacher)(cfg, run_dir, sample)
    missing = [s["utterance_id"] for s in sample if s["key"] not in results]
    if missing:  # every sampled utterance ends answered, failed or unanswered: never silently absent
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

    predictor = EmotionPredictor(run_dir.local_copy("models/teacher"), cfg.emotion.second_label_threshold)
    probs = predictor.predict([s["text"] for s in sample])
    results = {s["key"]: {"labels": top_labels(p, cfg.emotion.second_label_threshold), "status": OK, "source": "teacher",
                          "raw": None, "error": None} for s, p in zip(sample, probs, strict=True)}
    return results, {"source": "teacher"}


def _annotate_llm(cfg: Config, run_dir: RunDir, sample: list[dict]):
    e = cfg.emotion
    cached = best_results(read_cache(run_dir, CACHE, RESULT_SCHEMA))
    pending = [s for s in sample if s["key"] not in cached]
    run_id = None
    if pending:
        columns = ["key", "utterance_id", "text", "context", "context_roles"]
        run_id = ask_pending(cfg, run_dir, CACHE, LLMAnnotator, [{c: s[c] for c in columns} for s in pending], e.llm, e.annotate_actors,
                             e.actor_cpus, e.annotate_batch_size, context_turns=e.context_turns, max_chars=e.max_chars)
    rows = read_cache(run_dir, CACHE, RESULT_SCHEMA)
    mine = this_run(rows, run_id)
    check_answered(mine, len(pending), e.llm, "emotion.llm", "utterances")
    results = best_results(rows, keep_errors=True)
    totals = {k: sum(r[k] for r in mine) for k in ("requests", "retries", "prompt_tokens", "completion_tokens")}
    return results, {"source": f"llm:{e.llm.model}", "reused_from_cache": len(sample) - len(pending),
                     "corrective_retries": sum(r["corrected"] for r in mine), **totals}


def train_classifier(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.emotion.train import fit_classifier

    e = cfg.emotion
    rows = [r for r in run_dir.read_table(ANNOTATIONS).to_pylist() if r["status"] == OK]
    held = [r for r in rows if _held_out(r["utterance_id"], e.classifier.holdout_fraction)]
    train = _shuffled([r for r in rows if not _held_out(r["utterance_id"], e.classifier.holdout_fraction)], e.classifier.seed, e.classifier.max_examples)
    if e.include_goemotions:
        train += _shuffled(read_goemotions(cfg.data.path(e.goemotions_dir), "train"), e.classifier.seed, e.classifier.max_examples)
    if not train or not held:
        raise RuntimeError(f"{len(rows)} usable annotations: too few to train and hold out (raise emotion.sample_size)")
    fit_classifier(cfg, "emotion_classifier", e.classifier, train, held, run_dir)
    report = {"train_examples": len(train), "held_out": evaluate_model(run_dir, "emotion_classifier", held, cfg)}
    run_dir.write_json("reports/emotion_classifier.json", report)
    h = report["held_out"]
    return {"train_examples": len(train), "held_out": h["examples"], "recall@1": h["recall@1"], "recall@2": h["recall@2"], "macro_f1": h["macro_f1"]}


def infer_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    import ray

    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.ray_session import ensure_ray

    ensure_ray(cfg.ray)
    e, out = cfg.emotion, f"emotion/utterances/{group}"
    (ray.data.read_parquet(run_dir.location(prepared(group, "user_utterances")))
     .select_columns(["split", "conversation_id", "turn", "utterance_id", "text"])
     .map_batches(EmotionPredictor, batch_format="pyarrow", batch_size=e.infer_batch_size,
                  fn_constructor_kwargs={"model_dir": run_dir.location("models/emotion_classifier"),
                                         "second_threshold": e.second_label_threshold, "batch_size": e.infer_batch_size},
                  compute=ray.data.ActorPoolStrategy(size=e.infer_actors), num_cpus=e.actor_cpus, num_gpus=e.infer_actor_gpus)
     .drop_columns(["text"])
     .write_parquet(run_dir.location(out)))
    labels = run_dir.read_table(out, columns=["labels"]).column("labels").to_pylist()
    counts, top = Counter(x for row in labels for x in row), Counter(row[0] for row in labels)
    return {"utterances": len(labels), "label_share": {k: round(counts[k] / max(len(labels), 1), 4) for k in LABELS},
            "top_label_share": {k: round(top[k] / max(len(labels), 1), 4) for k in LABELS}}
