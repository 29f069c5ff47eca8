"""Scoring the recommender: metrics over example batches (the training loop's dev pass too), reported
metrics with 95% intervals over dialogues, the top item per turn (what generation answers about), the
rec-eval stage, and the training-free baselines in the same harness."""
from __future__ import annotations

import numpy as np

from ecr_ray.artifacts import POOL, RECOMMENDER, model, report, split_name
from ecr_ray.config import REC_METRICS, Config, EvalConfig, IntervalConfig, RecConfig
from ecr_ray.rundir import RunDir


def evaluate(recommender, batches, auc_batch_size: int, entity_embeds=None) -> dict:
    """Metrics of a model over numpy batches of examples (in order), through the scoring path."""
    from ecr_ray.rec.metrics import rec_metrics

    return rec_metrics(*_ranked(recommender, batches, entity_embeds), auc_batch_size)


def _ranked(recommender, batches, entity_embeds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, probability, feedback) of every example's target."""
    import torch

    from ecr_ray.rec.metrics import target_ranks

    recommender.eval()
    ranks, probs, feedback = [], [], []
    with torch.no_grad():
        embeds = recommender.kg() if entity_embeds is None else entity_embeds
        for batch in batches:
            r, p = target_ranks(recommender(recommender.inputs(batch), embeds), batch["item"])
            ranks.append(r), probs.append(p), feedback.append(np.asarray(batch["feedback"]))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return cat(ranks), cat(probs), cat(feedback)


def reported_metrics(ranks, probs, rows: list[dict], auc_batch_size: int, intervals: IntervalConfig) -> dict:
    """Metrics of ranked examples and their 95% intervals (`intervals`), resampling whole dialogues."""
    from ecr_ray.rec.metrics import bootstrap_intervals, rec_metrics

    feedback, dialogues = [r["feedback"] for r in rows], [r["conversation_id"] for r in rows]
    out = rec_metrics(ranks, probs, feedback, auc_batch_size)
    if intervals.samples:
        out["intervals"] = bootstrap_intervals(ranks, probs, feedback, dialogues, auc_batch_size, intervals.samples, intervals.seed)
    return out


def _columns(part: list[dict]) -> dict:
    return {k: [r[k] for r in part] for k in part[0]}


def _batches(rows: list[dict], size: int):
    return (_columns(rows[i : i + size]) for i in range(0, len(rows), size))


def evaluate_rows(recommender, rows: list[dict], rcfg: RecConfig, intervals: IntervalConfig) -> dict:
    """Metrics of a model on example rows, with intervals."""
    ranks, probs, _ = _ranked(recommender, _batches(rows, rcfg.eval_batch_size))
    return reported_metrics(ranks, probs, rows, rcfg.auc_batch_size, intervals)


def recommend_rows(recommender, rows: list[dict], rcfg: RecConfig, item_index: dict[int, int]) -> list[int]:
    """The top item (an index into the KG's items) per example row, leaving out items its context mentions."""
    import torch

    recommender.eval()
    top = []
    with torch.no_grad():
        embeds = recommender.kg()
        for i in range(0, len(rows), rcfg.eval_batch_size):
            part = rows[i : i + rcfg.eval_batch_size]
            logits = recommender(recommender.inputs(_columns(part)), embeds)
            for j, row in enumerate(part):
                logits[j, [item_index[e] for e in row["entities"] if e in item_index]] = float("-inf")
            top += logits.argmax(1).tolist()
    return top


def load_trained(cfg: Config, run_dir: RunDir):
    """The run's trained recommender (refused when its architecture differs from cfg.rec)."""
    from ecr_ray.rec.checkpoint import load_recommender

    recommender, _ = load_recommender(run_dir.local_copy(model(RECOMMENDER)), cfg.rec, cfg.models.allow_download)
    return recommender


def evaluate_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The rec-eval-<group> stage (the pool: its dev split) -> reports/eval-<split>.json."""
    from ecr_ray.rec.examples import load_examples

    recommender = load_trained(cfg, run_dir)
    rows, counts = load_examples(cfg, run_dir, group)
    if group == POOL:
        rows = [r for r in rows if r["split"] == "dev"]
    if not rows:
        raise RuntimeError(f"split {group!r} has no recommender turn with a target item in the KG: nothing to evaluate")
    result = {**evaluate_rows(recommender, rows, cfg.rec, cfg.eval.intervals), "counts": counts}
    run_dir.write_json(report(f"eval-{split_name(group)}"), result)
    return {k: result[k] for k in [*REC_METRICS, "auc_per_batch", "examples"] + (["intervals"] if "intervals" in result else [])}


def baseline_metrics(train: list[dict], dev: list[dict], dialogues: list[dict], kg, rcfg: RecConfig, ecfg: EvalConfig) -> dict[str, dict]:
    """Every training-free baseline on `dev`, counted from the `train` examples and training `dialogues`."""
    from ecr_ray.rec.baselines import BASELINES, baseline_scores, item_cooccurrence, item_popularity
    from ecr_ray.rec.examples import item_index
    from ecr_ray.rec.metrics import target_ranks

    index = item_index(kg)
    popularity, cooccurrence = item_popularity(train, len(index)), item_cooccurrence(dialogues, index)
    results = {}
    for kind in BASELINES:
        scores = baseline_scores(kind, dev, popularity, cooccurrence, index, ecfg.baselines.decay, ecfg.baselines.copy_bonus)
        ranks, probs = target_ranks(scores, [r["item"] for r in dev])
        results[kind] = reported_metrics(ranks, probs, dev, rcfg.auc_batch_size, ecfg.intervals)
    return results
