"""Training the recommender on Ray Train: TorchTrainer, DDP over N workers (gloo on CPU, NCCL on
GPU), a checkpoint every epoch, early stopping on the dev split, resume after a failure."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from ecr_ray.config import Config, RecConfig
from ecr_ray.rundir import RunDir


def evaluate(model, batches, auc_batch_size: int, entity_embeds=None) -> dict:
    """Metrics of a model over numpy batches of examples (in order), through the scoring path."""
    import torch

    from ecr_ray.rec.metrics import rec_metrics, target_ranks

    model.eval()
    ranks, probs, feedback = [], [], []
    with torch.no_grad():
        embeds = model.kg() if entity_embeds is None else entity_embeds
        for batch in batches:
            r, p = target_ranks(model(model.inputs(batch), embeds), batch["item"])
            ranks.append(r), probs.append(p), feedback.append(np.asarray(batch["feedback"]))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0)
    return rec_metrics(cat(ranks), cat(probs), cat(feedback), auc_batch_size)


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.rec.checkpoint import build_recommender, rec_config
    from ecr_ray.rec.model import rec_loss

    cfg = rec_config(config["rec"])
    model = build_recommender(cfg, config["meta"], config["allow_download"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    pretrain = cfg.prompt.pretrain_epochs if cfg.context_encoder == "prompt" else 0
    state = {"epoch": -1, "best": None, "best_metric": -1.0, "bad_epochs": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = torch.load(Path(folder) / "state.pt", weights_only=False)
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        state = saved
        state["resumed_at"] = [*state.get("resumed_at", []), state["epoch"] + 1]  # after a worker failure, or a re-run
    # pre-training scores every entity, so the item bias sits idle then
    ddp = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": pretrain > 0})
    device = next(model.parameters()).device
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(state["epoch"] + 1, pretrain + cfg.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        pretraining = epoch < pretrain
        ddp.train()
        losses = []
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy", local_shuffle_buffer_size=8 * cfg.batch_size,
                local_shuffle_seed=cfg.seed + epoch):
            inputs = {k: v.to(device) for k, v in model.inputs(batch).items()}
            targets = torch.as_tensor(batch["item"], device=device)
            if pretraining:
                targets = model.item_ids[targets]
            logits = ddp(inputs, all_entities=pretraining)
            loss = rec_loss(logits, targets, torch.as_tensor(batch["feedback"], device=device), cfg.reweight and not pretraining)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = {"epoch": epoch, "phase": "pretrain" if pretraining else "train",
                   "train_loss": float(np.mean(losses)) if losses else float("nan")}
        if not pretraining:
            dev = evaluate(model, ray.train.get_dataset_shard("dev").iter_batches(batch_size=cfg.eval_batch_size, batch_format="numpy"),
                           cfg.auc_batch_size)
            metrics.update({f"dev_{k}": v for k, v in dev.items() if v is not None})
            if dev[cfg.early_stop_metric] > state["best_metric"]:
                state.update(best=_cpu_state(model), best_metric=dev[cfg.early_stop_metric], best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
        state["epoch"] = epoch
        metrics.update({"best_epoch": state.get("best_epoch", -1), "best_dev_metric": state["best_metric"]})
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save({**state, "model": _cpu_state(model), "optimizer": optimizer.state_dict()}, Path(folder) / "state.pt")
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit_recommender(cfg: Config, rcfg: RecConfig, name: str, meta: dict, train_rows: list[dict], dev_rows: list[dict],
                    run_dir: RunDir) -> dict:
    """Train on example rows and save the best epoch's model to models/<name>/; returns its metrics."""
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ecr_ray.ray_session import ensure_ray
    from ecr_ray.rec.checkpoint import build_recommender, save_recommender

    ensure_ray(cfg.ray)
    if not train_rows or not dev_rows:
        raise RuntimeError(f"{len(train_rows)} training and {len(dev_rows)} dev examples: the recommender needs both "
                           "(raise data.max_dialogues or data.dev_fraction)")
    # named by what it learns from, so a re-run resumes only its own checkpoints
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(rcfg), _rows_digest(train_rows), _rows_digest(dev_rows),
                                        _array_digest(meta)], sort_keys=True).encode()).hexdigest()[:12]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"rec": dataclasses.asdict(rcfg), "meta": meta, "allow_download": cfg.models.allow_download},
        scaling_config=ScalingConfig(num_workers=rcfg.num_workers, use_gpu=rcfg.use_gpu,
                                     resources_per_worker={"CPU": rcfg.cpus_per_worker, **({"GPU": 1} if rcfg.use_gpu else {})}),
        run_config=RunConfig(name=f"{name}-{digest}", storage_path=run_dir.location("train"),
                             failure_config=FailureConfig(max_failures=rcfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),  # each holds the best epoch too
        datasets={"train": ray.data.from_items(train_rows), "dev": ray.data.from_items(dev_rows)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / "state.pt", weights_only=False)
    model = build_recommender(rcfg, meta, cfg.models.allow_download)
    model.load_state_dict(state["best"] if state["best"] is not None else state["model"])
    # a re-run after the last epoch resumes with nothing left to train: the state, not the report, is the record
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics.update(epochs_run=state["epoch"] + 1, best_epoch=state.get("best_epoch", -1), best_dev_metric=state["best_metric"],
                   resumed_at=state.get("resumed_at", []))
    with tempfile.TemporaryDirectory() as local:
        save_recommender(model, meta, local, metrics)
        run_dir.upload(local, f"models/{name}")
    return metrics


def _rows_digest(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps({k: v for k, v in row.items() if k != "context_vec"}, sort_keys=True).encode())
        if "context_vec" in row:
            h.update(np.asarray(row["context_vec"], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _array_digest(meta: dict) -> str:
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if not isinstance(v, np.ndarray)}, sort_keys=True).encode())
    for key in sorted(k for k, v in meta.items() if isinstance(v, np.ndarray)):
        h.update(meta[key].tobytes())
    return h.hexdigest()[:16]
