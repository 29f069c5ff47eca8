"""The one home of ECR's emotion labels and the GoEmotions mapping."""
from __future__ import annotations

from pathlib import Path

LABELS = ("like", "curious", "happy", "grateful", "negative", "neutral", "nostalgia", "agreement", "surprise")
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}
GOEMOTIONS_FILES = ("labels.txt", "train.tsv", "dev.tsv", "test.tsv")
MAX_LABELS = 2  # an utterance carries at most two emotions (the paper's annotation rule)

# GoEmotions' 28 labels -> ECR's nine. 'caring' (concern for someone) has no counterpart and is
# dropped; ECR's 'nostalgia' has no GoEmotions source, so the teacher never predicts it.
GOEMOTIONS_TO_ECR = {
    "admiration": "like", "love": "like", "desire": "like",
    "approval": "agreement",
    "curiosity": "curious", "confusion": "curious",
    "joy": "happy", "amusement": "happy", "excitement": "happy", "optimism": "happy", "relief": "happy", "pride": "happy",
    "gratitude": "grateful",
    "anger": "negative", "annoyance": "negative", "disappointment": "negative", "disapproval": "negative",
    "disgust": "negative", "sadness": "negative", "fear": "negative", "grief": "negative", "remorse": "negative",
    "embarrassment": "negative", "nervousness": "negative",
    "surprise": "surprise", "realization": "surprise",
    "neutral": "neutral",
    "caring": None,
}


def multi_hot(labels) -> list[float]:
    vector = [0.0] * len(LABELS)
    for label in labels:
        vector[LABEL_INDEX[label]] = 1.0
    return vector


def top_labels(probs, second_threshold: float) -> list[str]:
    """The most likely label, and the second when it is likely enough (at most MAX_LABELS)."""
    order = sorted(range(len(LABELS)), key=lambda i: -probs[i])
    return [LABELS[i] for n, i in enumerate(order[:MAX_LABELS]) if n == 0 or probs[i] >= second_threshold]


def read_goemotions(folder: str | Path, split: str) -> list[dict]:
    """GoEmotions rows mapped to ECR labels: {text, labels}; rows left with no label are dropped."""
    folder = Path(folder)
    names = (folder / GOEMOTIONS_FILES[0]).read_text().split()
    if set(names) != set(GOEMOTIONS_TO_ECR):
        raise ValueError(f"{folder}/labels.txt does not hold GoEmotions' 28 labels")
    rows = []
    for line in (folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
        text, ids, _ = line.split("\t")
        mapped = sorted({GOEMOTIONS_TO_ECR[names[int(i)]] for i in ids.split(",")} - {None}, key=LABEL_INDEX.get)
        if mapped:
            rows.append({"text": text, "labels": mapped})
    return rows


def kept_emotions(probs, beta: float, most: int) -> list[float]:
    """The paper's utterance emotions: the labels above probability `beta`, at most `most` of the most
    likely, with their probabilities; the others count zero. When none passes `beta` the top label is
    kept (ECR's fallback for a seeker utterance that names an entity: the classifier's labels are
    independent sigmoids, so all may be low)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[:most]
    kept = [0.0] * len(probs)
    for i in order:
        if probs[i] > beta:
            kept[i] = float(probs[i])
    if order and not any(kept):
        kept[order[0]] = float(probs[order[0]])
    return kept
