"""Recommendation metrics: Recall@k, Recall_True@k and AUC (plain numpy).

Every example is one (turn, target item). Recall@k: the target is among the k best-scored items.
Recall_True@k: the same over examples whose item the user liked. Recall_New@k: the same over examples
whose item the dialogue has not mentioned before (what copying cannot find). AUC: how often a liked target's
probability (softmax over all items, as in the paper's code) exceeds a disliked target's, ties
counting half. `auc` is global over all liked x disliked pairs of the split; `auc_per_batch`
averages the AUC of consecutive evaluation batches that hold both kinds, as the paper's code does.
"""
from __future__ import annotations

import numpy as np

from ecr_ray.config import MEAN_RECALL, MEAN_RECALL_AUC, REC_KS
from ecr_ray.config import REC_KS as KS
from ecr_ray.data.redial import FEEDBACK_DISLIKE as DISLIKE
from ecr_ray.data.redial import FEEDBACK_LIKE as LIKE


def target_ranks(logits, targets) -> tuple[np.ndarray, np.ndarray]:
    """(0-based rank of each target among all items, its softmax probability) for a batch. Items
    scored the same as the target rank above it: ties never count as hits."""
    import torch

    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets, dtype=torch.long)
    target_logit = logits.gather(1, targets.unsqueeze(1))
    ranks = (logits >= target_logit).sum(1) - 1
    probs = torch.softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return ranks.numpy(), probs.numpy()


def auc(positive, negative) -> float | None:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney); None if a side is empty."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(positive) or not len(negative):
        return None
    values = np.concatenate([positive, negative])
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2  # average 1-based rank of a run of ties
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def rec_metrics(ranks, probs, feedback, auc_batch_size: int, new=None) -> dict:
    """The metrics of ranked examples; `new` (1 where the target was not mentioned earlier) adds Recall_New@k."""
    ranks, probs, feedback = np.asarray(ranks), np.asarray(probs), np.asarray(feedback)
    liked, disliked = feedback == LIKE, feedback == DISLIKE
    out: dict = {}
    for k in KS:
        out[f"recall@{k}"] = float((ranks < k).mean()) if len(ranks) else 0.0
    for k in KS:
        out[f"recall_true@{k}"] = float((ranks[liked] < k).mean()) if liked.any() else 0.0
    if new is not None:
        fresh = np.asarray(new, dtype=bool)
        for k in KS:
            out[f"recall_new@{k}"] = float((ranks[fresh] < k).mean()) if fresh.any() else 0.0
        out["new"] = int(fresh.sum())
    out["auc"] = auc(probs[liked], probs[disliked])
    batch_aucs = []
    for start in range(0, len(probs), auc_batch_size):
        part = slice(start, start + auc_batch_size)
        value = auc(probs[part][liked[part]], probs[part][disliked[part]])
        if value is not None:
            batch_aucs.append(value)
    out["auc_per_batch"] = float(np.mean(batch_aucs)) if batch_aucs else None
    out.update({"examples": len(ranks), "liked": int(liked.sum()), "disliked": int(disliked.sum()),
                "not_said": int((~liked & ~disliked).sum()), "auc_batches": len(batch_aucs)})
    return out


def selection_metric(metrics: dict, name: str) -> float:
    """The value that fits the channels and selects the best epoch (`rec.early_stop_metric`); an AUC
    without both kinds of target counts 0.5 (chance)."""
    recalls = [metrics[f"recall@{k}"] for k in REC_KS]
    auc_or_chance = 0.5 if metrics["auc"] is None else metrics["auc"]
    if name == MEAN_RECALL:
        return sum(recalls) / len(recalls)
    if name == MEAN_RECALL_AUC:
        return (sum(recalls) + auc_or_chance) / (len(recalls) + 1)
    return auc_or_chance if name == "auc" else metrics[name]


def bootstrap_intervals(ranks, probs, feedback, dialogues, auc_batch_size: int, samples: int, seed: int,
                        level: float = 0.95, minus: tuple | None = None, new=None) -> dict[str, list[float]]:
    """A `level` interval of every metric, resampling whole dialogues (`dialogues`: each example's) with
    replacement: the examples of one dialogue are not independent, so they move together. With `minus`
    (the ranks and probabilities of another model on the same examples): intervals of the difference,
    both models scored on the same resamples."""
    ranks, probs, feedback = np.asarray(ranks), np.asarray(probs), np.asarray(feedback)
    new = None if new is None else np.asarray(new)
    _, inverse = np.unique(np.asarray(dialogues), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(inverse) else []
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(samples if members else 0):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        fresh = None if new is None else new[pick]
        values = rec_metrics(ranks[pick], probs[pick], feedback[pick], auc_batch_size, fresh)
        other = rec_metrics(np.asarray(minus[0])[pick], np.asarray(minus[1])[pick], feedback[pick], auc_batch_size, fresh) if minus else {}
        for key, value in values.items():
            if isinstance(value, float) and (not minus or isinstance(other.get(key), float)):
                draws.setdefault(key, []).append(value - other.get(key, 0.0))
    tail = (1 - level) / 2
    return {k: [float(np.quantile(v, tail)), float(np.quantile(v, 1 - tail))] for k, v in draws.items()}
