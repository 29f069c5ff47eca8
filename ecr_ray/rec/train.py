"""Training the recommender on Ray Train: DDP over N workers (gloo on CPU, NCCL on GPU), a checkpoint
every epoch, early stopping on the dev split, resume after a failure; and the rec-train stage."""
from __future__ import annotations

import dataclasses
import tempfile

import numpy as np

from ecr_ray.artifacts import RECOMMENDER, model, report, write_model_config
from ecr_ray.config import Config, RecConfig, from_dict
from ecr_ray.emotion.labels import FEEDBACK_WEIGHTS
from ecr_ray.rundir import RunDir


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.raytools import report_epoch, restore, step
    from ecr_ray.rec.checkpoint import build_recommender
    from ecr_ray.rec.evaluate import evaluate
    from ecr_ray.rec.model import rec_loss

    cfg = from_dict(RecConfig, config["rec"])
    t = cfg.train
    model = build_recommender(cfg, config["meta"], config["allow_download"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay)
    pretrain = cfg.prompt.pretrain_epochs if cfg.context_encoder == "prompt" else 0
    state = restore(model, optimizer) or {"epoch": -1, "best": None, "best_metric": -1.0, "bad_epochs": 0}
    if state["epoch"] >= 0:  # after a worker failure, or a re-run
        state["resumed_at"] = [*state.get("resumed_at", []), state["epoch"] + 1]
    # pre-training scores every entity, so the item bias sits idle then
    ddp = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": pretrain > 0})
    device = next(model.parameters()).device
    for epoch in range(state["epoch"] + 1, pretrain + t.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        pretraining = epoch < pretrain
        ddp.train()
        losses = []
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=t.batch_size, batch_format="numpy", local_shuffle_buffer_size=8 * t.batch_size, local_shuffle_seed=t.seed + epoch):
            inputs = {k: v.to(device) for k, v in model.inputs(batch).items()}
            targets = torch.as_tensor(batch["item"], device=device)
            if pretraining:
                targets = model.item_ids[targets]
            logits = ddp(inputs, all_entities=pretraining)
            loss = rec_loss(logits, targets, torch.as_tensor(batch["feedback"], device=device), cfg.reweight and not pretraining)
            losses.append(step(optimizer, loss))
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
        report_epoch(metrics, lambda: {**state, "model": _cpu_state(model), "optimizer": optimizer.state_dict()})


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit_recommender(cfg: Config, rcfg: RecConfig, name: str, meta: dict, train_rows: list[dict], dev_rows: list[dict],
                    run_dir: RunDir) -> dict:
    """Train on example rows and save the best epoch's model to models/<name>/; returns its metrics."""
    from ecr_ray.raytools import fit
    from ecr_ray.rec.checkpoint import build_recommender, save_recommender

    if not train_rows or not dev_rows:
        raise RuntimeError(f"{len(train_rows)} training and {len(dev_rows)} dev examples: the recommender needs both "
                           "(raise data.max_dialogues or data.dev_fraction)")
    state, metrics = fit(train_loop, rcfg.train, {"rec": dataclasses.asdict(rcfg), "meta": meta, "allow_download": cfg.models.allow_download},
                         {"train": train_rows, "dev": dev_rows}, name.replace("/", "-"), run_dir, cfg.ray)
    recommender = build_recommender(rcfg, meta, cfg.models.allow_download)
    recommender.load_state_dict(state["best"] if state["best"] is not None else state["model"])
    # a re-run after the last epoch resumes with nothing left to train: the state, not the report, is the record
    metrics.update(epochs_run=state["epoch"] + 1, best_epoch=state.get("best_epoch", -1), best_dev_metric=state["best_metric"],
                   resumed_at=state.get("resumed_at", []))
    with tempfile.TemporaryDirectory() as local:
        save_recommender(recommender, meta, local, metrics)
        write_model_config(local, dataclasses.replace(cfg, rec=rcfg))
        run_dir.upload(local, model(name))
    return metrics


def train_recommender(cfg: Config, run_dir: RunDir) -> dict:
    """The rec-train stage: the pool's train split, the best epoch on its dev split."""
    from ecr_ray.rec.examples import model_inputs

    meta, train, dev, counts = model_inputs(cfg, run_dir)
    metrics = fit_recommender(cfg, cfg.rec, RECOMMENDER, meta, train, dev, run_dir)
    result = {"examples": counts, "train_examples": len(train), "dev_examples": len(dev), "training": metrics,
              "feedback_weights": {str(k): v for k, v in FEEDBACK_WEIGHTS.items()}}
    run_dir.write_json(report(RECOMMENDER), result)
    return {"train_examples": len(train), "dev_examples": len(dev), "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics.get("best_epoch"), f"dev_{cfg.rec.early_stop_metric}": metrics.get("best_dev_metric")}
