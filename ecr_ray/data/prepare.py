"""Preparing a raw ReDial file: validated, linked dialogues (Ray Data) -> turns.

The pool is split into train/dev by a hash of conversationId; each extra raw file (`--split-file
test=PATH`) is its own group. Artifacts under prepared/<group>/: dialogues/, rec_turns/,
user_utterances/ (parquet, explicit schemas) and rejects.jsonl.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from ecr_ray.artifacts import POOL, REJECTS, prepared
from ecr_ray.config import Config
from ecr_ray.data.linking import DialogueLinker, mention_coverage
from ecr_ray.data.redial import conversation_ids, load_movie_catalogue, read_dialogues
from ecr_ray.data.turns import (
    REC_TURN_SCHEMA,
    USER_UTTERANCE_SCHEMA,
    flat_mapper,
    rec_turns,
    user_utterances,
)
from ecr_ray.data.kg import KG_FILES
from ecr_ray.data.redial import MOVIES_FILE
from ecr_ray.raytools import connect, map_actors
from ecr_ray.rundir import RunDir
from ecr_ray.stage import file_digest, files_digest

class RejectsExceeded(RuntimeError):
    """Too much of an input file was quarantined to trust the rest."""


def split_of(conversation_id: int, dev_fraction: float, seed: int) -> str:
    """'train' or 'dev', fixed by the id and the seed alone (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    return "dev" if int.from_bytes(digest[:8], "big") / 2**64 < dev_fraction else "train"


def inputs_key(cfg: Config) -> dict:
    """What every prepare stage reads besides its own file: the KG and the movie catalogue."""
    return {"kg": files_digest(cfg.data.path(cfg.data.kg_dir), KG_FILES),
            "movies": file_digest(cfg.data.path(cfg.data.movies_dir) / MOVIES_FILE)}


def read_group(cfg: Config, group: str, path: Path) -> tuple[list[dict], list[dict]]:
    """Validated dialogues of one group with their split assigned, and the rejects."""
    if not path.exists():
        raise FileNotFoundError(f"raw ReDial file for split {group!r} not found: {path}")
    dialogues, rejects = read_dialogues(path, load_movie_catalogue(cfg.data.path(cfg.data.movies_dir)))
    bad_lines = len({r["line"] for r in rejects if r["message"] == -1})
    lines = bad_lines + len(dialogues)
    if lines and bad_lines / lines > cfg.data.max_reject_fraction:
        raise RejectsExceeded(
            f"{path}: {bad_lines} of {lines} lines quarantined ({bad_lines / lines:.1%}) > "
            f"data.max_reject_fraction={cfg.data.max_reject_fraction}; first: line {rejects[0]['line']}: {rejects[0]['reason']}"
        )
    if group == POOL:
        dialogues.sort(key=lambda d: d["conversation_id"])
        if cfg.data.max_dialogues is not None:
            dialogues = dialogues[: cfg.data.max_dialogues]
        for d in dialogues:
            d["split"] = split_of(d["conversation_id"], cfg.data.dev_fraction, cfg.data.split_seed)
    else:
        for d in dialogues:
            d["split"] = group
    return dialogues, rejects


def link_dialogues(cfg: Config, dialogues: list[dict]):
    """A materialized Ray Dataset of linked dialogues (DIALOGUE_SCHEMA)."""
    import ray

    connect(cfg.ray)
    pool = cfg.data.link_pool
    blocks = max(1, min(len(dialogues) // pool.batch_size, 4 * pool.actors))
    ds = ray.data.from_items(dialogues, override_num_blocks=blocks)
    return map_actors(ds, DialogueLinker, {"kg_dir": str(cfg.data.path(cfg.data.kg_dir))}, pool).materialize()


def pool_overlap(cfg: Config, group: str, dialogues: list[dict]) -> set[int]:
    """The conversationIds a named split shares with the pool dialogues the models train on; refused (an
    error naming them) unless `data.allow_pool_overlap`: evaluating on training dialogues flatters every figure."""
    pool = sorted(conversation_ids(cfg.data.path(cfg.data.pool_file)))[: cfg.data.max_dialogues]
    overlap = {d["conversation_id"] for d in dialogues} & set(pool)
    if overlap and not cfg.data.allow_pool_overlap:
        shown = ", ".join(map(str, sorted(overlap)[:20])) + (", ..." if len(overlap) > 20 else "")
        raise ValueError(f"split {group!r} shares {len(overlap)} dialogues with the training pool ({cfg.data.pool_file}): "
                         f"conversationId {shown}; remove them, or set data.allow_pool_overlap=true to evaluate anyway")
    if overlap:
        print(f"WARNING: {len(overlap)} dialogues of split {group!r} are also in the training pool, "
              f"e.g. conversationId {min(overlap)} (data.allow_pool_overlap)", flush=True)
    return overlap


def prepare_group(cfg: Config, run_dir: RunDir, group: str, path: Path) -> dict:
    dialogues, rejects = read_group(cfg, group, path)
    overlap = pool_overlap(cfg, group, dialogues) if group != POOL else None  # refused before any work
    run_dir.write_jsonl(prepared(group, REJECTS), rejects)
    if not dialogues:
        raise RejectsExceeded(f"{path}: no valid dialogue")
    linked = link_dialogues(cfg, dialogues)
    linked.write_parquet(run_dir.location(prepared(group, "dialogues")))
    linked.map_batches(flat_mapper(rec_turns, REC_TURN_SCHEMA), batch_format="pyarrow").write_parquet(
        run_dir.location(prepared(group, "rec_turns"))
    )
    linked.map_batches(flat_mapper(user_utterances, USER_UTTERANCE_SCHEMA), batch_format="pyarrow").write_parquet(
        run_dir.location(prepared(group, "user_utterances"))
    )
    summary = {"file": str(path), **({"overlap_with_pool": len(overlap)} if overlap is not None else {})}
    return {**summary, "rejected_lines": len({r["line"] for r in rejects if r["message"] == -1}),
            "rejected_messages": sum(r["message"] >= 0 for r in rejects), **dialogue_stats(linked.take_all())}


def dialogue_stats(dialogues: list[dict]) -> dict:
    """Counts for the stage summary and the README."""
    turns = [t for d in dialogues for t in rec_turns(d)]
    coverage = mention_coverage(dialogues)
    return {
        "dialogues": dict(sorted(Counter(d["split"] for d in dialogues).items())),
        "utterances": sum(len(d["utterances"]) for d in dialogues),
        "user_utterances": sum(u["role"] == "seeker" for d in dialogues for u in d["utterances"]),
        "rec_turns": len(turns),
        "rec_turns_with_target": sum(any(i >= 0 for i in t["target_items"]) for t in turns),
        "entities_per_rec_turn": round(sum(len(t["entities"]) for t in turns) / max(len(turns), 1), 2),
        "movie_mentions": coverage["mentions"],
        "movie_mentions_linked": coverage["linked_share"],
    }
