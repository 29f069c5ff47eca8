"""Training the emotion classifiers on Ray Train (DDP over N workers, a checkpoint every epoch, resume
after a worker failure or a crashed run), and the two stages that do: the GoEmotions teacher and the
classifier on the annotations, each with metrics through the inference path."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import tempfile

import numpy as np

from ecr_ray.artifacts import ANNOTATIONS, CLASSIFIER, TEACHER, model, report, write_model_config
from ecr_ray.config import ClassifierConfig, Config, from_dict
from ecr_ray.emotion.labels import multi_hot, read_goemotions
from ecr_ray.llm.client import OK
from ecr_ray.rundir import RunDir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BUCKET = 8  # batches drawn together and regrouped by length: similar lengths pad less (a teacher step 0.65 -> 0.45 s)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.emotion.classifier import build_classifier, by_length, encode
    from ecr_ray.raytools import adamw, report_epoch, restore, step

    cfg = from_dict(ClassifierConfig, config["classifier"])
    t = cfg.train
    model, tokenizer = build_classifier(cfg, config["allow_download"])
    optimizer = adamw(model.parameters(), t)
    state = restore(model, optimizer)
    start = state["epoch"] + 1 if state else 0
    ddp = prepare_model(model)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(start, t.epochs):
        ddp.train()
        losses, order = [], random.Random(t.seed + epoch)
        groups = ray.train.get_dataset_shard("train").iter_batches(
            batch_size=BUCKET * t.batch_size, batch_format="numpy", local_shuffle_buffer_size=2 * BUCKET * t.batch_size,
            local_shuffle_seed=t.seed + epoch)
        for group in groups:
            chunks = by_length(list(group["text"]), t.batch_size)
            order.shuffle(chunks)
            for chunk in chunks:
                logits = ddp(**encode(tokenizer, group["text"][chunk], cfg.max_length))
                loss = loss_fn(logits, torch.as_tensor(np.stack(group["targets"][chunk]), dtype=torch.float32))
                losses.append(step(optimizer, loss))
        metrics = {"epoch": epoch, "resumed_from": start, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   **_evaluate(ddp, tokenizer, ray.train.get_dataset_shard("val"), cfg)}
        report_epoch(metrics, lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch})


def _evaluate(model, tokenizer, shard, cfg: ClassifierConfig) -> dict:
    import torch

    from ecr_ray.emotion.classifier import by_length, encode
    from ecr_ray.emotion.metrics import emotion_metrics

    model.eval()
    probs, targets = [], []
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=BUCKET * 128, batch_format="numpy"):
            for chunk in by_length(list(batch["text"]), 128):  # pairs stay together; metrics ignore their order
                probs.append(torch.sigmoid(model(**encode(tokenizer, batch["text"][chunk], cfg.max_length))).numpy())
                targets.append(np.stack(batch["targets"][chunk]))
    if not probs:
        return {}
    metrics = emotion_metrics(np.concatenate(probs), np.concatenate(targets))
    return {f"val_{k}": v for k, v in metrics.items() if k != "f1_per_label"}


def fit_classifier(cfg: Config, name: str, ccfg: ClassifierConfig, train_rows: list[dict], val_rows: list[dict], run_dir: RunDir) -> dict:
    """Train on rows {text, labels}; the final weights go to models/<name>/. Returns the last metrics."""
    from ecr_ray.emotion.classifier import build_classifier, save_classifier
    from ecr_ray.raytools import fit

    as_rows = lambda rows: [{"text": r["text"], "targets": multi_hot(r["labels"])} for r in rows]  # noqa: E731
    state, metrics = fit(train_loop, ccfg.train, {"classifier": dataclasses.asdict(ccfg), "allow_download": cfg.models.allow_download},
                         {"train": as_rows(train_rows), "val": as_rows(val_rows)}, name, run_dir, cfg.ray)
    classifier, tokenizer = build_classifier(ccfg, cfg.models.allow_download)
    classifier.load_state_dict(state["model"])
    with tempfile.TemporaryDirectory() as local:
        save_classifier(classifier, tokenizer, ccfg, local, metrics)
        write_model_config(local, cfg)
        run_dir.upload(local, model(name))
    return metrics


def shuffled(rows: list[dict], seed: int, limit: int | None) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit is not None else rows


def held_out(utterance_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(f"holdout:{utterance_id}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def evaluate_model(run_dir: RunDir, name: str, rows: list[dict], cfg: Config) -> dict:
    """Metrics of a saved classifier on rows {text, labels}, through the inference path."""
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.emotion.metrics import emotion_metrics

    predictor = EmotionPredictor(run_dir.local_copy(model(name)), cfg.emotion.second_label_threshold)
    probs = predictor.predict([r["text"] for r in rows])
    return emotion_metrics(probs, np.array([multi_hot(r["labels"]) for r in rows]))


def train_teacher(cfg: Config, run_dir: RunDir) -> dict:
    e, folder = cfg.emotion, cfg.data.path(cfg.emotion.goemotions_dir)
    seed = e.teacher.train.seed
    train = shuffled(read_goemotions(folder, "train"), seed, e.teacher.max_examples)
    dev = shuffled(read_goemotions(folder, "dev"), seed, e.eval_examples)
    test = shuffled(read_goemotions(folder, "test"), seed, e.eval_examples)
    fit_classifier(cfg, TEACHER, e.teacher, train, dev, run_dir)
    result = {"train_examples": len(train), "goemotions_test": evaluate_model(run_dir, TEACHER, test, cfg)}
    run_dir.write_json(report(TEACHER), result)
    t = result["goemotions_test"]
    return {"train_examples": len(train), "test_examples": t["examples"], "test_recall@1": t["recall@1"],
            "test_recall@2": t["recall@2"], "test_macro_f1": t["macro_f1"]}


def train_classifier(cfg: Config, run_dir: RunDir) -> dict:
    e, c = cfg.emotion, cfg.emotion.classifier
    rows = [r for r in run_dir.read_table(ANNOTATIONS).to_pylist() if r["status"] == OK]
    held = [r for r in rows if held_out(r["utterance_id"], c.holdout_fraction)]
    train = shuffled([r for r in rows if not held_out(r["utterance_id"], c.holdout_fraction)], c.train.seed, c.max_examples)
    if e.include_goemotions:
        train += shuffled(read_goemotions(cfg.data.path(e.goemotions_dir), "train"), c.train.seed, c.max_examples)
    if not train or not held:
        raise RuntimeError(f"{len(rows)} usable annotations: too few to train and hold out (raise emotion.sample_size)")
    fit_classifier(cfg, CLASSIFIER, c, train, held, run_dir)
    result = {"train_examples": len(train), "held_out": evaluate_model(run_dir, CLASSIFIER, held, cfg)}
    run_dir.write_json(report(CLASSIFIER), result)
    h = result["held_out"]
    return {"train_examples": len(train), "held_out": h["examples"], "recall@1": h["recall@1"], "recall@2": h["recall@2"], "macro_f1": h["macro_f1"]}
