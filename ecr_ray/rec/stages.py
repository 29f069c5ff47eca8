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

from ecr_ray.artifacts import (ABLATION_REPORTS, ABLATIONS, POOL, RECOMMENDER, RECOMMENDER_CURVE, TABLES, context_vectors_of, model, read_rows,
                               report, split_name, write_tables)
from ecr_ray.config import Config, RecConfig, cv_knobs
from ecr_ray.rec.ablations import run_ablations
from ecr_ray.rec.context import context_stage, embed_contexts
from ecr_ray.rec.evaluate import evaluate_group
from ecr_ray.rec.examples import feeling_stages, user_feelings
from ecr_ray.rec.train import train_recommender
from ecr_ray.rundir import RunDir
from ecr_ray.stage import Stage

TRAINING = ("rec", "models.allow_download")  # what decides a trained recommender


def rec_stages(cfg: Config) -> list[Stage]:
    groups = [POOL, *sorted(cfg.data.split_files)]
    stages = [Stage(f"rec-context-{g}", run=partial(embed_contexts, group=g), outputs=(context_vectors_of(g),), needs=(f"prepare-{g}",),
                    config=("rec.context_model", "rec.context_max_length"))
              for g in groups if context_stage(cfg, g)]
    stages.append(Stage("rec-cooccurrence", run=build_tables, outputs=(TABLES,), needs=(f"prepare-{POOL}", *feeling_stages(cfg, POOL)),
                        config=("rec.beta", "rec.max_emotions", "rec.entity_stance"), version=4))
    stages.append(Stage("rec-train", run=train_recommender, outputs=(model(RECOMMENDER), report(RECOMMENDER), RECOMMENDER_CURVE),
                        config=TRAINING, version=9,
                        needs=("rec-cooccurrence", *feeling_stages(cfg, POOL), *context_stage(cfg, POOL))))
    for g in groups:
        stages.append(Stage(f"rec-eval-{g}", run=partial(evaluate_group, group=g), outputs=(report(f"eval-{split_name(g)}"),),
                            needs=("rec-train", *feeling_stages(cfg, g), *context_stage(cfg, g)),
                            config=("rec.auc_batch_size", "eval.intervals", "eval.baselines", "rec.recency_decay"), version=4))
    stance = ("stance-infer-pool",) if cfg.rec.cv_entity_stance and not cfg.rec.entity_stance else ()
    stages.append(Stage("rec-ablations", run=run_ablations, needs=(*feeling_stages(cfg, POOL), *stance, *context_stage(cfg, POOL)),
                        config=(*TRAINING, *cv_knobs(RecConfig, "rec"), "eval.intervals", "eval.baselines"), version=6,
                        optional=True,
                        outputs=(model(ABLATIONS), *ABLATION_REPORTS)))
    return stages


def build_tables(cfg: Config, run_dir: RunDir) -> dict:
    """The rec-cooccurrence stage: the tables of the pool's training dialogues -> rec/tables.npz."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.cooccurrence import cooccurrence_tables
    from ecr_ray.rec.features import item_index

    dialogues = [d for d in read_rows(run_dir, POOL, "dialogues") if d["split"] == "train"]
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    tables, stats = cooccurrence_tables(dialogues, user_feelings(cfg, run_dir, POOL), kg, item_index(kg), cfg.rec)
    write_tables(run_dir, tables)
    return stats
