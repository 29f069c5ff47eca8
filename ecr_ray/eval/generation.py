"""Evaluating responses: text metrics (Dist, BLEU, item mentions, hallucinations against the prompt's
knowledge, emotion intensity) and the LLM scorer's five 0-9 scores on a seeded sample (cached), for one
variant (gen-eval) or several (gen-compare)."""
from __future__ import annotations

import hashlib

import numpy as np

from ecr_ray.artifacts import CLASSIFIER, SCORE_CACHE, model, report, responses, split_name
from ecr_ray.config import Config
from ecr_ray.llm.cache import ask_pending, best_results, read_cache, this_run
from ecr_ray.llm.client import ERROR, FAILED, OK, check_answered
from ecr_ray.rundir import RunDir

TEXT_KEYS = ["dist-1", "dist-2", "bleu-1", "bleu-2", "bleu-4", "item_mention_rate", "hallucination_rate", "emotion_intensity"]


def text_report(cfg: Config, run_dir: RunDir, rows: list[dict]) -> dict:
    """Text metrics of one variant's responses (hallucinations against its own prompt's knowledge)."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.data.linking import TextEntityLinker
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.eval.text_metrics import text_metrics
    from ecr_ray.gen.retrieval import Retriever

    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    linker, hops = TextEntityLinker(kg), Retriever(kg, [])
    for r in rows:
        shown = set(r["entity_ids"]) | {e for t in r["triple_ids"] for e in t} if r["retrieval"] else set()
        r["named"], r["allowed"] = linker.link(r["response"]), shown | hops.one_hop(r["item"]) | {r["item"]}
    predictor = EmotionPredictor(run_dir.local_copy(model(CLASSIFIER)), cfg.emotion.second_label_threshold)
    return text_metrics(rows, predictor.predict([r["response"] for r in rows]))


def score_sample(cfg: Config, rows: list[dict]) -> list[dict]:
    """The seeded sample of responses the LLM scorer rates (the same turns for every variant)."""
    e = cfg.eval
    order = sorted(rows, key=lambda r: hashlib.sha256(f"{e.score_seed}:{r['conversation_id']}:{r['turn']}".encode()).hexdigest())
    return order[: e.score_sample]


def llm_scores(cfg: Config, run_dir: RunDir, by_variant: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean 0-9 scores per variant from the configured endpoint (the local server when none), cached."""
    from ecr_ray.eval.scorer import CRITERIA, ResponseScorer, SCORE_SCHEMA, score_key

    s = cfg.eval.scorer
    samples = {v: [{"key": score_key(s.model, r["context"], r["title"], r["response"]), "context": r["context"], "title": r["title"],
                    "response": r["response"]} for r in score_sample(cfg, rows)] for v, rows in by_variant.items()}
    cached = best_results(read_cache(run_dir, SCORE_CACHE, SCORE_SCHEMA))
    pending = list({x["key"]: x for rows in samples.values() for x in rows if x["key"] not in cached}.values())
    run_id = ask_pending(cfg, run_dir, SCORE_CACHE, ResponseScorer, pending, s, cfg.eval.score_pool) if pending else None
    rows = read_cache(run_dir, SCORE_CACHE, SCORE_SCHEMA)
    mine = this_run(rows, run_id)
    check_answered(mine, len(pending), s, "eval.scorer", "responses")
    results = best_results(rows, keep_errors=True)
    out = {}
    for variant, sample in samples.items():
        got = [results[x["key"]] for x in sample]
        ok = [r for r in got if r["status"] == OK]
        out[variant] = {"scored": len(sample), "ok": len(ok), "failed": sum(r["status"] == FAILED for r in got),
                        "unanswered": sum(r["status"] == ERROR for r in got), "requests_this_run": sum(r["requests"] for r in mine),
                        **{f"llm_{c}": float(np.mean([r[c] for r in ok])) if ok else None for c in CRITERIA}}
    return out


def evaluate_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The gen-eval-<group> stage: ECR's responses -> reports/gen-eval-<split>.json."""
    rows = run_dir.read_table(responses("ecr", group)).to_pylist()
    result = {**text_report(cfg, run_dir, rows), "scorer": {"model": cfg.eval.scorer.model, "base_url": cfg.eval.scorer.base_url}}
    result.update(llm_scores(cfg, run_dir, {"ecr": rows})["ecr"])
    run_dir.write_json(report(f"gen-eval-{split_name(group)}"), result)
    return {k: v for k, v in result.items() if not isinstance(v, dict)}
