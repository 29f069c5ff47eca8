"""The recommender stages.

rec-context-<g>    MiniLM embeddings of every recommender-turn context of group g (Ray Data, cached)
rec-cooccurrence   the training dialogues' tables: item co-occurrence counts, the directed emotion-
                   related neighbour counts, the PPMI-SVD entity table (rec/cooccurrence.py)
rec-train          the emotion-aware recommender (Ray Train), best epoch on held-out training dialogues
rec-eval-<g>       R@1/10/50, RT@1/10/50, AUC of the trained model on group g
                   (the pool's dev split -> reports/eval-dev.json; a --split-file NAME -> eval-NAME.json)
rec-ablations      the training-free baselines (popularity, co-occurrence, co-occurrence + copy) and
                   five model variants, cross-validated over the pool's dialogues (rec.cv_folds), with
                   95% intervals and paired differences, as tables and a chart
                   (optional: `ecr-ray ablations` or `--stages rec-ablations`)
"""
from __future__ import annotations

from functools import partial

from ecr_ray.artifacts import (ABLATION_REPORTS, ABLATIONS, POOL, RECOMMENDER, RECOMMENDER_CURVE, TABLES, context_vectors_of, model, report,
                               split_name)
from ecr_ray.config import Config
from ecr_ray.rec.ablations import run_ablations
from ecr_ray.rec.context import context_stage, embed_contexts
from ecr_ray.rec.cooccurrence import build_tables
from ecr_ray.rec.evaluate import evaluate_group
from ecr_ray.rec.train import train_recommender
from ecr_ray.stage import Stage

TRAINING = ("rec", "models.allow_download")  # what decides a trained recommender


def rec_stages(cfg: Config) -> list[Stage]:
    groups = [POOL, *sorted(cfg.data.split_files)]
    stages = [Stage(f"rec-context-{g}", run=partial(embed_contexts, group=g), outputs=(context_vectors_of(g),), needs=(f"prepare-{g}",),
                    config=("rec.context_model", "rec.context_max_length"))
              for g in groups if context_stage(cfg, g)]
    stages.append(Stage("rec-cooccurrence", run=build_tables, outputs=(TABLES,), needs=(f"prepare-{POOL}", f"emotion-infer-{POOL}"),
                        config=("rec.beta", "rec.max_emotions"), version=4))
    stages.append(Stage("rec-train", run=train_recommender, outputs=(model(RECOMMENDER), report(RECOMMENDER), RECOMMENDER_CURVE),
                        config=TRAINING, version=8,
                        needs=("rec-cooccurrence", f"emotion-infer-{POOL}", *context_stage(cfg, POOL))))
    for g in groups:
        stages.append(Stage(f"rec-eval-{g}", run=partial(evaluate_group, group=g), outputs=(report(f"eval-{split_name(g)}"),),
                            needs=("rec-train", f"emotion-infer-{g}", *context_stage(cfg, g)),
                            config=("rec.auc_batch_size", "eval.intervals", "eval.baselines", "rec.recency_decay"), version=4))
    stages.append(Stage("rec-ablations", run=run_ablations, needs=(f"emotion-infer-{POOL}", *context_stage(cfg, POOL)),
                        config=(*TRAINING, "eval.intervals", "eval.baselines"), version=5,
                        optional=True,
                        outputs=(model(ABLATIONS), *ABLATION_REPORTS)))
    return stages
