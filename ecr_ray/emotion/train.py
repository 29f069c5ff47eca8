"""Training the emotion classifier on Ray Train: TorchTrainer, DDP over N workers, a checkpoint
every epoch, resume after a worker failure or a crashed run (same data and config -> same run)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ecr_ray.config import ClassifierConfig, Config
from ecr_ray.emotion.labels import multi_hot
from ecr_ray.rundir import RunDir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the four Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.emotion.classifier import build_classifier, encode

    cfg = ClassifierConfig(**config["classifier"])
    model, tokenizer = build_classifier(cfg, config["allow_download"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    model = prepare_model(model)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start, cfg.epochs):
        model.train()
        losses = []
        batches = ray.train.get_dataset_shard("train").iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy", local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + epoch,
        )
        for batch in batches:
            logits = model(**encode(tokenizer, batch["text"], cfg.max_length))
            loss = loss_fn(logits, torch.as_tensor(np.stack(batch["targets"]), dtype=torch.float32))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = {"epoch": epoch, "resumed_from": start, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   **_evaluate(model, tokenizer, ray.train.get_dataset_shard("val"), cfg)}
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, Path(folder) / "state.pt")
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)


def _evaluate(model, tokenizer, shard, cfg: ClassifierConfig) -> dict:
    import torch

    from ecr_ray.emotion.classifier import encode
    from ecr_ray.emotion.metrics import emotion_metrics

    model.eval()
    probs, targets = [], []
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=128, batch_format="numpy"):
            probs.append(torch.sigmoid(model(**encode(tokenizer, batch["text"], cfg.max_length))).numpy())
            targets.append(np.stack(batch["targets"]))
    if not probs:
        return {}
    metrics = emotion_metrics(np.concatenate(probs), np.concatenate(targets))
    return {f"val_{k}": v for k, v in metrics.items() if k != "f1_per_label"}


def fit_classifier(cfg: Config, name: str, ccfg: ClassifierConfig, train_rows: list[dict], val_rows: list[dict], run_dir: RunDir) -> dict:
    """Train on rows {text, labels}; the final weights go to models/<name>/. Returns the last metrics."""
    import ray
    import torch
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ecr_ray.emotion.classifier import build_classifier, save_classifier
    from ecr_ray.ray_session import ensure_ray

    ensure_ray(cfg.ray)
    as_rows = lambda rows: [{"text": r["text"], "targets": multi_hot(r["labels"])} for r in rows]  # noqa: E731
    # the Ray Train run is named by what it learns from, so a re-run resumes only its own checkpoints
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(ccfg), train_rows, val_rows], sort_keys=True).encode()).hexdigest()[:12]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"classifier": dataclasses.asdict(ccfg), "allow_download": cfg.models.allow_download},
        scaling_config=ScalingConfig(num_workers=ccfg.num_workers, use_gpu=ccfg.use_gpu,
                                     resources_per_worker={"CPU": ccfg.cpus_per_worker, **({"GPU": 1} if ccfg.use_gpu else {})}),
        run_config=RunConfig(name=f"{name}-{digest}", storage_path=run_dir.location("train"),
                             failure_config=FailureConfig(max_failures=ccfg.max_failures)),
        datasets={"train": ray.data.from_items(as_rows(train_rows)), "val": ray.data.from_items(as_rows(val_rows))},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", weights_only=True)
    model, tokenizer = build_classifier(ccfg, cfg.models.allow_download)
    model.load_state_dict(state["model"])
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory() as local:
        save_classifier(model, tokenizer, ccfg, local, metrics)
        run_dir.upload(local, f"models/{name}")
    return metrics
