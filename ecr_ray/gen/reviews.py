"""Movie reviews -> sentences -> KG entities -> emotional sentences -> a retrieval base by item.

`read_reviews` reads ECR's review rows (with the seeker utterance they answer) and the extra
reviews; `ReviewSentences` is the Ray Data UDF that links a review's movie to its KG item and each
sentence to KG entities; the emotion classifier then scores every sentence (`EmotionPredictor`);
`review_knowledge` keeps the emotional sentences and the KG triples that join the item to them.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from ecr_ray.artifacts import RETRIEVAL, REVIEWS, SENTENCES, report
from ecr_ray.config import Config
from ecr_ray.data.kg import KnowledgeGraph, load_kg
from ecr_ray.data.linking import TextEntityLinker
from ecr_ray.data.titles import MovieLinker
from ecr_ray.emotion.labels import LABELS
from ecr_ray.rundir import RunDir

# a sentence ends at . ! ? before a space or before a capital with no space ("great.I loved"), or at a line break
_SENTENCE_END = re.compile(r"\s*\n\s*|(?<=[.!?])\s+|(?<=[a-z][.!?])(?=[A-Z])|<br\s*/?>")
_NEUTRAL = LABELS.index("neutral")
SENTENCE_SCHEMA = pa.schema([
    ("review_id", pa.string()), ("source", pa.string()), ("item", pa.int64()), ("position", pa.int32()),
    ("text", pa.string()), ("entities", pa.list_(pa.int64())),
])


def split_sentences(text: str, min_words: int) -> list[str]:
    parts = (p.strip() for p in _SENTENCE_END.split(text))
    return [p for p in parts if len(p.split()) >= min_words]


def read_reviews(train_file: Path, extra_file: Path | None, limit: int | None) -> list[dict]:
    """Rows {review_id, source, title, context, text}: ECR's training rows (context: 'User: ...' lines,
    as dialogue contexts are shown at generation time), then the extra reviews (no context)."""
    rows = []
    with open(train_file) as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            try:
                r = json.loads(line)
                rows.append({"review_id": f"train:{i}", "source": "train", "title": (r.get("rec") or [""])[0],
                             "context": "\n".join(r.get("context") or []), "text": r["resp"]})
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{train_file}:{i + 1}: not a review row ({err})") from None
    if extra_file:
        for i, r in enumerate(json.loads(Path(extra_file).read_text())[:limit]):
            rows.append({"review_id": f"extra:{i}", "source": "extra", "title": r["movie_name"], "context": "", "text": r["content"]})
    return rows


class ReviewSentences:
    """Ray Data UDF: reviews -> one row per sentence of a review whose movie is a KG item."""

    def __init__(self, kg_dir: str, min_words: int):
        kg = load_kg(kg_dir)
        self.movies, self.text, self.min_words = MovieLinker(kg), TextEntityLinker(kg), min_words

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for review in batch.to_pylist():
            item = self.movies.link(review["title"]) if review["title"] else None
            if item is None:
                continue
            for position, sentence in enumerate(split_sentences(review["text"], self.min_words)):
                rows.append({"review_id": review["review_id"], "source": review["source"], "item": item, "position": position,
                             "text": sentence, "entities": self.text.link(sentence)})
        return pa.Table.from_pylist(rows, schema=SENTENCE_SCHEMA)


def emotion_score(probs) -> float:
    """How emotional a sentence reads: its strongest non-neutral probability."""
    return float(np.delete(np.asarray(probs), _NEUTRAL).max())


def emotion_cut(scores, threshold: float, min_share: float) -> float:
    """The score a sentence needs to count as emotional: `threshold`, lowered where fewer than `min_share` of the
    sentences reach it, so a barely trained (under-confident) classifier still yields training data."""
    if not len(scores) or min_share <= 0:
        return threshold
    return min(threshold, float(np.quantile(np.asarray(scores), 1 - min(min_share, 1.0))))


def item_neighbours(kg: KnowledgeGraph) -> dict[int, list[tuple[int, int]]]:
    """item -> its (relation, entity) pairs, both edge directions, self loops left out."""
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    items = kg.item_set
    for h, r, t in kg.triples.tolist():
        if h == t:
            continue
        if h in items:
            out[h].append((r, t))
        if t in items:
            out[t].append((r, h))
    return out


def review_knowledge(sentences: list[dict], neighbours: dict, threshold: float, min_share: float = 0.0) -> tuple[list[dict], dict]:
    """Per review: its emotional sentences (`emotion_cut`), their entities and the item's triples that reach them."""
    by_review: dict[str, list[dict]] = defaultdict(list)
    for s in sentences:
        s["score"] = emotion_score(s["probs"])
        by_review[s["review_id"]].append(s)
    cut = emotion_cut([s["score"] for s in sentences], threshold, min_share)
    reviews, funnel = [], Counter()
    for review_id, rows in by_review.items():
        rows.sort(key=lambda s: s["position"])
        item = rows[0]["item"]
        emotional = [s for s in rows if s["score"] >= cut]
        entities = list(dict.fromkeys(e for s in emotional for e in s["entities"] if e != item))
        wanted = set(entities)
        triples = [[item, r, e] for r, e in neighbours.get(item, ()) if e in wanted]
        funnel["sentences"] += len(rows)
        funnel["sentences_with_entities"] += sum(bool(s["entities"]) for s in rows)
        funnel["emotional_sentences"] += len(emotional)
        funnel["reviews_without_entities"] += not any(s["entities"] for s in rows)
        if emotional:
            reviews.append({"review_id": review_id, "source": rows[0]["source"], "item": item,
                            "response": " ".join(s["text"] for s in emotional), "sentences": [s["text"] for s in emotional],
                            "entities": entities, "triples": list(dict.fromkeys(map(tuple, triples)))})
    funnel["emotion_cut"] = round(cut, 4)
    funnel["reviews_with_sentences"] = len(by_review)
    funnel["reviews_kept"] = len(reviews)
    funnel["triples"] = sum(len(r["triples"]) for r in reviews)
    return reviews, dict(funnel)


def retrieval_base(reviews: list[dict], per_item: int = 16) -> list[dict]:
    """item -> its reviews' entities (most frequent first), triples and emotional sentences."""
    grouped: dict[int, list[dict]] = defaultdict(list)
    for r in reviews:
        grouped[r["item"]].append(r)
    base = []
    for item, rows in sorted(grouped.items()):
        counts = Counter(e for r in rows for e in r["entities"])
        triples = list(dict.fromkeys(tuple(t) for r in rows for t in r["triples"]))
        base.append({"item": item, "reviews": len(rows), "entities": [e for e, _ in counts.most_common(per_item)],
                     "triples": [list(t) for t in triples[:per_item]], "sentences": [s for r in rows for s in r["sentences"]][:per_item]})
    return base


def process_reviews(cfg: Config, run_dir: RunDir) -> dict:
    """The gen-reviews stage: sentences and their entities, then the classifier over them (two actor pools),
    then what survives each step -> gen/reviews (per review), gen/retrieval (per item), reports/reviews.json."""
    import ray

    from ecr_ray.emotion.infer import EmotionPredictor, predictor_kwargs
    from ecr_ray.raytools import connect, map_actors

    g, kg_dir = cfg.gen, str(cfg.data.path(cfg.data.kg_dir))
    kg = load_kg(kg_dir)
    reviews = read_reviews(cfg.data.path(g.train_reviews_file), g.extra_reviews_file and cfg.data.path(g.extra_reviews_file), g.max_reviews)
    movies = MovieLinker(kg)
    linked = sum(movies.link(r["title"]) is not None for r in reviews if r["title"])
    connect(cfg.ray)
    ds = ray.data.from_items(reviews, override_num_blocks=max(1, min(16, len(reviews) // 100)))
    ds = map_actors(ds, ReviewSentences, {"kg_dir": kg_dir, "min_words": g.min_sentence_words}, g.sentence_pool)
    ds = ds.repartition(target_num_rows_per_block=8 * g.review_pool.batch_size)  # sentences outnumber reviews: blocks for the pool
    map_actors(ds, EmotionPredictor, predictor_kwargs(cfg, run_dir, g.review_pool), g.review_pool).write_parquet(run_dir.location(SENTENCES))
    sentences = run_dir.read_table(SENTENCES).to_pylist() if run_dir.exists(SENTENCES) else []
    kept, funnel = review_knowledge(sentences, item_neighbours(kg), g.emotion_threshold, g.min_emotional_share)
    originals = {r["review_id"]: r for r in reviews}
    for r in kept:
        r["context"] = originals[r["review_id"]]["context"]
    base = retrieval_base(kept)
    if not kept:
        raise RuntimeError(f"no review kept an emotional sentence: {len(reviews)} reviews read, {linked} linked to a KG item, "
                           f"{len(sentences)} sentences of at least {g.min_sentence_words} words; raise gen.max_reviews, lower "
                           f"gen.min_sentence_words, or raise gen.min_emotional_share (now {g.min_emotional_share})")
    run_dir.write_parquet(f"{REVIEWS}/part-0.parquet", pa.Table.from_pylist(kept))
    run_dir.write_parquet(f"{RETRIEVAL}/part-0.parquet", pa.Table.from_pylist(base))
    result = {"reviews_read": len(reviews), "reviews_linked_to_item": linked, **funnel,
              "training_reviews": sum(r["source"] == "train" and bool(r["context"]) for r in kept),
              "items": len(base), "items_with_triples": sum(bool(b["triples"]) for b in base)}
    run_dir.write_json(report("reviews"), result)
    return result
