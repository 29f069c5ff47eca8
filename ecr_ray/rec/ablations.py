"""The paper's ablations (each emotion part left out in turn) beside the training-free baselines,
cross-validated over the pool's dialogues: for each of `rec.cv_folds` folds, the tables and models come
from the other folds' dialogues and every system ranks the fold's examples, so each pool example is
scored once by each system. A hybrid model is scored whole, as its learned part alone (the paper
variant: the ablations are read there) and, for full ECR, as its channels alone (what the learned part
adds; `rec.cv_emotion_ablations: false` trains full ECR alone). Metrics with 95% intervals over
dialogues, and paired differences (same resamples): reports/ablations.{json,md,png}."""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from ecr_ray.artifacts import ABLATION_REPORTS, ABLATIONS, POOL, emotion_probs, model, read_rows
from ecr_ray.config import REC_METRICS, Config
from ecr_ray.rundir import RunDir

VARIANTS = {  # the paper's claim, one part left out at a time, and none of them
    "full ECR": {"local_emotion": True, "global_emotion": True, "reweight": True},
    "without local emotion": {"local_emotion": False, "global_emotion": True, "reweight": True},
    "without global emotion": {"local_emotion": True, "global_emotion": False, "reweight": True},
    "without reweighting": {"local_emotion": True, "global_emotion": True, "reweight": False},
    "base": {"local_emotion": False, "global_emotion": False, "reweight": False},
}
PAPER = " (paper)"  # a hybrid's learned score alone: the paper variant, trained the same way
COMPARED = (("full ECR", "channels alone"), ("full ECR" + PAPER, "co-occurrence"), ("full ECR", "co-occurrence + copy"),
            *(("full ECR" + PAPER, name + PAPER) for name in VARIANTS if name != "full ECR"))


def folds(dialogue_ids, k: int) -> list[set[int]]:
    """`k` disjoint sets of whole dialogues covering them all (seeded)."""
    if k < 2:
        raise ValueError(f"rec.cv_folds is {k}: cross-validation needs at least 2 folds")
    order = np.random.default_rng(0).permutation(sorted(dialogue_ids))
    return [set(order[i::k].tolist()) for i in range(k)]


def run_ablations(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.checkpoint import load_recommender
    from ecr_ray.rec.diagnostics import emotion_signal, part_effects
    from ecr_ray.rec.evaluate import baseline_ranks, reported_metrics, variant_ranks
    from ecr_ray.rec.examples import load_examples, training_inputs
    from ecr_ray.rec.train import fit_recommender
    from ecr_ray.report import comparison_chart, comparison_table

    rows, _ = load_examples(cfg, run_dir, POOL)
    dialogues, probs = read_rows(run_dir, POOL, "dialogues"), emotion_probs(run_dir, POOL)
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    everyone = {d["conversation_id"] for d in dialogues}
    held_rows, ranked, effects = [], {}, []
    trained = VARIANTS if cfg.rec.cv_emotion_ablations else {"full ECR": VARIANTS["full ECR"]}
    for f, held in enumerate(folds(everyone, cfg.rec.cv_folds)):
        inputs = training_inputs(cfg, rows, dialogues, probs, everyone - held)
        held_rows += inputs.held_out
        for kind, result in baseline_ranks(inputs.train, inputs.meta["tables"]["items"], inputs.held_out, kg, cfg.rec, cfg.eval).items():
            ranked.setdefault(kind, []).append(result)
        for name, flags in trained.items():
            rcfg = dataclasses.replace(cfg.rec, **flags)
            folder = f"{ABLATIONS}/fold-{f}/{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
            print(f"[rec-ablations] fold {f + 1}/{cfg.rec.cv_folds}: training {name!r}", flush=True)
            fit_recommender(cfg, rcfg, folder, inputs, run_dir)
            recommender, info = load_recommender(run_dir.local_copy(model(folder)), rcfg)
            if name == "full ECR":
                effects.append(part_effects(recommender, inputs.held_out, rcfg))
            labels = {rcfg.variant: name, "paper": name + PAPER, "channels alone": "channels alone" if name == "full ECR" else None}
            for part, ranks in variant_ranks(recommender, inputs.held_out, rcfg, info).items():
                if labels[part]:  # the channels alone once: full ECR's
                    ranked.setdefault(labels[part], []).append(ranks)
    joined = {name: tuple(np.concatenate(part) for part in zip(*parts, strict=True)) for name, parts in ranked.items()}
    results = {name: reported_metrics(*joined[name], held_rows, cfg.rec.auc_batch_size, cfg.eval.intervals) for name in joined}
    differences = {f"{a} − {b}": reported_metrics(*joined[a], held_rows, cfg.rec.auc_batch_size, cfg.eval.intervals, minus=joined[b])
                   for a, b in COMPARED if a in joined and b in joined}
    diagnostics = {"emotion signal": emotion_signal(dialogues, probs, cfg.rec),
                   "full ECR's emotion parts (mean over folds)": {k: None if effects[0][k] is None else float(np.mean([e[k] for e in effects]))
                                                                   for k in effects[0]}}
    json_path, md_path, png_path = ABLATION_REPORTS
    run_dir.write_json(json_path, {"folds": cfg.rec.cv_folds, "systems": results, "differences": differences, "diagnostics": diagnostics})
    table = (f"Cross-validated over the pool ({cfg.rec.cv_folds} folds, {len(held_rows)} examples, 95% intervals over dialogues)\n\n"
             + comparison_table(results, list(REC_METRICS)) + "\nPaired differences (same examples and resamples)\n\n"
             + comparison_table(differences, list(REC_METRICS)) + "\nWhy an emotion part helps or not (rec/diagnostics.py)\n\n"
             + diagnostics_table(diagnostics))
    run_dir.write_text(md_path, table)
    run_dir.write_bytes(png_path, comparison_chart(results, [(f"Recommender ablations ({cfg.rec.cv_folds}-fold CV over the pool)",
                                                              list(REC_METRICS))]))
    print(table, flush=True)
    return {name: {k: results[name][k] for k in ("recall@50", "recall_true@50", "auc")} for name in results}


def diagnostics_table(diagnostics: dict) -> str:
    """Each diagnostic as a row of a markdown table: what it reads, its value."""
    cell = lambda v: ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else "" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [f"| {part}: {k} | {cell(v)} |"
            for part, values in diagnostics.items() for k, v in values.items()]
    return "\n".join(["| diagnostic | value |", "|---|---:|", *rows]) + "\n"
