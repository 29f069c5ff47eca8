"""Grounded training targets: a review's emotional sentences rewritten into what the generator should say
for its prompt, so that one decode (the chat's) names the item and keeps to the knowledge it was shown.

A sentence naming a KG entity or a movie the prompt does not support (`Grounding`, the hallucination
metric's rule) is dropped; the first "this movie" / "the film" becomes the title when the title does not
come early (a decode of `max_new_tokens` must reach it); a review whose target does not name the title
within its first `EARLY_WORDS` words, or keeps no sentence, gives no example."""
from __future__ import annotations

import re

from ecr_ray.eval.text_metrics import mentions
from ecr_ray.gen.retrieval import Grounding

_THE_MOVIE = re.compile(r"\b(?:this|the) (?:movie|film)\b", re.IGNORECASE)
EARLY_WORDS = 40  # about 55 tokens: within the first half of a reply


def grounded_target(sentences: list[str], title: str, row: dict, grounding: Grounding) -> str | None:
    """The target for a prompt `row` {item, title, context, entity_ids, triple_ids, retrieval}, or None."""
    kept = [s for s in sentences if not grounding.named(s, row)[1]]
    text = " ".join(kept)
    if not _early(text, title):
        text = _THE_MOVIE.sub(title, text, count=1)
    return text if kept and _early(text, title) else None


def _early(text: str, title: str) -> bool:
    return mentions(" ".join(text.split()[:EARLY_WORDS + len(title.split())]), title)
