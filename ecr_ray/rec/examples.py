"""The recommender's examples of a group, read from the artifacts of earlier stages: prepared turns,
utterance emotions, cached context vectors and the emotion-related neighbours."""
from __future__ import annotations

from ecr_ray.artifacts import POOL, context_vectors, emotion_probs, read_neighbours, read_rows
from ecr_ray.config import Config
from ecr_ray.rundir import RunDir


def item_index(kg) -> dict[int, int]:
    """KG entity id of an item -> its index among the items (the recommender's output positions)."""
    return {int(e): i for i, e in enumerate(kg.item_ids)}


def load_examples(cfg: Config, run_dir: RunDir, group: str) -> tuple[list[dict], dict]:
    """Examples of a group (with context vectors on the cached path), sorted by dialogue and turn; skip counts."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.features import build_examples

    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    turns = sorted(read_rows(run_dir, group, "rec_turns"), key=lambda t: (t["conversation_id"], t["turn"]))
    rows, counts = build_examples(turns, emotion_probs(run_dir, group), item_index(kg), cfg.rec.max_entities)
    if cfg.rec.context_encoder == "minilm":
        vectors = context_vectors(run_dir, group)
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
    ids, weights = read_neighbours(run_dir)
    dim = len(rows[0]["context_vec"]) if rows and "context_vec" in rows[0] else 0
    meta = model_meta(str(cfg.data.path(cfg.data.kg_dir)), dim, ids, weights)
    return meta, [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "dev"], counts
