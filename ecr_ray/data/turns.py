"""Linked dialogues -> model-ready rows: one per recommender turn, one per seeker utterance.

Plain functions of one dialogue (testable without Ray); `to_table` gives a batch its explicit
pyarrow schema so every parquet part of a split has the same columns and types.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import pyarrow as pa

from ecr_ray.data.redial import RECOMMENDER, SEEKER

_COMMON = [
    pa.field("split", pa.string()),
    pa.field("conversation_id", pa.int64()),
    pa.field("turn", pa.int32(), metadata={"doc": "index of the utterance in the turn-merged dialogue"}),
    pa.field("context", pa.list_(pa.string()), metadata={"doc": "earlier utterances, titles in place of @ids"}),
    pa.field("context_roles", pa.list_(pa.string())),
]
DIALOGUE_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string()),
        pa.field("conversation_id", pa.int64()),
        pa.field("source_file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("utterances", pa.list_(pa.struct([
            ("role", pa.string()), ("text", pa.string()),
            ("movie_ids", pa.list_(pa.int64())), ("entities", pa.list_(pa.int64())),
        ]))),
        pa.field("movies", pa.list_(pa.struct([
            ("movie_id", pa.int64()), ("title", pa.string()), ("feedback", pa.int8()), ("item", pa.int64()),
        ]))),
    ]
)
REC_TURN_SCHEMA = pa.schema(
    _COMMON
    + [
        pa.field("response", pa.string()),
        pa.field("entities", pa.list_(pa.int64()), metadata={"doc": "KG entities mentioned so far, by latest mention"}),
        pa.field("entity_turns", pa.list_(pa.int32()), metadata={"doc": "index in context of the latest mention"}),
        pa.field("target_movie_ids", pa.list_(pa.int64())),
        pa.field("target_items", pa.list_(pa.int64()), metadata={"doc": "KG item per target movie, -1 if not in the KG"}),
        pa.field("target_feedback", pa.list_(pa.int8()), metadata={"doc": "1 like, 0 dislike, 2 not said"}),
    ]
)
USER_UTTERANCE_SCHEMA = pa.schema(
    _COMMON
    + [
        pa.field("utterance_id", pa.string(), metadata={"doc": "'<conversation_id>:<turn>'"}),
        pa.field("text", pa.string()),
        pa.field("entities", pa.list_(pa.int64())),
        pa.field("movie_ids", pa.list_(pa.int64())),
    ]
)
NO_ITEM = -1


def rec_turns(dialogue: dict) -> Iterator[dict]:
    """One row per recommender turn: its context, the entities met so far and its target items."""
    movies = {m["movie_id"]: m for m in dialogue["movies"]}
    latest: dict[int, int] = {}  # entity -> index of the utterance that last mentioned it
    utterances = dialogue["utterances"]
    for turn, utterance in enumerate(utterances):
        if utterance["role"] == RECOMMENDER:
            targets = list(dict.fromkeys(utterance["movie_ids"]))
            yield {
                **_common(dialogue, turn),
                "response": utterance["text"],
                "entities": list(latest),
                "entity_turns": list(latest.values()),
                "target_movie_ids": targets,
                "target_items": [_item(movies[m]) for m in targets],
                "target_feedback": [movies[m]["feedback"] for m in targets],
            }
        for entity in utterance["entities"]:
            latest.pop(entity, None)
            latest[entity] = turn


def user_utterances(dialogue: dict) -> Iterator[dict]:
    """One row per seeker utterance, with its context (the emotion stage labels these)."""
    for turn, utterance in enumerate(dialogue["utterances"]):
        if utterance["role"] == SEEKER:
            yield {
                **_common(dialogue, turn),
                "utterance_id": f"{dialogue['conversation_id']}:{turn}",
                "text": utterance["text"],
                "entities": list(utterance["entities"]),
                "movie_ids": list(utterance["movie_ids"]),
            }


def _common(dialogue: dict, turn: int) -> dict:
    earlier = dialogue["utterances"][:turn]
    return {
        "split": dialogue["split"],
        "conversation_id": dialogue["conversation_id"],
        "turn": turn,
        "context": [u["text"] for u in earlier],
        "context_roles": [u["role"] for u in earlier],
    }


def _item(movie: dict) -> int:
    return NO_ITEM if movie.get("item") is None else movie["item"]


def to_table(rows: Iterable[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def flat_mapper(build: Callable[[dict], Iterable[dict]], schema: pa.Schema) -> Callable[[pa.Table], pa.Table]:
    """A Ray Data batch function (pyarrow in, pyarrow out) applying `build` to every dialogue."""

    def apply(batch: pa.Table) -> pa.Table:
        return to_table((row for dialogue in batch.to_pylist() for row in build(dialogue)), schema)

    return apply
