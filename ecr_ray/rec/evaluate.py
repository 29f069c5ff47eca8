"""Scoring the recommender: metrics over example batches (the training loop's held-out pass too), reported
metrics with 95% intervals over dialogues, the top item per turn (what generation answers about), the
rec-eval stage, and the training-free baselines in the same harness."""
from __future__ import annotations

import numpy as np

from ecr_ray.artifacts import POOL, RECOMMENDER, model, report, split_name
from ecr_ray.config import NEW_METRICS, REC_METRICS, Config, EvalConfig, IntervalConfig, RecConfig
from ecr_ray.rec.features import as_columns, row_batches
from ecr_ray.rundir import RunDir

SUMMARY_FIGURES = ("recall@10", "recall@50")  # of each other system and difference, in the stage summary and the run report
SUMMARY_DIFFERENCES = ("hybrid − channels alone", "paper − co-occurrence")  # what the learned part adds; ECR alone vs counts


def evaluate(recommender, batches, auc_batch_size: int, entity_embeds=None, own: dict | None = None, part: str = "all") -> dict:
    """Metrics of a model over numpy batches of examples (in order), through the scoring path; `own`: the counted
    dialogues' contributions to the tables, left out for their examples; `part`: what of the model scores (all of
    it, "learned": ECR's learned score alone, "channels": the hybrid's channels alone)."""
    from ecr_ray.rec.metrics import rec_metrics

    return rec_metrics(*_ranked(recommender, batches, entity_embeds, own, part), auc_batch_size)


def _ranked(recommender, batches, entity_embeds=None, own: dict | None = None, part: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank, probability, feedback) of every example's target."""
    import torch

    from ecr_ray.rec.metrics import target_ranks

    recommender.eval()
    ranks, probs, feedback = [], [], []
    with torch.no_grad():
        embeds = recommender.kg() if entity_embeds is None else entity_embeds
        for batch in batches:
            inputs = recommender.inputs(batch, own, channels=part != "learned")
            logits = recommender.channels(inputs) if part == "channels" else recommender(inputs, embeds, channels=part == "all")
            r, p = target_ranks(logits, batch["item"])
            ranks.append(r), probs.append(p), feedback.append(np.asarray(batch["feedback"]))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return cat(ranks), cat(probs), cat(feedback)


def reported_metrics(ranks, probs, rows: list[dict], auc_batch_size: int, intervals: IntervalConfig, minus: tuple | None = None) -> dict:
    """Metrics of ranked examples and their 95% intervals (`intervals`), resampling whole dialogues;
    with `minus` (ranks, probs of another system on the same rows): the paired differences."""
    from ecr_ray.rec.metrics import bootstrap_intervals, rec_metrics

    feedback, dialogues, new = [r["feedback"] for r in rows], [r["conversation_id"] for r in rows], [r["new"] for r in rows]
    out = rec_metrics(ranks, probs, feedback, auc_batch_size, new)
    if minus is not None:
        other = rec_metrics(*minus, feedback, auc_batch_size, new)
        out = {k: (v - other[k] if isinstance(v, float) and isinstance(other[k], float) else None) for k, v in out.items()
               if k in (*REC_METRICS, *NEW_METRICS, "auc_per_batch")} | {"examples": len(ranks)}
    if intervals.samples:
        out["intervals"] = bootstrap_intervals(ranks, probs, feedback, dialogues, auc_batch_size, intervals.samples, intervals.seed,
                                               minus=minus, new=new)
    return out


def rank_rows(recommender, rows: list[dict], rcfg: RecConfig, part: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(rank, probability) of every example row's target under a model (or a `part` of it, as `evaluate`)."""
    return _ranked(recommender, row_batches(rows, rcfg.eval_batch_size), part=part)[:2]


def variant_ranks(recommender, rows: list[dict], rcfg: RecConfig, info: dict) -> dict[str, tuple]:
    """(ranks, probabilities) of the trained model under its variant's name and, for a hybrid, of its parts on the
    same rows: "paper" (its learned score alone: ECR's model, trained as the paper variant is) and "channels alone"
    (with the weights they were fitted with alone, from the model's record `info`)."""
    import copy

    from ecr_ray.rec.channels import apply_channels

    out = {rcfg.variant: rank_rows(recommender, rows, rcfg)}
    if recommender.has_channels:
        alone = copy.deepcopy(recommender)
        apply_channels(alone, info["metrics"]["channel_fit"]["weights"])
        out.update({"paper": rank_rows(recommender, rows, rcfg, "learned"), "channels alone": rank_rows(alone, rows, rcfg, "channels")})
    return out


def evaluate_rows(recommender, rows: list[dict], rcfg: RecConfig, intervals: IntervalConfig) -> dict:
    """Metrics of a model on example rows, with intervals."""
    return reported_metrics(*rank_rows(recommender, rows, rcfg), rows, rcfg.auc_batch_size, intervals)


def recommend_rows(recommender, rows: list[dict], rcfg: RecConfig, said: dict[int, list[int]]) -> list[int]:
    """The top item (an index into the KG's items) per example row, leaving out the movies its context mentions
    (`said`: rec.features.said_items, every movie of a mentioned title)."""
    import torch

    recommender.eval()
    top = []
    with torch.no_grad():
        embeds = recommender.kg()
        for i in range(0, len(rows), rcfg.eval_batch_size):
            part = rows[i : i + rcfg.eval_batch_size]
            logits = recommender(recommender.inputs(as_columns(part)), embeds)
            for j, row in enumerate(part):
                logits[j, [i for e in row["entities"] for i in said.get(e, ())]] = float("-inf")
            top += logits.argmax(1).tolist()
    return top


def load_trained(cfg: Config, run_dir: RunDir, with_info: bool = False):
    """The run's trained recommender (refused when its architecture differs from cfg.rec); with `with_info`,
    (it, its record)."""
    from ecr_ray.rec.checkpoint import load_recommender

    recommender, info = load_recommender(run_dir.local_copy(model(RECOMMENDER)), cfg.rec, cfg.models.allow_download)
    return (recommender, info) if with_info else recommender


def evaluate_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The rec-eval-<group> stage (the pool: its dev split) -> reports/eval-<split>.json: the trained model (a hybrid
    also as its parts: the paper variant and the channels alone) and the training-free baselines (their counts from
    the pool's training split) on the same examples, with the paired differences that say what each part adds."""
    from ecr_ray.artifacts import read_tables
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.diagnostics import part_effects
    from ecr_ray.rec.examples import load_examples

    recommender, info = load_trained(cfg, run_dir, with_info=True)
    rows, counts = load_examples(cfg, run_dir, group)
    pool = rows if group == POOL else load_examples(cfg, run_dir, POOL)[0]
    if group == POOL:
        rows = [r for r in rows if r["split"] == "dev"]
    if not rows:
        raise RuntimeError(f"split {group!r} has no recommender turn with a target item in the KG: nothing to evaluate")
    ranks = variant_ranks(recommender, rows, cfg.rec, info)
    baselines = baseline_ranks([r for r in pool if r["split"] == "train"], read_tables(run_dir)["items"], rows,
                               load_kg(cfg.data.path(cfg.data.kg_dir)), cfg.rec, cfg.eval)
    measured = lambda ranks, minus=None: reported_metrics(*ranks, rows, cfg.rec.auc_batch_size, cfg.eval.intervals, minus)  # noqa: E731
    variant = cfg.rec.variant
    compared = [(variant, name) for name in (*ranks, *baselines) if name != variant]
    if "paper" in ranks:
        compared += [("paper", name) for name in baselines]
    everything = {**ranks, **baselines}
    result = {**measured(ranks[variant]), "variant": variant, "counts": counts, "emotion parts": part_effects(recommender, rows, cfg.rec),
              "variants": {name: measured(r) for name, r in ranks.items() if name != variant},
              "baselines": {name: measured(r) for name, r in baselines.items()},
              "differences": {f"{a} − {b}": measured(everything[a], everything[b]) for a, b in compared}}
    run_dir.write_json(report(f"eval-{split_name(group)}"), result)
    summary = {k: result[k] for k in ["variant", *REC_METRICS, *NEW_METRICS, "auc_per_batch", "examples", "new"]}
    intervals = dict(result.get("intervals", {}))
    others = {**result["variants"], **result["baselines"], **{d: result["differences"][d] for d in SUMMARY_DIFFERENCES
                                                              if d in result["differences"]}}
    for name, metrics in others.items():  # flat keys: the run report's figures
        for k in SUMMARY_FIGURES:
            summary[f"{name}: {k}"] = metrics[k]
            if k in metrics.get("intervals", {}):
                intervals[f"{name}: {k}"] = metrics["intervals"][k]
    return {**summary, **({"intervals": intervals} if intervals else {})}


def baseline_ranks(train_rows: list[dict], items, rows: list[dict], kg, rcfg: RecConfig, ecfg: EvalConfig) -> dict[str, tuple]:
    """(ranks, probabilities) of every training-free baseline on `rows`, from the training examples (popularity)
    and the co-occurrence table `items` of the training dialogues."""
    from ecr_ray.rec.baselines import BASELINES, baseline_scores, item_popularity
    from ecr_ray.rec.features import item_index
    from ecr_ray.rec.metrics import target_ranks

    index = item_index(kg)
    popularity = item_popularity(train_rows, len(index))
    results = {}
    for kind in BASELINES:
        scores = baseline_scores(kind, rows, popularity, items, index, rcfg.recency_decay, ecfg.baselines.copy_bonus)
        results[kind] = target_ranks(scores, [r["item"] for r in rows])
    return results
