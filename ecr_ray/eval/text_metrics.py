"""Text metrics of generated responses: Dist-n, corpus BLEU, item mentions, hallucinated entities,
emotion intensity. Plain functions over lists of strings (and entity ids)."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from ecr_ray.data.linking import text_key
from ecr_ray.emotion.labels import LABELS

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all responses (corpus level)."""
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypotheses: list[str], references: list[str], max_n: int = 4) -> float:
    """Corpus BLEU with uniform weights over 1..max_n, brevity penalty, and epsilon 0.1 for empty orders."""
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = words(hyp), words(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = Counter(_ngrams(h, n)), Counter(_ngrams(r, n))
            matched[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0:
        return 0.0
    log_p = sum(math.log((m if m else 0.1) / t) if t else math.log(1e-9) for m, t in zip(matched, total, strict=True)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_p)


def mentions(response: str, title: str) -> bool:
    """The item's name (without its year or qualifier) appears in the response."""
    key = text_key(title)
    return bool(key) and f" {key} " in f" {text_key(response)} "


def emotion_intensity(probs: np.ndarray) -> float:
    """Mean over responses of the strongest non-neutral emotion probability (the classifier's sigmoid)."""
    if not len(probs):
        return 0.0
    return float(np.delete(np.asarray(probs), LABELS.index("neutral"), axis=1).max(axis=1).mean())


def text_metrics(rows: list[dict], probs: np.ndarray) -> dict:
    """rows {response, reference, title, named, unsupported, wrong_titles (the KG entities named besides the item,
    those the prompt does not support, and the movies among those: `gen.retrieval.Grounding`)}; probs: the
    classifier on each response."""
    responses = [r["response"] for r in rows]
    named = sum(len(r["named"]) for r in rows)
    wrong = [r["unsupported"] for r in rows]
    return {
        "responses": len(rows),
        "dist-1": distinct(responses, 1), "dist-2": distinct(responses, 2),
        "bleu-1": bleu(responses, [r["reference"] for r in rows], 1),
        "bleu-2": bleu(responses, [r["reference"] for r in rows], 2),
        "bleu-4": bleu(responses, [r["reference"] for r in rows], 4),
        "item_mention_rate": float(np.mean([mentions(r["response"], r["title"]) for r in rows])) if rows else 0.0,
        "entities_named_per_response": named / max(len(rows), 1),
        "hallucination_rate": sum(map(len, wrong)) / named if named else 0.0,
        "responses_with_hallucination": float(np.mean([bool(w) for w in wrong])) if rows else 0.0,
        "responses_with_wrong_title": float(np.mean([bool(r["wrong_titles"]) for r in rows])) if rows else 0.0,
        "emotion_intensity": emotion_intensity(probs),
        "mean_words": float(np.mean([len(words(t)) for t in responses])) if rows else 0.0,
    }
