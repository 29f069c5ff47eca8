"""The recommender's examples of a group, read from the artifacts of earlier stages: prepared turns,
utterance emotions, cached context vectors and the tables of the training dialogues."""
from __future__ import annotations

from typing import NamedTuple

from ecr_ray.artifacts import POOL, context_vectors, emotion_probs, read_rows, read_tables, stance_probs
from ecr_ray.config import Config
from ecr_ray.rundir import RunDir


class TrainingInputs(NamedTuple):
    meta: dict  # for build_recommender: KG, context size, the counted dialogues' tables
    train: list[dict]  # examples of the counted (training) dialogues
    held_out: list[dict]  # examples of the others, never counted
    own: dict  # conversation_id -> what a counted dialogue put into the tables (subtracted for its examples)
    pretrain: list[dict]  # entity-prediction examples of the counted dialogues (rec/pretrain.py)
    entities: dict  # conversation_id -> a counted dialogue's entities (the node initialisation counts them)


def feeling_stages(cfg: Config, group: str) -> tuple[str, ...]:
    """The stages whose outputs `user_feelings` reads."""
    return (f"emotion-infer-{group}", *((f"stance-infer-{group}",) if cfg.rec.entity_stance else ()))


def user_feelings(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The users' emotions of a group: per utterance and, with `rec.entity_stance`, per movie it names (rec.features.with_stances)."""
    from ecr_ray.rec.features import with_stances

    probs = emotion_probs(run_dir, group)
    return with_stances(probs, stance_probs(run_dir, group)) if cfg.rec.entity_stance else probs


def load_examples(cfg: Config, run_dir: RunDir, group: str) -> tuple[list[dict], dict]:
    """Examples of a group (with context vectors on the cached path), sorted by dialogue and turn; skip counts."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.features import build_examples, item_index

    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    turns = sorted(read_rows(run_dir, group, "rec_turns"), key=lambda t: (t["conversation_id"], t["turn"]))
    rows, counts = build_examples(turns, user_feelings(cfg, run_dir, group), item_index(kg), cfg.rec)
    if cfg.rec.context_encoder == "minilm":
        vectors = context_vectors(run_dir, group)
        missing = sum((row["conversation_id"], row["turn"]) not in vectors for row in rows)
        if missing:
            raise RuntimeError(f"{missing} examples of {group} have no cached context embedding; re-run rec-context-{group} with --force")
        for row in rows:
            row["context_vec"] = vectors[(row["conversation_id"], row["turn"])]
    return rows, counts


def training_inputs(cfg: Config, rows: list[dict], dialogues: list[dict], probs: dict, counted: set[int], tables: dict | None = None) -> TrainingInputs:
    """Examples split by whether their dialogue is `counted` (the training dialogues), with the tables
    of the counted dialogues (computed unless given) and their own contributions."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.checkpoint import model_meta
    from ecr_ray.rec.cooccurrence import cooccurrence_tables, dialogue_entities, own_contributions
    from ecr_ray.rec.features import item_index
    from ecr_ray.rec.pretrain import entity_examples

    kg_dir = cfg.data.path(cfg.data.kg_dir)
    kg = load_kg(kg_dir)
    counted_dialogues, index = [d for d in dialogues if d["conversation_id"] in counted], item_index(kg)
    if tables is None:
        tables, _ = cooccurrence_tables(counted_dialogues, probs, kg, index, cfg.rec)
    dim = len(rows[0]["context_vec"]) if rows and "context_vec" in rows[0] else 0
    return TrainingInputs(model_meta(str(kg_dir), dim, tables), [r for r in rows if r["conversation_id"] in counted],
                          [r for r in rows if r["conversation_id"] not in counted],
                          own_contributions(counted_dialogues, probs, index, cfg.rec),
                          entity_examples(counted_dialogues, probs, cfg.rec, dim) if cfg.rec.pretrain_epochs else [],
                          {d["conversation_id"]: dialogue_entities(d) for d in counted_dialogues})


def model_inputs(cfg: Config, run_dir: RunDir) -> tuple[TrainingInputs, dict]:
    """The pool's training inputs (train split counted, dev held out; the tables of rec-cooccurrence)
    and the example counts."""
    rows, counts = load_examples(cfg, run_dir, POOL)
    dialogues = read_rows(run_dir, POOL, "dialogues")
    counted = {d["conversation_id"] for d in dialogues if d["split"] == "train"}
    return training_inputs(cfg, rows, dialogues, user_feelings(cfg, run_dir, POOL), counted, read_tables(run_dir)), counts
