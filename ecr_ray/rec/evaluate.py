"""Scoring the recommender: metrics over example batches (the training loop's dev pass too), the top
item per turn (what generation answers about), the rec-eval stage and the popularity baseline."""
from __future__ import annotations

import numpy as np

from ecr_ray.artifacts import POOL, RECOMMENDER, model, report, split_name
from ecr_ray.config import REC_METRICS, Config, RecConfig
from ecr_ray.rundir import RunDir


def evaluate(recommender, batches, auc_batch_size: int, entity_embeds=None) -> dict:
    """Metrics of a model over numpy batches of examples (in order), through the scoring path."""
    import torch

    from ecr_ray.rec.metrics import rec_metrics, target_ranks

    recommender.eval()
    ranks, probs, feedback = [], [], []
    with torch.no_grad():
        embeds = recommender.kg() if entity_embeds is None else entity_embeds
        for batch in batches:
            r, p = target_ranks(recommender(recommender.inputs(batch), embeds), batch["item"])
            ranks.append(r), probs.append(p), feedback.append(np.asarray(batch["feedback"]))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return rec_metrics(cat(ranks), cat(probs), cat(feedback), auc_batch_size)


def _columns(part: list[dict]) -> dict:
    return {k: [r[k] for r in part] for k in part[0]}


def _batches(rows: list[dict], size: int):
    return (_columns(rows[i : i + size]) for i in range(0, len(rows), size))


def evaluate_rows(recommender, rows: list[dict], rcfg: RecConfig) -> dict:
    return evaluate(recommender, _batches(rows, rcfg.eval_batch_size), rcfg.auc_batch_size)


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
    result = {**evaluate_rows(recommender, rows, cfg.rec), "counts": counts}
    run_dir.write_json(report(f"eval-{split_name(group)}"), result)
    return {k: result[k] for k in [*REC_METRICS, "auc_per_batch", "examples"]}


def popularity_metrics(train: list[dict], dev: list[dict], num_items: int, rcfg: RecConfig) -> dict:
    """The popularity baseline: every turn gets the items most often recommended in training."""
    from ecr_ray.rec.metrics import rec_metrics, target_ranks

    counts = np.bincount([r["item"] for r in train], minlength=num_items).astype(np.float64)
    scores = np.log1p(counts) - 1e-9 * np.arange(num_items)  # ties broken by item order
    ranks, probs = target_ranks(np.broadcast_to(scores, (len(dev), num_items)).copy(), [r["item"] for r in dev])
    return rec_metrics(ranks, probs, [r["feedback"] for r in dev], rcfg.auc_batch_size)
