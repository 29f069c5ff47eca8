"""The recommender stages.

rec-context-<g>    MiniLM embeddings of every recommender-turn context of group g (Ray Data, cached)
rec-cooccurrence   emotion-related neighbours P(e_i|e_j) from the training dialogues
rec-train          the emotion-aware recommender (Ray Train), best epoch on the dev split
rec-eval-<g>       R@1/10/50, RT@1/10/50, AUC of the trained model on group g
                   (the pool's dev split -> reports/eval-dev.json; a --split-file NAME -> eval-NAME.json)
rec-ablations      popularity and five model variants on the dev split, as a table and a chart
                   (optional: `ecr-ray ablations` or `--stages rec-ablations`)
"""
from __future__ import annotations

import dataclasses
import re
from functools import partial

import numpy as np
import pyarrow as pa

from ecr_ray.config import Config, ConfigError, RecConfig
from ecr_ray.data.kg import load_kg
from ecr_ray.data.prepare import POOL, prepared
from ecr_ray.emotion.labels import FEEDBACK_WEIGHTS
from ecr_ray.pipeline import Stage
from ecr_ray.rec.metrics import KS
from ecr_ray.rundir import RunDir

TRAIN, COOCCURRENCE, ABLATIONS = "rec-train", "rec-cooccurrence", "rec-ablations"
MODEL, NEIGHBOURS = "recommender", "rec/neighbours"
METRIC_KEYS = [f"recall@{k}" for k in KS] + [f"recall_true@{k}" for k in KS] + ["auc"]
# the paper's ablations as config flags, each trained on the pool's train split and scored on dev
VARIANTS = {
    "base": {"local_emotion": False, "global_emotion": False, "reweight": False},
    "+local": {"local_emotion": True, "global_emotion": False, "reweight": False},
    "+local +reweighting": {"local_emotion": True, "global_emotion": False, "reweight": True},
    "+local +global": {"local_emotion": True, "global_emotion": True, "reweight": False},
    "full ECR": {"local_emotion": True, "global_emotion": True, "reweight": True},
}
_RUNTIME_ONLY = ("context_actors", "context_actor_cpus", "context_batch_size", "eval_batch_size")  # change speed, not results


def eval_report(group: str) -> str:
    return f"reports/eval-{'dev' if group == POOL else group}.json"


def rec_stages(cfg: Config) -> list[Stage]:
    r = cfg.rec
    if r.context_encoder not in ("minilm", "prompt"):
        raise ConfigError(f"rec.context_encoder should be minilm or prompt, got {r.context_encoder!r}")
    if r.early_stop_metric not in METRIC_KEYS:
        raise ConfigError(f"rec.early_stop_metric should be one of {METRIC_KEYS}, got {r.early_stop_metric!r}")
    groups = [POOL, *sorted(cfg.data.split_files)]
    cached = r.context_encoder == "minilm"
    context = (lambda g: (f"rec-context-{g}",)) if cached else (lambda g: ())
    stages = [Stage(f"rec-context-{g}", run=partial(embed_contexts, group=g), outputs=(f"rec/context/{g}",),
                    needs=(f"prepare-{g}",), key=lambda c: {k: getattr(c.rec, k) for k in ("context_model", "context_max_length")})
              for g in groups] if cached else []
    stages.append(Stage(COOCCURRENCE, run=cooccurrence, outputs=(NEIGHBOURS,), needs=(f"prepare-{POOL}", f"emotion-infer-{POOL}"),
                        key=lambda c: {k: getattr(c.rec, k) for k in ("top_emotions", "neighbours", "min_cooccurrence")}))
    train_needs = (COOCCURRENCE, f"emotion-infer-{POOL}", *context(POOL))
    stages.append(Stage(TRAIN, run=train_recommender, outputs=(f"models/{MODEL}", "reports/recommender.json"), needs=train_needs,
                        key=_train_key))
    for g in groups:
        stages.append(Stage(f"rec-eval-{g}", run=partial(evaluate_group, group=g), outputs=(eval_report(g),),
                            needs=(TRAIN, f"emotion-infer-{g}", *context(g)), key=lambda c: {"auc_batch_size": c.rec.auc_batch_size}))
    stages.append(Stage(ABLATIONS, run=run_ablations, needs=(TRAIN,), key=_train_key, optional=True,
                        outputs=("models/ablations", "reports/ablations.json", "reports/ablations.md", "reports/ablations.png")))
    return stages


def _train_key(cfg: Config) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg.rec).items() if k not in _RUNTIME_ONLY} | {"allow_download": cfg.models.allow_download}


def embed_contexts(cfg: Config, run_dir: RunDir, group: str) -> dict:
    import ray

    from ecr_ray.ray_session import ensure_ray
    from ecr_ray.rec.context import ContextEmbedder

    ensure_ray(cfg.ray)
    r, out = cfg.rec, f"rec/context/{group}"
    (ray.data.read_parquet(run_dir.location(prepared(group, "rec_turns")))
     .select_columns(["conversation_id", "turn", "context", "context_roles", "target_items"])
     .filter(lambda row: any(i >= 0 for i in row["target_items"]))  # only turns the recommender is trained or scored on
     .repartition(target_num_rows_per_block=8 * r.context_batch_size)  # the filter leaves one block: split it for the pool
     .map_batches(ContextEmbedder, batch_format="pyarrow", batch_size=r.context_batch_size,
                  fn_constructor_kwargs={"model": r.context_model, "max_length": r.context_max_length,
                                         "batch_size": r.context_batch_size, "allow_download": cfg.models.allow_download},
                  compute=ray.data.ActorPoolStrategy(size=r.context_actors), num_cpus=r.context_actor_cpus)
     .write_parquet(run_dir.location(out)))
    table = run_dir.read_table(out, columns=["context_vec"])
    return {"contexts": table.num_rows, "dim": len(table.column("context_vec")[0]) if table.num_rows else 0}


def _emotion_probs(run_dir: RunDir, group: str) -> dict[tuple[int, int], list[float]]:
    t = run_dir.read_table(f"emotion/utterances/{group}", columns=["conversation_id", "turn", "probs"]).to_pydict()
    return {(c, u): p for c, u, p in zip(t["conversation_id"], t["turn"], t["probs"], strict=True)}


def cooccurrence(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.rec.cooccurrence import emotion_neighbours

    r = cfg.rec
    dialogues = [d for d in run_dir.read_table(prepared(POOL, "dialogues")).to_pylist() if d["split"] == "train"]
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    ids, weights, stats = emotion_neighbours(dialogues, _emotion_probs(run_dir, POOL), kg.num_entities, r.top_emotions,
                                             r.neighbours, r.min_cooccurrence)
    table = pa.table({"neighbour_ids": pa.array(ids.tolist(), pa.list_(pa.int64())),
                      "neighbour_weights": pa.array(weights.tolist(), pa.list_(pa.float32()))})
    run_dir.write_parquet(f"{NEIGHBOURS}/part-0.parquet", table)
    return {"dialogues": len(dialogues), **stats}


def _neighbours(run_dir: RunDir) -> tuple[np.ndarray, np.ndarray]:
    t = run_dir.read_table(NEIGHBOURS)
    return (np.array(t.column("neighbour_ids").to_pylist(), dtype=np.int64),
            np.array(t.column("neighbour_weights").to_pylist(), dtype=np.float32))


def load_examples(cfg: Config, run_dir: RunDir, group: str) -> tuple[list[dict], dict]:
    """Examples of a group (with context vectors on the cached path), sorted by dialogue and turn."""
    from ecr_ray.rec.features import build_examples

    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    turns = sorted(run_dir.read_table(prepared(group, "rec_turns")).to_pylist(), key=lambda t: (t["conversation_id"], t["turn"]))
    rows, counts = build_examples(turns, _emotion_probs(run_dir, group), {int(e): i for i, e in enumerate(kg.item_ids)},
                                  cfg.rec.max_entities)
    if cfg.rec.context_encoder == "minilm":
        t = run_dir.read_table(f"rec/context/{group}").to_pydict()
        vectors = {(c, u): v for c, u, v in zip(t["conversation_id"], t["turn"], t["context_vec"], strict=True)}
        missing = sum((row["conversation_id"], row["turn"]) not in vectors for row in rows)
        if missing:
            raise RuntimeError(f"{missing} examples of {group} have no cached context embedding; re-run rec-context-{group} with --force")
        for row in rows:
            row["context_vec"] = vectors[(row["conversation_id"], row["turn"])]
    return rows, counts


def model_inputs(cfg: Config, run_dir: RunDir):
    """(meta for build_recommender, train rows, dev rows, example counts) of the pool."""
    from ecr_ray.rec.checkpoint import model_meta

    rows, counts = load_examples(cfg, run_dir, POOL)
    ids, weights = _neighbours(run_dir)
    dim = len(rows[0]["context_vec"]) if rows and "context_vec" in rows[0] else 0
    meta = model_meta(str(cfg.data.path(cfg.data.kg_dir)), dim, ids, weights)
    return meta, [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "dev"], counts


def train_recommender(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.rec.train import fit_recommender

    meta, train, dev, counts = model_inputs(cfg, run_dir)
    metrics = fit_recommender(cfg, cfg.rec, MODEL, meta, train, dev, run_dir)
    report = {"examples": counts, "train_examples": len(train), "dev_examples": len(dev), "training": metrics,
              "feedback_weights": {str(k): v for k, v in FEEDBACK_WEIGHTS.items()}}
    run_dir.write_json("reports/recommender.json", report)
    return {"train_examples": len(train), "dev_examples": len(dev), "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics.get("best_epoch"), f"dev_{cfg.rec.early_stop_metric}": metrics.get("best_dev_metric")}


def evaluate_rows(model, rows: list[dict], rcfg: RecConfig) -> dict:
    from ecr_ray.rec.train import evaluate

    columns = lambda part: {k: [r[k] for r in part] for k in part[0]}
    batches = (columns(rows[i : i + rcfg.eval_batch_size]) for i in range(0, len(rows), rcfg.eval_batch_size))
    return evaluate(model, batches, rcfg.auc_batch_size)


def recommend_rows(model, rows: list[dict], rcfg: RecConfig, item_index: dict[int, int]) -> list[int]:
    """The top item (an index into the KG's items) per example row, leaving out items its context mentions."""
    import torch

    model.eval()
    top = []
    with torch.no_grad():
        embeds = model.kg()
        for i in range(0, len(rows), rcfg.eval_batch_size):
            part = rows[i : i + rcfg.eval_batch_size]
            logits = model(model.inputs({k: [r[k] for r in part] for k in part[0]}), embeds)
            for j, row in enumerate(part):
                logits[j, [item_index[e] for e in row["entities"] if e in item_index]] = float("-inf")
            top += logits.argmax(1).tolist()
    return top


def evaluate_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    from ecr_ray.rec.checkpoint import load_recommender

    model, _ = load_recommender(run_dir.local_copy(f"models/{MODEL}"), cfg.rec, cfg.models.allow_download)
    rows, counts = load_examples(cfg, run_dir, group)
    if group == POOL:
        rows = [r for r in rows if r["split"] == "dev"]
    if not rows:
        raise RuntimeError(f"split {group!r} has no recommender turn with a target item in the KG: nothing to evaluate")
    report = {**evaluate_rows(model, rows, cfg.rec), "counts": counts}
    run_dir.write_json(eval_report(group), report)
    return {k: report[k] for k in METRIC_KEYS + ["auc_per_batch", "examples"]}


def popularity_metrics(train: list[dict], dev: list[dict], num_items: int, rcfg: RecConfig) -> dict:
    """The popularity baseline: every turn gets the items most often recommended in training."""
    from ecr_ray.rec.metrics import rec_metrics, target_ranks

    counts = np.bincount([r["item"] for r in train], minlength=num_items).astype(np.float64)
    scores = np.log1p(counts) - 1e-9 * np.arange(num_items)  # ties broken by item order
    ranks, probs = target_ranks(np.broadcast_to(scores, (len(dev), num_items)).copy(), [r["item"] for r in dev])
    return rec_metrics(ranks, probs, [r["feedback"] for r in dev], rcfg.auc_batch_size)


def run_ablations(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.rec.checkpoint import load_recommender
    from ecr_ray.report import comparison_chart, comparison_table
    from ecr_ray.rec.train import fit_recommender

    meta, train, dev, _ = model_inputs(cfg, run_dir)
    results = {"popularity": popularity_metrics(train, dev, len(load_kg(meta["kg_dir"]).item_ids), cfg.rec)}
    for name, flags in VARIANTS.items():
        rcfg = dataclasses.replace(cfg.rec, **flags)
        folder = MODEL  # the variant the config asks for is the trained recommender itself
        if rcfg != cfg.rec:
            folder = f"ablations/{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
            print(f"[{ABLATIONS}] training variant {name!r}", flush=True)
            fit_recommender(cfg, rcfg, folder, meta, train, dev, run_dir)
        model, _ = load_recommender(run_dir.local_copy(f"models/{folder}"), rcfg)
        results[name] = evaluate_rows(model, dev, rcfg)
    run_dir.write_json("reports/ablations.json", results)
    table = comparison_table(results, METRIC_KEYS)
    run_dir.write_text("reports/ablations.md", table)
    run_dir.write_bytes("reports/ablations.png", comparison_chart(results, [("Recommender ablations (dev split)", METRIC_KEYS)]))
    print(table, flush=True)
    return {name: {k: results[name][k] for k in ("recall@50", "recall_true@50", "auc")} for name in results}
