"""Every run-directory path, and the typed readers and writers of what one stage hands to another.

A later stage (or serving) reads an earlier stage's output through here, never through its code.
Groups: `POOL` (the pool file, split into train/dev) and each `--split-file NAME`.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecr_ray.rundir import RunDir

POOL = "pool"

# prepared dialogues (data/)
PREPARED = ("dialogues", "rec_turns", "user_utterances")
REJECTS = "rejects.jsonl"
LINKING_REPORT = "reports/linking.json"

# emotions (emotion/)
ANNOTATIONS = "emotion/annotations"
ANNOTATION_CACHE = "cache/annotations"

# recommender (rec/)
TABLES = "rec/tables.npz"  # co-occurrence counts, emotion neighbours and node init of the training dialogues
RECOMMENDER_CURVE = "reports/recommender-curve.md"  # rec-train's learning curve (and the hybrid's fitted weight)
ABLATIONS = "ablations"  # the ablation variants' models: models/ablations/<variant>
ABLATION_REPORTS = ("reports/ablations.json", "reports/ablations.md", "reports/ablations.png")

# generation (gen/) and its evaluation (eval/)
SENTENCES, REVIEWS, RETRIEVAL = "gen/sentences", "gen/reviews", "gen/retrieval"
SCORE_CACHE = "cache/scores"
SIM_CACHE = "cache/simulation"  # each simulated dialogue by its key (sim/simulate.py `dialogue_keys`): a stopped run resumes
GENERATION_REPORTS = ("reports/generation.json", "reports/generation.md", "reports/generation.png", "reports/generation-examples.md")

# models: each folder holds its weights, its own metadata and the run's config it was trained with
TEACHER, CLASSIFIER, RECOMMENDER, STANCE = "teacher", "emotion_classifier", "recommender", "stance"
GENERATOR, GENERATOR_NO_RETRIEVAL = "generator", "generator-no-retrieval"
MODEL_CONFIG = "ecr_config.json"

TRAIN_STORAGE = "train"  # Ray Train's run folders (checkpoints to resume from)
SUMMARY, RUN_REPORT = "reports/summary.json", "reports/run.md"


def prepared(group: str, artifact: str) -> str:
    return f"prepared/{group}/{artifact}"


def utterance_emotions(group: str) -> str:
    return f"emotion/utterances/{group}"


def entity_stances(group: str) -> str:
    return f"emotion/stances/{group}"


def context_vectors_of(group: str) -> str:
    return f"rec/context/{group}"


def responses(variant: str, group: str) -> str:
    return f"gen/responses/{variant}/{group}"


def model(name: str) -> str:
    return f"models/{name}"


def report(name: str) -> str:
    return f"reports/{name}.json"


def split_name(group: str) -> str:
    """The name reports use: the pool is evaluated on its dev split."""
    return "dev" if group == POOL else group


def manifest(stage: str) -> str:
    return f"_stages/{stage}.json"


# --- readers and writers -------------------------------------------------------------------------

def read_rows(run: RunDir, group: str, artifact: str, columns: list[str] | None = None) -> list[dict]:
    """Prepared rows of a group: dialogues, rec_turns or user_utterances."""
    return run.read_table(prepared(group, artifact), columns=columns).to_pylist()


def _by_turn(run: RunDir, path: str, column: str) -> dict[tuple[int, int], list[float]]:
    t = run.read_table(path, columns=["conversation_id", "turn", column]).to_pydict()
    return dict(zip(zip(t["conversation_id"], t["turn"], strict=True), t[column], strict=True))


def emotion_probs(run: RunDir, group: str) -> dict[tuple[int, int], list[float]]:
    """(conversation_id, turn) -> the classifier's nine probabilities of that user utterance."""
    return _by_turn(run, utterance_emotions(group), "probs")


def stance_probs(run: RunDir, group: str) -> dict[tuple[int, int, int], list[float]]:
    """(conversation_id, turn, KG movie) -> the stance model's three probabilities for that movie in that user utterance."""
    t = run.read_table(entity_stances(group), columns=["conversation_id", "turn", "entity", "probs"]).to_pydict()
    return dict(zip(zip(t["conversation_id"], t["turn"], t["entity"], strict=True), t["probs"], strict=True))


def context_vectors(run: RunDir, group: str) -> dict[tuple[int, int], list[float]]:
    """(conversation_id, turn) -> the cached sentence embedding of that recommender turn's context."""
    return _by_turn(run, context_vectors_of(group), "context_vec")


def tables_bytes(tables: dict) -> bytes:
    """Sparse (torch COO) and dense tables by name as one .npz file."""
    import io

    arrays = {}
    for name, value in tables.items():
        if getattr(value, "is_sparse", False):
            value = value.coalesce()
            arrays.update({f"{name}.indices": value.indices().numpy(), f"{name}.values": value.values().numpy(),
                           f"{name}.shape": np.asarray(value.shape)})
        elif value is not None:
            arrays[name] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def tables_from_file(path: str | Path) -> dict:
    import torch

    with np.load(path) as f:
        arrays = dict(f)
    tables = {k: v for k, v in arrays.items() if "." not in k}
    for name in {k.split(".")[0] for k in arrays if "." in k}:
        tables[name] = torch.sparse_coo_tensor(arrays[f"{name}.indices"], arrays[f"{name}.values"],
                                               tuple(arrays[f"{name}.shape"]), is_coalesced=True, check_invariants=True)
    return tables


def write_tables(run: RunDir, tables: dict) -> None:
    run.write_bytes(TABLES, tables_bytes(tables))


def read_tables(run: RunDir) -> dict:
    """The recommender's tables of the pool's training dialogues (rec/cooccurrence.py)."""
    return tables_from_file(run.local_copy(TABLES))


def read_retrieval_base(run: RunDir) -> list[dict]:
    """Per item, the entities and KG triples its emotional review sentences name."""
    return run.read_table(RETRIEVAL).to_pylist()


class NotTrained(RuntimeError):
    """A run directory lacks a model that is asked for; the message names the command that trains it."""


def is_trained(run: RunDir, name: str) -> bool:
    """Whether models/<name> holds a finished model (its config is written with it, last)."""
    return run.exists(f"{model(name)}/{MODEL_CONFIG}")


def write_model_config(folder: str | Path, cfg) -> None:
    """The resolved run config beside a model's weights, so whoever loads it (serving) needs nothing else."""
    (Path(folder) / MODEL_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True))


def model_config(run: RunDir, name: str, overrides: Sequence[str] = ()):
    """The config a model was trained with (plus overrides), from its own folder; a saved config
    this version cannot read is refused naming its file."""
    from ecr_ray.config import ConfigError, load_config

    path = f"{model(name)}/{MODEL_CONFIG}"
    try:
        return load_config(None, overrides, base=run.read_json(path))
    except ConfigError as err:
        raise ConfigError(f"{run.uri}/{path}: {err}. If an older ecr-ray trained this model, re-train it with `ecr-ray run`") from None
