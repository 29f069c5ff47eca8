"""Training the generator on Ray Train: TorchTrainer, DDP over N workers, a checkpoint every epoch
(only the trained weights: LoRA adapters, or the whole GPT-2), resume after a failure or a crash."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ecr_ray.config import Config
from ecr_ray.rundir import RunDir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def collate(batch: dict, pad_id: int):
    """Right-padded input_ids, attention_mask and labels (-100 on padding) from ragged id lists."""
    import torch

    width = max(len(x) for x in batch["input_ids"])
    ids = torch.full((len(batch["input_ids"]), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (x, y) in enumerate(zip(batch["input_ids"], batch["labels"], strict=True)):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y)), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def trained_state(model) -> dict:
    """The weights that training changes (adapters only for LoRA), on the CPU."""
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


def mean_loss(model, batches, pad_id: int, device) -> float:
    import torch

    model.eval()
    total = tokens = 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            n = int((inputs["labels"][:, 1:] != -100).sum())
            total += float(model(**inputs).loss) * n
            tokens += n
    return total / tokens if tokens else float("nan")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.gen.model import build_generator

    g = config["generator"]
    torch.manual_seed(g["seed"])
    model, tokenizer = build_generator(g, config["allow_download"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=g["lr"])
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    ddp = prepare_model(model)
    device = next(model.parameters()).device
    rank = ray.train.get_context().get_world_rank()
    steps, every = config["steps_per_epoch"], max(1, config["steps_per_epoch"] // 20)
    for epoch in range(start, g["epochs"]):
        ddp.train()
        losses, began = [], time.perf_counter()
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=g["batch_size"], batch_format="numpy", local_shuffle_buffer_size=4 * g["batch_size"],
                local_shuffle_seed=g["seed"] + epoch):
            loss = ddp(**{k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id).items()}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if rank == 0 and len(losses) % every == 0:  # progress: epochs of a 7B model on CPUs are long
                pace = (time.perf_counter() - began) / len(losses)
                print(f"[generator] epoch {epoch + 1}/{g['epochs']} step {len(losses)}/{steps} loss {np.mean(losses[-every:]):.3f} "
                      f"({pace:.1f} s/step, ~{pace * (steps - len(losses)) / 60:.0f} min left in the epoch)", flush=True)
        val = mean_loss(model, ray.train.get_dataset_shard("val").iter_batches(batch_size=g["batch_size"], batch_format="numpy"),
                        tokenizer.pad_token_id, device)
        metrics = {"epoch": epoch, "resumed_from": start, "steps": len(losses),
                   "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_loss": val,
                   "val_perplexity": math.exp(val) if val == val and val < 50 else float("nan")}
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "epoch": epoch}, Path(folder) / "state.pt")
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)


def fit_generator(cfg: Config, gcfg: dict, name: str, train_rows: list[dict], val_rows: list[dict], run_dir: RunDir, extra: dict) -> dict:
    """Train on tokenised rows {input_ids, labels}; the result goes to models/<name>/. Returns the last metrics."""
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ecr_ray.gen.model import build_generator, save_generator
    from ecr_ray.ray_session import ensure_ray

    ensure_ray(cfg.ray)
    if not train_rows:
        raise RuntimeError("no generator training examples (no review kept an emotional sentence: check gen.emotion_threshold)")
    # named by what it learns from, so a re-run resumes only its own checkpoints
    digest = hashlib.sha256(json.dumps([gcfg, train_rows, val_rows], sort_keys=True).encode()).hexdigest()[:12]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"generator": gcfg, "allow_download": cfg.models.allow_download,
                           "steps_per_epoch": math.ceil(len(train_rows) / (gcfg["batch_size"] * gcfg["num_workers"]))},
        scaling_config=ScalingConfig(num_workers=gcfg["num_workers"], use_gpu=gcfg["use_gpu"],
                                     resources_per_worker={"CPU": gcfg["cpus_per_worker"], **({"GPU": 1} if gcfg["use_gpu"] else {})}),
        run_config=RunConfig(name=f"{name}-{digest}", storage_path=run_dir.location("train"),
                             failure_config=FailureConfig(max_failures=gcfg["max_failures"]),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": ray.data.from_items(train_rows), "val": ray.data.from_items(val_rows or train_rows[:1])},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", weights_only=True)
    model, tokenizer = build_generator(gcfg, cfg.models.allow_download)
    model.load_state_dict(state["model"], strict=False)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics["epochs_run"] = state["epoch"] + 1
    with tempfile.TemporaryDirectory() as local:
        save_generator(model, tokenizer, gcfg, local, {**extra, "training": metrics})
        run_dir.upload(local, f"models/{name}")
    return metrics
