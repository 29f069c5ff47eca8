"""Evaluating responses: text metrics (Dist, BLEU, item mentions, hallucinations against the prompt's
knowledge, emotion intensity) and the LLM judge's five 0-9 scores on a seeded sample (cached), for one
variant (gen-eval) or several (gen-compare), beside the judge's validity on the same turns."""
from __future__ import annotations

import hashlib

import numpy as np

from ecr_ray.artifacts import CLASSIFIER, SCORE_CACHE, model, report, responses, split_name
from ecr_ray.config import Config
from ecr_ray.eval.intervals import dialogue_intervals
from ecr_ray.eval.judge import CRITERIA
from ecr_ray.eval.judge_validity import (in_use, judge_validity, pairwise_validity, readings, validity_asked, validity_table,
                                         win_share)
from ecr_ray.llm.cache import ask_pending, best_results, read_cache, this_run
from ecr_ray.llm.client import ERROR, FAILED, OK, check_answered
from ecr_ray.rundir import RunDir

INTERVAL_KEYS = ("bleu-2", "item_mention_rate", "hallucination_rate", "emotion_intensity")  # not Dist-n: a resample repeats responses, and repeats lower it
TEXT_KEYS = ["dist-1", "dist-2", "bleu-1", "bleu-2", "bleu-4", "item_mention_rate", "hallucination_rate", "emotion_intensity"]


def text_report(cfg: Config, run_dir: RunDir, rows: list[dict]) -> dict:
    """Text metrics of one variant's responses (hallucinations against its own prompt's knowledge)."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.eval.text_metrics import text_metrics
    from ecr_ray.gen.retrieval import Grounding

    grounding = Grounding(load_kg(cfg.data.path(cfg.data.kg_dir)))
    for r in rows:
        r["named"], r["unsupported"] = grounding.named(r["response"], r)
        r["wrong_titles"] = grounding.wrong_titles(r["unsupported"])
    predictor = EmotionPredictor(run_dir.local_copy(model(CLASSIFIER)), cfg.emotion.second_label_threshold)
    probs = np.asarray(predictor.predict([r["response"] for r in rows]))
    metrics = lambda pick: {k: v for k, v in text_metrics([rows[i] for i in pick], probs[pick]).items() if k in INTERVAL_KEYS}  # noqa: E731
    return {**text_metrics(rows, probs), "intervals": dialogue_intervals(metrics, [r["conversation_id"] for r in rows], cfg.eval.intervals)}


def score_sample(cfg: Config, rows: list[dict]) -> list[dict]:
    """The seeded sample of responses the LLM judge rates (the same turns for every variant)."""
    e = cfg.eval
    order = sorted(rows, key=lambda r: hashlib.sha256(f"{e.score_seed}:{r['conversation_id']}:{r['turn']}".encode()).hexdigest())
    return order[: e.score_sample]


def judge_rows(cfg: Config, run_dir: RunDir, rows: list[dict]) -> list[dict]:
    """The judge's result (status, source, the five scores) for each row {context, title, response},
    asked only for what the cache does not hold yet."""
    from ecr_ray.eval.scorer import SCORE_SCHEMA, ResponseScorer, score_key

    s = cfg.eval.scorer
    judge = f"{s.model}@{s.base_url or 'local'}"
    keys = [score_key(judge, r["context"], r["title"], r["response"]) for r in rows]
    cached = best_results(read_cache(run_dir, SCORE_CACHE, SCORE_SCHEMA))
    pending = sorted({k: {"key": k, "context": r["context"], "title": r["title"], "response": r["response"]}
                      for k, r in zip(keys, rows, strict=True) if k not in cached}.values(),
                     key=lambda r: (r["context"], r["title"]))  # a turn's rows together: the judge reuses their prefill
    if pending:
        pool = cfg.eval.score_pool
        run_id = ask_pending(cfg, run_dir, SCORE_CACHE, ResponseScorer, pending, s, pool, local_server=False,
                             threads=pool.threads, allow_download=cfg.models.allow_download)
        check_answered(this_run(read_cache(run_dir, SCORE_CACHE, SCORE_SCHEMA), run_id), len(pending), s, "eval.scorer", "responses")
    results = best_results(read_cache(run_dir, SCORE_CACHE, SCORE_SCHEMA), keep_errors=True)
    return [results[k] for k in keys]


def llm_scores(cfg: Config, samples: dict[str, list[dict]], results: list[dict]) -> dict[str, dict]:
    """Mean 0-9 scores per variant, each with its interval over dialogues, from the judge's `results` for
    the variants' scored `samples` (in their order)."""
    out, at = {}, 0
    for variant, sample in samples.items():
        got, at = results[at: at + len(sample)], at + len(sample)
        ok = [i for i, r in enumerate(got) if r["status"] == OK]
        dialogues = [sample[i]["conversation_id"] for i in ok]
        out[variant] = {"scored": len(sample), "ok": len(ok), "failed": sum(r["status"] == FAILED for r in got),
                        "unanswered": sum(r["status"] == ERROR for r in got),
                        "sources": {src: sum(r["source"] == src for r in got) for src in {r["source"] for r in got}}}
        values = np.array([[got[i][c] for c in CRITERIA] for i in ok], dtype=float).reshape(len(ok), len(CRITERIA))
        mean = lambda pick, v=values: {f"llm_{c}": float(v[pick, j].mean()) for j, c in enumerate(CRITERIA)} if len(pick) else {}  # noqa: E731
        out[variant].update({f"llm_{c}": None for c in CRITERIA}, **mean(np.arange(len(ok))))
        out[variant]["intervals"] = dialogue_intervals(mean, dialogues, cfg.eval.intervals)
    return out


def judged(cfg: Config, run_dir: RunDir, by_variant: dict[str, list[dict]], ecr: list[dict]) -> tuple[dict, dict]:
    """`llm_scores` of the variants and the judge's validity on ECR's turns (`judge_validity.in_use`), from one pass of
    the judge over all their rows (so a turn's rows, from every variant and kind, share their conversation's prefill);
    criteria read pairwise are then asked of an in-process judge here, each reply against the turn's logged one."""
    samples, sample = {v: score_sample(cfg, rows) for v, rows in by_variant.items()}, score_sample(cfg, ecr)
    scored = [r for rows in samples.values() for r in rows]
    asked = validity_asked(cfg, run_dir, sample)
    results = judge_rows(cfg, run_dir, scored + [x for rows in asked.values() for x in rows if x is not None])
    scores, by_score = llm_scores(cfg, samples, results[:len(scored)]), judge_validity(cfg, sample, asked, results[len(scored):])
    pairwise = [c for c, how in readings(cfg).items() if how == "pairwise"]
    if not pairwise:
        return scores, in_use(cfg, by_score, None)
    from ecr_ray.eval.judge import LocalJudge

    judge = LocalJudge(cfg.eval.scorer.model, cfg.models.allow_download, threads=max(1, round(cfg.eval.score_pool.cpus)))
    for variant, rows in samples.items():
        scores[variant] |= preferred_over_reference(cfg, rows, judge, pairwise)
        scores[variant]["intervals"] |= scores[variant].pop("pairwise_intervals")
    return scores, in_use(cfg, by_score, pairwise_validity(cfg, sample, asked, judge, pairwise))


def preferred_over_reference(cfg: Config, rows: list[dict], judge, criteria: list[str]) -> dict:
    """Per criterion, `llm_pairwise_<c>`: the share of `rows` whose reply the judge prefers to the turn's logged reply
    (ties half), with its interval over dialogues."""
    from tqdm import tqdm

    prefs = [judge.prefer(r["context"], r["title"], r["response"], r["reference"], criteria)
             for r in tqdm(rows, desc="judge, pairwise against the logged replies", mininterval=30)]
    p = {c: np.array([x[c] for x in prefs], dtype=float) for c in criteria}
    shares = lambda pick: {f"llm_pairwise_{c}": win_share(p[c], pick)["share"] for c in criteria}  # noqa: E731
    return {**shares(np.arange(len(rows))),
            "pairwise_intervals": dialogue_intervals(shares, [r["conversation_id"] for r in rows], cfg.eval.intervals)}


def merged(text: dict, scores: dict) -> dict:
    """A variant's text metrics and LLM scores in one record, their intervals together."""
    return {**text, **scores, "intervals": {**text.get("intervals", {}), **scores.get("intervals", {})}}


def before_filter(rows: list[dict]) -> list[dict]:
    """The responses as decoded, before the opt-in trim filter: what the figures are of."""
    return [{**r, "response": r.get("untrimmed") or r["response"]} for r in rows]


def trim_cost(after: dict, rows: list[dict], before: list[dict]) -> dict:
    """The opt-in filter (`gen.decoding.trim_unsupported`) on its own: the metrics after it and what it cost per
    reply (words, and knowledge entities the prompt supports that went with them). `text_report` annotated both."""
    from ecr_ray.eval.text_metrics import words

    supported = lambda r: len(r["named"]) - len(r["unsupported"])  # noqa: E731
    return {**{k: after[k] for k in ("hallucination_rate", "responses_with_hallucination", "responses_with_wrong_title",
                                     "item_mention_rate", "mean_words")},
            "responses_trimmed": sum(a["response"] != b["response"] for a, b in zip(rows, before, strict=True)),
            "words_removed_per_reply": float(np.mean([len(words(b["response"])) - len(words(a["response"])) for a, b in zip(rows, before)])),
            "supported_entities_removed_per_reply": float(np.mean([supported(b) - supported(a) for a, b in zip(rows, before)]))}


def evaluate_rows(cfg: Config, run_dir: RunDir, rows: list[dict], out: str, extra: dict | None = None) -> dict:
    """Text metrics, LLM scores and the judge's validity of responses (and `extra` figures) -> the report at `out`; its summary."""
    before = before_filter(rows)
    scores, validity = judged(cfg, run_dir, {"ecr": before}, before)
    result = merged(text_report(cfg, run_dir, before), scores["ecr"])
    if any(a["response"] != b["response"] for a, b in zip(rows, before, strict=True)):
        result["trim_filter"] = trim_cost(text_report(cfg, run_dir, rows), rows, before)
    result.update(extra or {}, scorer={"model": cfg.eval.scorer.model, "base_url": cfg.eval.scorer.base_url}, judge_validity=validity)
    print(validity_table(result["judge_validity"], cfg.eval.scorer), flush=True)
    run_dir.write_json(out, result)
    unread = {f"llm_{c}" for c, how in validity["readings"].items() if how != "score"}  # the README shows each criterion's reading in use
    return {**{k: v for k, v in result.items() if not isinstance(v, dict) and k not in unread}, "intervals": result.get("intervals", {})}


def evaluate_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The gen-eval-<group> stage: ECR's batch responses -> reports/gen-eval-<split>.json."""
    return evaluate_rows(cfg, run_dir, run_dir.read_table(responses("ecr", group)).to_pylist(), report(f"gen-eval-{split_name(group)}"))
