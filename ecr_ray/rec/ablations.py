"""The paper's ablations (each emotion part left out in turn) beside the training-free baselines,
cross-validated over the pool's dialogues: for each of `rec.cv_folds` folds, the tables and models come
from the other folds' dialogues and every system ranks the fold's examples, so each pool example is
scored once by each system. A hybrid model is scored whole, as its learned part alone (the paper
variant: the ablations are read there) and, for full ECR, as its channels alone (what the learned part
adds; `rec.cv_emotion_ablations: false` trains full ECR alone). The variants read each entity's emotions
ECR's way; with `rec.cv_entity_stance`, full ECR is trained again reading each named movie's own stance
(stance-infer-pool), compared on all examples and on those whose context names a disliked movie; each of
`rec.cv_also` trains full ECR again with other knobs (a width, a rate), paired against it, the channels alone
and co-occurrence on the same folds. Metrics with 95% intervals over dialogues, and paired differences
(same resamples): reports/ablations.{json,md,png}."""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from ecr_ray.artifacts import ABLATION_REPORTS, ABLATIONS, POOL, model, read_rows
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
STANCE = "full ECR + entity stance"  # `rec.cv_entity_stance`: each named movie's own stance (emotion/stance.py), not the utterance's
COMPARED = (("full ECR", "channels alone"), ("full ECR" + PAPER, "co-occurrence"), ("full ECR", "co-occurrence + copy"),
            *(("full ECR" + PAPER, name + PAPER) for name in VARIANTS if name != "full ECR"),
            (STANCE, "full ECR"), (STANCE + PAPER, "full ECR" + PAPER))
DISLIKED_CONTEXT = " (contexts naming a movie the seeker disliked)"  # the stance comparison again on those examples
ALSO = "full ECR, {}"  # `rec.cv_also`: full ECR with other knobs, on the same folds


def also_trained(rec) -> dict[str, object]:
    """`rec.cv_also` as {system name: its RecConfig}: full ECR (ECR's emotion reading) with each label's changes merged in."""
    from ecr_ray.config import with_changes

    base = dataclasses.replace(rec, cv_also={}, **VARIANTS["full ECR"], entity_stance=False)
    out = {}
    for label, changes in rec.cv_also.items():
        if not isinstance(changes, dict) or not changes or "entity_stance" in changes or "cv_also" in changes:
            raise ValueError(f"rec.cv_also[{label!r}] must map rec knobs other than entity_stance and cv_also to new values, got {changes!r}")
        out[ALSO.format(label)] = with_changes(base, changes, "rec.")
    return out


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
    from ecr_ray.rec.examples import load_examples, training_inputs, user_feelings
    from ecr_ray.rec.train import fit_recommender
    from ecr_ray.report import comparison_chart, comparison_table

    # each trained system: its config and the examples it reads. The variants read each entity's emotions ECR's way (the
    # utterance's, reading False); the stance variant each named movie's own stance (True); a `rec.cv_also` system its own
    # (its knobs may shape the examples). Every reading must give the same examples: they differ in what they carry.
    trained = {name: (dataclasses.replace(cfg.rec, **flags, entity_stance=False), False) for name, flags in VARIANTS.items()
               if cfg.rec.cv_emotion_ablations or name == "full ECR"}
    if cfg.rec.cv_entity_stance:
        trained[STANCE] = (dataclasses.replace(cfg.rec, **VARIANTS["full ECR"], entity_stance=True), True)
    also = also_trained(cfg.rec)
    trained.update({name: (rcfg, name) for name, rcfg in also.items()})
    readings = {False: dataclasses.replace(cfg, rec=dataclasses.replace(cfg.rec, entity_stance=False)),
                **{r: dataclasses.replace(cfg, rec=rcfg) for rcfg, r in trained.values() if r is not False}}
    rows = {r: load_examples(c, run_dir, POOL)[0] for r, c in readings.items()}
    key = lambda r: (r["conversation_id"], r["turn"], r["item"])  # noqa: E731
    for r in rows:
        if list(map(key, rows[r])) != list(map(key, rows[False])):
            raise RuntimeError(f"the {'stance' if r is True else repr(r)} reading changed which examples there are: every "
                               "system must rank the same examples")
    dialogues = read_rows(run_dir, POOL, "dialogues")
    feelings = {r: user_feelings(c, run_dir, POOL) for r, c in readings.items()}
    probs = feelings[False]
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    everyone = {d["conversation_id"] for d in dialogues}
    held_rows, ranked, effects = [], {}, []
    for f, held in enumerate(folds(everyone, cfg.rec.cv_folds)):
        inputs = {r: training_inputs(c, rows[r], dialogues, feelings[r], everyone - held) for r, c in readings.items()}
        held_rows += inputs[False].held_out
        for kind, result in baseline_ranks(inputs[False].train, inputs[False].meta["tables"]["items"], inputs[False].held_out, kg, cfg.rec,
                                           cfg.eval).items():
            ranked.setdefault(kind, []).append(result)
        for name, (rcfg, reading) in trained.items():
            given = inputs[reading]
            folder = f"{ABLATIONS}/fold-{f}/{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
            print(f"[rec-ablations] fold {f + 1}/{cfg.rec.cv_folds}: training {name!r}", flush=True)
            fit_recommender(cfg, rcfg, folder, given, run_dir)
            recommender, info = load_recommender(run_dir.local_copy(model(folder)), rcfg)
            if name == "full ECR":
                effects.append(part_effects(recommender, given.held_out, rcfg))
            labels = {rcfg.variant: name, "paper": name + PAPER, "channels alone": "channels alone" if name == "full ECR" else None}
            for part, ranks in variant_ranks(recommender, given.held_out, rcfg, info).items():
                if labels[part]:  # the channels alone once: full ECR's
                    ranked.setdefault(labels[part], []).append(ranks)
    joined = {name: tuple(np.concatenate(part) for part in zip(*parts, strict=True)) for name, parts in ranked.items()}
    paired = [(a, b) for a, b in (*COMPARED, *((name + part, "full ECR" + part) for name in also for part in ("", PAPER)),
                                  *(pair for name in also for pair in ((name, "channels alone"), (name + PAPER, "co-occurrence"))))
              if a in joined and b in joined]  # the targets
    print(f"[rec-ablations] scoring {len(joined)} systems and {len(paired)} paired differences on {len(held_rows)} examples, "
          f"{cfg.eval.intervals.samples} resamples each", flush=True)
    results = {name: reported_metrics(*joined[name], held_rows, cfg.rec.auc_batch_size, cfg.eval.intervals) for name in joined}
    differences = {f"{a} − {b}": reported_metrics(*joined[a], held_rows, cfg.rec.auc_batch_size, cfg.eval.intervals, minus=joined[b])
                   for a, b in paired}
    if STANCE in joined:  # where it matters most: the context names a movie the seeker said (questionnaire) they disliked
        hated = disliked_context(held_rows, dialogues)
        subset = lambda ranks: tuple(part[hated] for part in ranks)  # noqa: E731
        chosen = [r for r, h in zip(held_rows, hated, strict=True) if h]
        differences.update({f"{a} − {b}{DISLIKED_CONTEXT}": reported_metrics(*subset(joined[a]), chosen, cfg.rec.auc_batch_size, cfg.eval.intervals,
                                                                              minus=subset(joined[b]))
                            for a, b in COMPARED[-2:] if chosen})
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


def disliked_context(rows: list[dict], dialogues: list[dict]) -> np.ndarray:
    """Per example, whether its context names a movie the seeker's questionnaire says they disliked."""
    from ecr_ray.data.redial import FEEDBACK_DISLIKE

    disliked = {d["conversation_id"]: {m["item"] for m in d["movies"] if m["feedback"] == FEEDBACK_DISLIKE and m.get("item") is not None}
                for d in dialogues}
    return np.array([bool(disliked[r["conversation_id"]] & set(r["entities"])) for r in rows], dtype=bool)


def diagnostics_table(diagnostics: dict) -> str:
    """Each diagnostic as a row of a markdown table: what it reads, its value."""
    cell = lambda v: ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else "" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [f"| {part}: {k} | {cell(v)} |"
            for part, values in diagnostics.items() for k, v in values.items()]
    return "\n".join(["| diagnostic | value |", "|---|---:|", *rows]) + "\n"
