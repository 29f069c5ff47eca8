"""`ecr-ray judge-check`: the judge's validity (each criterion's real reply against its perturbed one) on training-split
turns, so a judge model or prompt can be chosen without looking at the dev turns its scores are reported on."""
from __future__ import annotations

import hashlib

from ecr_ray.artifacts import POOL, read_rows, report
from ecr_ray.config import Config
from ecr_ray.rundir import RunDir

JUDGE_CHECK = report("judge-check")


def training_turns(cfg: Config, run_dir: RunDir) -> list[dict]:
    """A seeded sample of `eval.check_turns` training-split recommendation turns whose target is a KG item, one
    per dialogue (so the interval's resampling units are independent): {conversation_id, turn, context,
    target_title, reference}, in the shape `validity_asked` reads."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.rec.features import context_text

    kg, e, context_turns = load_kg(cfg.data.path(cfg.data.kg_dir)), cfg.eval, cfg.gen.context_turns
    first: dict[int, dict] = {}
    for t in sorted(read_rows(run_dir, POOL, "rec_turns"), key=lambda t: (t["conversation_id"], t["turn"])):
        if t["split"] == "train" and t["context"] and any(i >= 0 for i in t["target_items"]):
            first.setdefault(t["conversation_id"], t)
    chosen = sorted(first, key=lambda d: hashlib.sha256(f"{e.score_seed}:check:{d}".encode()).hexdigest())[: e.check_turns]
    return [{"conversation_id": d, "turn": t["turn"], "reference": t["response"],
             "context": context_text(t["context"][-context_turns:], t["context_roles"][-context_turns:]),
             "target_title": item_title(kg, next(i for i in t["target_items"] if i >= 0))}
            for d in sorted(chosen) for t in [first[d]]]


def judge_check(cfg: Config, run_dir: RunDir) -> dict:
    """The judge-check stage -> reports/judge-check.json (and its tables on stdout): both readings of every criterion
    (pairwise only for an in-process judge), and the validity of the readings `eval.readings` names."""
    from ecr_ray.eval.generation import judge_rows
    from ecr_ray.eval.judge import CRITERIA
    from ecr_ray.eval.judge_validity import in_use, judge_validity, pairwise_validity, readings, validity_asked, validity_table

    readings(cfg)  # a bad eval.readings fails before the judge runs
    sample = training_turns(cfg, run_dir)
    asked = validity_asked(cfg, run_dir, sample)
    results = judge_rows(cfg, run_dir, [x for rows in asked.values() for x in rows if x is not None])
    by_score, pairwise = {**judge_validity(cfg, sample, asked, results), "split": "train"}, None
    print(validity_table(by_score, cfg.eval.scorer), flush=True)
    if cfg.eval.scorer.base_url is None:  # an in-process judge is asked pairwise too (it reads the next token's P(A), P(B))
        from ecr_ray.eval.judge import LocalJudge

        judge = LocalJudge(cfg.eval.scorer.model, cfg.models.allow_download, threads=max(1, round(cfg.eval.score_pool.cpus)))
        pairwise = {**pairwise_validity(cfg, sample, asked, judge), "split": "train"}
        print(validity_table(pairwise, cfg.eval.scorer), flush=True)
    validity = in_use(cfg, by_score, pairwise)
    print(validity_table(validity, cfg.eval.scorer), flush=True)
    run_dir.write_json(JUDGE_CHECK, {"scorer": {"model": cfg.eval.scorer.model, "base_url": cfg.eval.scorer.base_url}, **validity})
    return {"valid": validity["valid"], "readings": validity["readings"],
            **{f"{c} by {r[c]['reading']}": r[c]["auc"] for r in (by_score, pairwise or {}) for c in CRITERIA if c in r}}
