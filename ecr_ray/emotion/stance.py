"""The user's stance towards each movie they name: liked, disliked or no stance, with probabilities.

ECR gives every entity of an utterance the utterance's emotions, so in "I loved The Matrix but hated
Titanic" both movies are liked. ReDial's seekers answered, after each dialogue, whether they liked each
movie mentioned: thousands of (utterance, movie, stance) examples. The stance model is the emotion
classifier's network with a 3-way head that reads (the movie's title, the clause of the utterance naming it)
as a sentence pair; it trains on Ray Train on the pool's training split, class-weighted (nine in ten answers
are "liked"), and is evaluated on the dev split beside ECR's reading (the utterance's kept emotions as every
entity's stance) and on mixed messages written for the check (PROBES).
"""
from __future__ import annotations

import dataclasses
import random
import re
import tempfile

import numpy as np

from ecr_ray.artifacts import POOL, STANCE, emotion_probs, entity_stances, model, read_rows, report, write_model_config
from ecr_ray.config import ClassifierConfig, Config, from_dict
from ecr_ray.data.redial import FEEDBACK_DISLIKE, FEEDBACK_LIKE, FEEDBACK_NOT_SAID
from ecr_ray.emotion.labels import LABELS, kept_emotions
from ecr_ray.rundir import RunDir

STANCES = ("liked", "disliked", "no stance")
LIKED, DISLIKED, NO_STANCE = range(len(STANCES))
FROM_FEEDBACK = {FEEDBACK_LIKE: LIKED, FEEDBACK_DISLIKE: DISLIKED, FEEDBACK_NOT_SAID: NO_STANCE}
# Mixed messages written for this check (movies of the catalogue; sarcasm left out): each movie's true stance.
PROBES = [
    ("I loved The Matrix and Inception, but I hated Titanic. What should I watch?",
     {"The Matrix": "liked", "Inception": "liked", "Titanic": "disliked"}),
    ("I hated Titanic, but I loved The Notebook and Pretty Woman.", {"Titanic": "disliked", "The Notebook": "liked", "Pretty Woman": "liked"}),
    ("I didn't like Frozen at all, but Toy Story was great.", {"Frozen": "disliked", "Toy Story": "liked"}),
    ("The Shining was boring to me, I much preferred Halloween and Scream.",
     {"The Shining": "disliked", "Halloween": "liked", "Scream": "liked"}),
    ("Shrek is my favorite, but Cars was terrible.", {"Shrek": "liked", "Cars": "disliked"}),
    ("Jurassic Park was amazing but I couldn't stand Transformers.", {"Jurassic Park": "liked", "Transformers": "disliked"}),
    ("I did not enjoy Inception, it was too confusing. Something like Toy Story would be nice.", {"Inception": "disliked", "Toy Story": "liked"}),
    ("My friend keeps talking about The Shining, I have never seen it. I really like Scream though.",
     {"The Shining": "no stance", "Scream": "liked"}),
]


def movie_mentions(utterances: list[dict], dialogues: list[dict], title) -> list[dict]:
    """Each movie each seeker utterance marks, once: {conversation_id, split, turn, text, movie_id, entity (its KG
    item, -1 outside the KG), title (`title(item)` for a KG movie, else ReDial's), feedback (the questionnaire's)}."""
    movies = {d["conversation_id"]: {m["movie_id"]: m for m in d["movies"]} for d in dialogues}
    out = []
    for u in utterances:
        for movie_id in dict.fromkeys(u["movie_ids"]):
            m = movies[u["conversation_id"]].get(movie_id)
            if m is None:
                continue
            item = m.get("item")
            out.append({"conversation_id": u["conversation_id"], "split": u["split"], "turn": u["turn"], "text": u["text"], "movie_id": movie_id,
                        "entity": -1 if item is None else item, "title": m["title"] if item is None else title(item), "feedback": m["feedback"]})
    return out


def stance_examples(utterances: list[dict], dialogues: list[dict], title) -> list[dict]:
    """`movie_mentions` labelled by the seeker's own questionnaire answer (`stance`); those without one left out."""
    return [{**m, "stance": FROM_FEEDBACK[m["feedback"]]} for m in movie_mentions(utterances, dialogues, title) if m["feedback"] in FROM_FEEDBACK]


# where one thing said ends and the next begins: sentence ends, semicolons, a contrast ("..., but I hated X"), a comma splice ("..., I preferred X")
CLAUSE_BREAK = re.compile(r"(?<=[.!?;])\s+|\s*;\s*|,?\s+(?=(?:but|although|though|however|whereas|except)\b)|,\s+(?=i\b)", re.IGNORECASE)


def mention_clause(text: str, title: str) -> str:
    """What the user says about that movie: the clause of `text` naming `title` (the whole text when none does). Read
    whole, "I loved X but hated Y" is one feeling for both; and the questionnaires hold too few mixed messages (about
    one in a hundred) for a model to learn to tell the parts apart."""
    from ecr_ray.data.linking import text_key

    key = text_key(title)
    for clause in CLAUSE_BREAK.split(text or ""):
        if key and f" {key} " in f" {text_key(clause)} ":
            return clause.strip()
    return text


def encode_pairs(tokenizer, titles, texts, max_length: int) -> dict:
    """(title, utterance) pairs; a long utterance loses its end, never the title."""
    enc = tokenizer(list(titles), list(texts), padding=True, truncation="only_second", max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def class_weights(stances) -> list[float]:
    """sqrt(balanced) weights: the rare disliked answers count more, without the noise of full balancing."""
    counts = np.bincount(np.asarray(stances), minlength=len(STANCES)).astype(float)
    return (np.sqrt(counts.sum() / (len(STANCES) * np.maximum(counts, 1)))).tolist()


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.emotion.classifier import build_classifier
    from ecr_ray.raytools import adamw, report_epoch, restore, step

    cfg = from_dict(ClassifierConfig, config["stance"])
    t = cfg.train
    model, tokenizer = build_classifier(cfg, config["allow_download"], STANCES)
    optimizer = adamw(model.parameters(), t)
    state = restore(model, optimizer)
    start = state["epoch"] + 1 if state else 0
    ddp = prepare_model(model)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(config["weights"], dtype=torch.float32))
    for epoch in range(start, t.epochs):
        ddp.train()
        losses = []
        for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=t.batch_size, batch_format="numpy",
                                                                       local_shuffle_buffer_size=8 * t.batch_size, local_shuffle_seed=t.seed + epoch):
            logits = ddp(**encode_pairs(tokenizer, batch["title"], batch["text"], cfg.max_length))
            losses.append(step(optimizer, loss_fn(logits, torch.tensor(batch["stance"], dtype=torch.long))))
        report_epoch({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")},
                     lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch})


class StancePredictor:
    """A trained stance model: (title, utterance) pairs -> probabilities of STANCES."""

    def __init__(self, model_dir: str, batch_size: int = 64):
        import torch

        from ecr_ray.emotion.classifier import load_classifier
        from ecr_ray.rundir import fetch

        self.torch = torch
        self.model, self.tokenizer, meta = load_classifier(fetch(model_dir), STANCES)
        self.max_length, self.batch_size = meta["config"]["max_length"], batch_size

    def predict(self, titles: list[str], texts: list[str]) -> np.ndarray:
        """P(STANCES) of each title in the utterance naming it (read in the clause that names it: `mention_clause`)."""
        from ecr_ray.emotion.classifier import by_length

        texts = [mention_clause(text, title) for title, text in zip(titles, texts, strict=True)]
        out = np.zeros((len(texts), len(STANCES)), dtype=np.float32)
        with self.torch.no_grad():
            for chunk in by_length(list(texts), self.batch_size):
                enc = encode_pairs(self.tokenizer, [titles[i] for i in chunk], [texts[i] or "." for i in chunk], self.max_length)
                out[chunk] = self.torch.softmax(self.model(**enc), -1).numpy()
        return out


class StanceActor:
    """A Ray Data actor: rows {title, text, ...} gain `probs` (the model loads once, on the actor's node)."""

    def __init__(self, model_dir: str, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.predictor = StancePredictor(model_dir)

    def __call__(self, batch):
        import pyarrow as pa

        probs = self.predictor.predict(batch.column("title").to_pylist(), batch.column("text").to_pylist())
        return batch.append_column("probs", pa.array(probs.tolist(), pa.list_(pa.float32())))


def infer_stances(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The stance-infer-<group> stage: the user's stance towards every KG movie each seeker utterance of the group
    names (an actor pool; emotion.infer_pool): emotion/stances/<group> {conversation_id, turn, entity, probs}."""
    import pyarrow as pa
    import ray

    from ecr_ray.data.kg import load_kg
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.raytools import blocks_for, connect, map_actors

    kg, pool = load_kg(cfg.data.path(cfg.data.kg_dir)), cfg.emotion.infer_pool
    fields = ("conversation_id", "turn", "entity", "title", "text")
    rows = [{k: m[k] for k in fields} for m in movie_mentions(read_rows(run_dir, group, "user_utterances"), read_rows(run_dir, group, "dialogues"),
                                                            lambda item: item_title(kg, item)) if m["entity"] >= 0]
    if rows:
        connect(cfg.ray)
        ds = ray.data.from_items(rows, override_num_blocks=blocks_for(len(rows), pool.batch_size))
        read = map_actors(ds, StanceActor, {"model_dir": run_dir.location(model(STANCE)), "threads": pool.threads}, pool)
        read.drop_columns(["title", "text"]).write_parquet(run_dir.location(entity_stances(group)))
    else:  # a split naming no KG movie: an empty table, so readers find one
        run_dir.write_parquet(f"{entity_stances(group)}/part-0.parquet", pa.table(
            {"conversation_id": pa.array([], pa.int64()), "turn": pa.array([], pa.int64()), "entity": pa.array([], pa.int64()),
             "probs": pa.array([], pa.list_(pa.float32()))}))
    probs = run_dir.read_table(entity_stances(group), columns=["probs"]).column("probs").to_pylist()
    read = np.bincount([int(np.argmax(p)) for p in probs], minlength=len(STANCES)) if probs else np.zeros(len(STANCES), int)
    return {"movie_mentions": len(probs), "read_as": {name: int(n) for name, n in zip(STANCES, read, strict=True)}}


def named_movies(linker, kg, text: str) -> list[tuple[int, str]]:
    """(entity, title) of each KG movie `text` names, once, in order: what a stance is read for."""
    from ecr_ray.gen.retrieval import item_title

    return [(e, item_title(kg, e)) for e in dict.fromkeys(linker.link(text)) if e in kg.item_set]


def probe_report(predictor: StancePredictor, kg) -> dict:
    """The stance read for each movie of each PROBES message against its true stance: accuracy, how often a
    disliked movie was read as liked (the error a reason must never show), and each probe's readings."""
    from ecr_ray.data.linking import TextEntityLinker

    linker, read = TextEntityLinker(kg, items=True), []
    for message, truth in PROBES:
        titles = [title for _, title in named_movies(linker, kg, message)]
        if sorted(titles) != sorted(truth):
            raise RuntimeError(f"the probe {message!r} links to {titles}, not {sorted(truth)}: the KG changed")
        probs = predictor.predict(titles, [message] * len(titles))
        read.append({"message": message, "movies": [{"title": t, "true": truth[t], "read": STANCES[int(p.argmax())]}
                                                     for t, p in zip(titles, probs, strict=True)]})
    movies = [m for r in read for m in r["movies"]]
    disliked = [m for m in movies if m["true"] == "disliked"]
    return {"movies": len(movies), "accuracy": float(np.mean([m["true"] == m["read"] for m in movies])),
            "disliked_read_as_liked": sum(m["read"] == "liked" for m in disliked), "disliked": len(disliked), "probes": read}


def utterance_stance(probs, beta: float, most: int) -> int:
    """ECR's reading: the utterance's kept emotions are every entity's, "like" before "negative" (as the
    reasons said until now)."""
    kept = kept_emotions(probs, beta, most)
    return LIKED if kept[LABELS.index("like")] > 0 else DISLIKED if kept[LABELS.index("negative")] > 0 else NO_STANCE


def stance_metrics(predicted, gold) -> dict:
    """Macro-F1 over the three stances, each stance's recall, and the accuracy."""
    predicted, gold = np.asarray(predicted), np.asarray(gold)
    out, f1 = {"accuracy": float(np.mean(predicted == gold)) if len(gold) else 0.0}, []
    for c, name in enumerate(STANCES):
        tp, said, real = np.sum((predicted == c) & (gold == c)), np.sum(predicted == c), np.sum(gold == c)
        out[f"recall_{name}"] = float(tp / real) if real else None
        f1.append(2 * tp / (said + real) if said + real else 0.0)
    out["macro_f1"] = float(np.mean(f1))
    return out


def stance_report(rows: list[dict], systems: dict[str, np.ndarray], intervals) -> dict:
    """Each system's metrics on `rows` with 95% intervals over dialogues, and the paired differences against the first."""
    from ecr_ray.eval.intervals import dialogue_intervals

    gold, dialogues = np.array([r["stance"] for r in rows]), [r["conversation_id"] for r in rows]
    out = {}
    for name, predicted in systems.items():
        stat = lambda idx, p=predicted: stance_metrics(p[idx], gold[idx])  # noqa: E731
        out[name] = {**stance_metrics(predicted, gold), "intervals": dialogue_intervals(stat, dialogues, intervals)}
    (first, p), *others = systems.items()
    for name, q in others:
        diff = lambda idx, q=q: {"macro_f1": stance_metrics(p[idx], gold[idx])["macro_f1"] - stance_metrics(q[idx], gold[idx])["macro_f1"]}  # noqa: E731
        out[f"{first} − {name}"] = {**diff(np.arange(len(rows))), "intervals": dialogue_intervals(diff, dialogues, intervals)}
    return out


def train_stance(cfg: Config, run_dir: RunDir) -> dict:
    """The stance-train stage: train on the pool's training split, report the dev split beside ECR's reading."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.emotion.classifier import build_classifier, save_classifier
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.raytools import fit

    s = cfg.emotion.stance
    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    rows = stance_examples(read_rows(run_dir, POOL, "user_utterances"), read_rows(run_dir, POOL, "dialogues"), lambda item: item_title(kg, item))
    train, dev = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "dev"]
    if not train or not dev:
        raise RuntimeError(f"{len(train)} training and {len(dev)} dev stance examples: too few (raise data.max_dialogues)")
    random.Random(s.train.seed).shuffle(train)
    train = train[: s.max_examples] if s.max_examples is not None else train
    state, _ = fit(train_loop, s.train, {"stance": dataclasses.asdict(s), "allow_download": cfg.models.allow_download,
                                         "weights": class_weights([r["stance"] for r in train])},
                   {"train": [{"title": r["title"], "text": mention_clause(r["text"], r["title"]), "stance": r["stance"]} for r in train]},
                   STANCE, run_dir, cfg.ray)
    network, tokenizer = build_classifier(s, cfg.models.allow_download, STANCES)
    network.load_state_dict(state["model"])
    with tempfile.TemporaryDirectory() as local:
        save_classifier(network, tokenizer, s, local, {"train_examples": len(train)}, STANCES)
        write_model_config(local, cfg)
        run_dir.upload(local, model(STANCE))
    predictor = StancePredictor(run_dir.location(model(STANCE)))
    probs = predictor.predict([r["title"] for r in dev], [r["text"] for r in dev])
    emotions = emotion_probs(run_dir, POOL)
    systems = {"stance model": probs.argmax(1),
               "utterance emotion (ECR)": np.array([utterance_stance(emotions[(r["conversation_id"], r["turn"])], cfg.rec.beta, cfg.rec.max_emotions)
                                                    for r in dev])}
    result = {"train_examples": len(train), "dev_examples": len(dev),
              "dev_stances": {name: int(sum(r["stance"] == c for r in dev)) for c, name in enumerate(STANCES)},
              "dev": stance_report(dev, systems, cfg.eval.intervals),
              "probes": probe_report(predictor, kg)}
    run_dir.write_json(report(STANCE), result)
    model_f1, ecr_f1 = (result["dev"][k] for k in systems)
    return {"train_examples": len(train), "dev_examples": len(dev), "macro_f1": model_f1["macro_f1"],
            "recall_disliked": model_f1["recall_disliked"], "utterance_macro_f1": ecr_f1["macro_f1"],
            "probe_accuracy": result["probes"]["accuracy"], "probe_disliked_read_as_liked": result["probes"]["disliked_read_as_liked"],
            "intervals": {"macro_f1": model_f1["intervals"].get("macro_f1"), "utterance_macro_f1": ecr_f1["intervals"].get("macro_f1"),
                          "recall_disliked": model_f1["intervals"].get("recall_disliked")}}
