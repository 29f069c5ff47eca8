"""The paper's ablations as config flags, each trained on the pool's train split and scored on dev
(95% intervals over dialogues), beside the training-free baselines: reports/ablations.{json,md,png}."""
from __future__ import annotations

import dataclasses
import re

from ecr_ray.artifacts import ABLATION_REPORTS, ABLATIONS, POOL, RECOMMENDER, model, read_rows
from ecr_ray.config import REC_METRICS, Config
from ecr_ray.rundir import RunDir

VARIANTS = {
    "base": {"local_emotion": False, "global_emotion": False, "reweight": False},
    "+local": {"local_emotion": True, "global_emotion": False, "reweight": False},
    "+local +reweighting": {"local_emotion": True, "global_emotion": False, "reweight": True},
    "+local +global": {"local_emotion": True, "global_emotion": True, "reweight": False},
    "full ECR": {"local_emotion": True, "global_emotion": True, "reweight": True},
}


def run_ablations(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.checkpoint import load_recommender
    from ecr_ray.rec.evaluate import baseline_metrics, evaluate_rows
    from ecr_ray.rec.examples import model_inputs
    from ecr_ray.rec.train import fit_recommender
    from ecr_ray.report import comparison_chart, comparison_table

    meta, train, dev, _ = model_inputs(cfg, run_dir)
    dialogues = [d for d in read_rows(run_dir, POOL, "dialogues") if d["split"] == "train"]
    results = baseline_metrics(train, dev, dialogues, load_kg(meta["kg_dir"]), cfg.rec, cfg.eval)
    for name, flags in VARIANTS.items():
        rcfg = dataclasses.replace(cfg.rec, **flags)
        folder = RECOMMENDER  # the variant the config asks for is the trained recommender itself
        if rcfg != cfg.rec:
            folder = f"{ABLATIONS}/{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
            print(f"[rec-ablations] training variant {name!r}", flush=True)
            fit_recommender(cfg, rcfg, folder, meta, train, dev, run_dir)
        recommender, _ = load_recommender(run_dir.local_copy(model(folder)), rcfg)
        results[name] = evaluate_rows(recommender, dev, rcfg, cfg.eval.intervals)
    json_path, md_path, png_path = ABLATION_REPORTS
    run_dir.write_json(json_path, results)
    table = comparison_table(results, list(REC_METRICS))
    run_dir.write_text(md_path, table)
    run_dir.write_bytes(png_path, comparison_chart(results, [("Recommender ablations (dev split)", list(REC_METRICS))]))
    print(table, flush=True)
    return {name: {k: results[name][k] for k in ("recall@50", "recall_true@50", "auc")} for name in results}
