"""Raw ReDial jsonl -> validated, turn-merged dialogues, with every bad line quarantined.

A dialogue is a plain dict (it travels through Ray Data as one row):
    conversation_id, source_file, line,
    utterances: [{role: 'seeker'|'recommender', text, movie_ids}], consecutive messages of one
                speaker merged, '@123' replaced by the movie title, HTML entities unescaped,
    movies: [{movie_id, title, feedback}] with feedback 1 like, 0 dislike, 2 not said (the
            seeker's questionnaire only, as ECR's code: the recommender's guess is not the user's word).
A Reject is {file, line, conversation_id, message, reason}; message is -1 when the whole dialogue
is quarantined, else the index of the quarantined raw message (an empty text).
"""
from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path
from typing import Mapping

from ecr_ray.data.titles import display_title

SEEKER, RECOMMENDER = "seeker", "recommender"
FEEDBACK_LIKE, FEEDBACK_DISLIKE, FEEDBACK_NOT_SAID = 1, 0, 2
MENTION = re.compile(r"@(\d+)")


MOVIES_FILE = "movies_with_mentions.csv"


class BadDialogue(ValueError):
    """One raw line that cannot be used; its message is the reason written to the rejects file."""


def load_movie_catalogue(raw_dir: str | Path) -> dict[str, str]:
    """ReDial movieId -> title from the official movies_with_mentions.csv (all 6,924 movies)."""
    with open(Path(raw_dir) / MOVIES_FILE, newline="", encoding="utf-8") as f:
        return {row["movieId"]: row["movieName"] for row in csv.DictReader(f)}


def read_dialogues(path: str | Path, catalogue: Mapping[str, str]) -> tuple[list[dict], list[dict]]:
    """All dialogues of one raw ReDial jsonl file, and the rejects (nothing valid is dropped)."""
    dialogues, rejects = [], []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                dialogue, empty = parse_dialogue(raw, catalogue)
            except BadDialogue as err:
                rejects.append(_reject(path, line_no, _conversation_id_of(raw), -1, str(err)))
                continue
            dialogue.update(source_file=str(path), line=line_no)
            dialogues.append(dialogue)
            rejects += [_reject(path, line_no, dialogue["conversation_id"], i, "empty text") for i in empty]
    return dialogues, rejects


def parse_dialogue(raw: bytes, catalogue: Mapping[str, str]) -> tuple[dict, list[int]]:
    """One raw line -> (dialogue, indices of messages quarantined for empty text)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadDialogue(f"not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadDialogue(f"truncated or invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise BadDialogue(f"expected a JSON object, got {type(record).__name__}")

    conversation_id = _field(record, "conversationId", (int, str))
    if not str(conversation_id).isdigit():
        raise BadDialogue(f"conversationId {conversation_id!r} is not a number")
    seeker = _field(record, "initiatorWorkerId", int)
    recommender = _field(record, "respondentWorkerId", int)
    titles = _mapping(record, "movieMentions")
    messages = _field(record, "messages", list)
    if not messages:
        raise BadDialogue("messages is empty")

    kept, empty = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadDialogue(f"messages[{i}] is not an object")
        sender = _field(message, "senderWorkerId", int, where=f"messages[{i}].")
        body = _field(message, "text", str, where=f"messages[{i}].")
        if sender not in (seeker, recommender):
            raise BadDialogue(f"messages[{i}].senderWorkerId {sender} is neither initiator nor respondent")
        if not body.strip():
            empty.append(i)
            continue
        for movie_id in MENTION.findall(body):
            if not (titles.get(movie_id) or catalogue.get(movie_id)):
                raise BadDialogue(f"messages[{i}] mentions unknown movie id @{movie_id}")
        kept.append((SEEKER if sender == seeker else RECOMMENDER, body))
    if not kept:
        raise BadDialogue("every message is empty")

    feedback = _feedback(_mapping(record, "initiatorQuestions"))
    mentioned = {m for _, body in kept for m in MENTION.findall(body)} | set(titles)
    movies = [
        {"movie_id": int(m), "title": display_title(titles.get(m) or catalogue.get(m) or ""), "feedback": feedback.get(m, FEEDBACK_NOT_SAID)}
        for m in sorted(mentioned, key=int)
    ]
    names = {str(m["movie_id"]): m["title"] for m in movies}
    return {"conversation_id": int(conversation_id), "utterances": _merge_turns(kept, names), "movies": movies}, empty


def _merge_turns(messages: list[tuple[str, str]], names: Mapping[str, str]) -> list[dict]:
    """Join consecutive messages of one speaker; '@123' becomes the title, its id is kept."""
    turns: list[dict] = []
    for role, body in messages:
        body = html.unescape(body).strip()
        movie_ids = [int(m) for m in MENTION.findall(body)]
        body = MENTION.sub(lambda m: names[m.group(1)], body)
        if turns and turns[-1]["role"] == role:
            turns[-1]["text"] += " " + body
            turns[-1]["movie_ids"] += movie_ids
        else:
            turns.append({"role": role, "text": body, "movie_ids": movie_ids})
    return turns


def _feedback(seeker_answers: Mapping) -> dict[str, int]:
    """movieId -> liked (1 like, 0 dislike, 2 not said) from the seeker's questionnaire."""
    out: dict[str, int] = {}
    for movie_id, answer in seeker_answers.items():
        liked = answer.get("liked") if isinstance(answer, dict) else None
        if liked in (FEEDBACK_LIKE, FEEDBACK_DISLIKE, FEEDBACK_NOT_SAID):
            out[str(movie_id)] = liked
    return out


def _field(record: dict, key: str, kind, where: str = ""):
    if key not in record:
        raise BadDialogue(f"missing field {where}{key}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadDialogue(f"field {where}{key} should be {names}, got {type(value).__name__}")
    return value


def _mapping(record: dict, key: str) -> dict:
    """ReDial writes an empty questionnaire or mention set as [] instead of {}."""
    value = record.get(key, {})
    if value == []:
        return {}
    if not isinstance(value, dict):
        raise BadDialogue(f"field {key} should be an object, got {type(value).__name__}")
    return value


def conversation_ids(path: str | Path) -> set[int]:
    """The conversationIds of a raw file, read cheaply (no validation)."""
    with open(path, "rb") as f:
        return {cid for raw in f if (cid := _conversation_id_of(raw)) is not None}


def _conversation_id_of(raw: bytes) -> int | None:
    m = re.search(rb'"conversationId"\s*:\s*"?(\d+)', raw)
    return int(m.group(1)) if m else None


def _reject(path, line: int, conversation_id, message: int, reason: str) -> dict:
    return {"file": str(path), "line": line, "conversation_id": conversation_id, "message": message, "reason": reason}
