"""How well linking works: movie-mention coverage on the pool, and entity P/R/F1 against UniCRS.

UniCRS published, for 1,000 train-split dialogues, the KG entities in the context of every
recommender turn (`unicrs_turns_file`); the raw dialogues are `unicrs_dialogues_file`. Rows are
grouped per dialogue (a row whose context does not grow starts the next one) and compared turn by
turn with our rec_turns; micro-averaged over turns, for movie items and other entities apart.
"""
from __future__ import annotations

import json

from ecr_ray.artifacts import LINKING_REPORT, POOL, read_rows
from ecr_ray.config import Config
from ecr_ray.data.kg import load_kg
from ecr_ray.data.linking import DialogueLinker, mention_coverage
from ecr_ray.data.redial import load_movie_catalogue, read_dialogues
from ecr_ray.data.turns import rec_turns
from ecr_ray.rundir import RunDir


def write_linking_report(cfg: Config, run_dir: RunDir) -> dict:
    coverage = mention_coverage(read_rows(run_dir, POOL, "dialogues"))
    report = {"pool": coverage, "vs_unicrs": compare_with_unicrs(cfg)}
    run_dir.write_json(LINKING_REPORT, report)
    every = report["vs_unicrs"]["all"]
    return {"movie_mentions_linked": coverage["linked_share"], "entity_precision": every["precision"],
            "entity_recall": every["recall"], "entity_f1": every["f1"], "report": run_dir.location(LINKING_REPORT)}


def compare_with_unicrs(cfg: Config) -> dict:
    kg_dir = cfg.data.path(cfg.data.kg_dir)
    items = load_kg(kg_dir).item_set
    linker = DialogueLinker(str(kg_dir))
    dialogues, _ = read_dialogues(cfg.data.path(cfg.data.unicrs_dialogues_file), load_movie_catalogue(cfg.data.path(cfg.data.movies_dir)))
    groups = _unicrs_dialogues(cfg.data.path(cfg.data.unicrs_turns_file))
    counts = {kind: [0, 0, 0] for kind in ("items", "other")}  # true pos, false pos, false neg
    aligned = turns_compared = 0
    for dialogue, gold_turns in zip(dialogues, groups):
        ours = list(rec_turns({**linker.link_dialogue(dialogue), "split": "unicrs"}))
        if len(ours) != len(gold_turns):
            continue
        aligned += 1
        for turn, gold in zip(ours, gold_turns):
            turns_compared += 1
            mine, theirs = set(turn["entities"]), set(gold)
            for entity in mine | theirs:
                c = counts["items" if entity in items else "other"]
                c[0 if entity in mine and entity in theirs else 1 if entity in mine else 2] += 1
    counts["all"] = [a + b for a, b in zip(counts["items"], counts["other"])]
    return {"dialogues": len(dialogues), "aligned_dialogues": aligned, "turns": turns_compared,
            **{kind: _prf(*c) for kind, c in counts.items()}}


def _unicrs_dialogues(path) -> list[list[list[int]]]:
    """Per dialogue, the entity list of each recommender turn."""
    groups: list[list[list[int]]] = []
    previous = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if previous is None or len(row["context"]) <= previous:
                groups.append([])
            groups[-1].append(row["entity"])
            previous = len(row["context"])
    return groups


def _prf(tp: int, fp: int, fn: int) -> dict:
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-9), 4), "tp": tp, "fp": fp, "fn": fn}
