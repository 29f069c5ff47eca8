"""Training the recommender on Ray Train: DDP over N workers (gloo on CPU, NCCL on GPU), warm-up then
cosine decay, a checkpoint every epoch, the best epoch selected on training dialogues held out from
the updates (never the reported split), resume after a failure; and the rec-train stage."""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time

import numpy as np

from ecr_ray.artifacts import RECOMMENDER, RECOMMENDER_CURVE, model, report, write_model_config
from ecr_ray.config import Config, RecConfig, from_dict
from ecr_ray.rundir import RunDir


CURVE_METRICS = ("recall@1", "recall@10", "recall@50", "auc")  # held out, per epoch


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` share of `total` steps, then a cosine decay to 0."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.raytools import adamw, report_epoch, restore, step
    from ecr_ray.rec.channels import apply_channels
    from ecr_ray.rec.checkpoint import build_recommender
    from ecr_ray.rec.evaluate import evaluate
    from ecr_ray.rec.metrics import selection_metric
    from ecr_ray.rec.model import rec_loss

    cfg = from_dict(RecConfig, config["rec"])
    t, own = cfg.train, config["own"]
    model = build_recommender(cfg, config["meta"], config["allow_download"])
    if config["channels"] is not None:  # the hybrid's, fitted before training and frozen: the checkpoints carry them
        apply_channels(model, config["channels"])
    fast = model.fast_parameters()
    embeddings = [p for p in model.parameters() if p.requires_grad and all(p is not f for f in fast)]
    optimizer = adamw([{"params": embeddings, "base_lr": t.lr}, {"params": fast, "base_lr": cfg.bias_lr}], t)
    pretrain = cfg.pretrain_epochs
    steps = [math.ceil(config[k] / (t.num_workers * t.batch_size)) for k in ("pretrain_examples", "train_examples")]
    schedule = [*[steps[0]] * pretrain, *[steps[1]] * t.epochs]  # steps per epoch; one warm-up and decay over them all
    state = restore(model, optimizer) or {"epoch": -1, "best": None, "best_metric": -1.0, "bad_epochs": 0, "curve": []}
    if state["epoch"] >= 0:  # after a worker failure, or a re-run
        state["resumed_at"] = [*state.get("resumed_at", []), state["epoch"] + 1]
    # pre-training scores every entity, so the item bias sits idle then
    ddp = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": pretrain > 0})
    device = next(model.parameters()).device
    weights = cfg.feedback_weights if cfg.reweight else None

    def held_out_metrics() -> dict:  # of the learned score alone: what trains (the hybrid's weights come after)
        return evaluate(model, ray.train.get_dataset_shard("stop").iter_batches(batch_size=cfg.eval_batch_size, batch_format="numpy"),
                        cfg.auc_batch_size, own=own, part="learned")

    if state["epoch"] < 0:  # the network before training is a candidate (epoch -1): a run that cannot beat it failed
        held = held_out_metrics()
        state.update(best=_cpu_state(model), best_metric=selection_metric(held, cfg.early_stop_metric), best_epoch=-1,
                     curve=[_curve_point(-1, "before training", None, held)])
    for epoch in range(state["epoch"] + 1, pretrain + t.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        pretraining, began = epoch < pretrain, time.perf_counter()
        ddp.train()
        losses = []
        for i, batch in enumerate(ray.train.get_dataset_shard("pretrain" if pretraining else "train").iter_batches(
                batch_size=t.batch_size, batch_format="numpy", local_shuffle_buffer_size=8 * t.batch_size, local_shuffle_seed=t.seed + epoch)):
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(sum(schedule[:epoch]) + i, sum(schedule), cfg.warmup)
            inputs = {k: v.to(device) for k, v in model.inputs(batch, own, channels=False).items()}
            targets = torch.as_tensor(batch["item"], device=device)  # an item position; an entity id when pre-training
            logits = ddp(inputs, all_entities=pretraining, channels=False)
            loss = rec_loss(logits, targets, torch.as_tensor(batch["feedback"], device=device), None if pretraining else weights)
            losses.append(step(optimizer, loss))
        metrics = {"epoch": epoch, "phase": "pretrain" if pretraining else "train",
                   "train_loss": float(np.mean(losses)) if losses else float("nan")}
        held = None if pretraining else held_out_metrics()
        state["curve"].append(_curve_point(epoch, metrics["phase"], metrics["train_loss"], held, time.perf_counter() - began))
        if held is not None:
            metrics.update({f"stop_{k}": v for k, v in held.items() if v is not None})
            value = selection_metric(held, cfg.early_stop_metric)
            if value > state["best_metric"]:
                state.update(best=_cpu_state(model), best_metric=value, best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
        state["epoch"] = epoch
        metrics.update({"best_epoch": state.get("best_epoch", -1), "best_stop_metric": state["best_metric"]})
        report_epoch(metrics, lambda: {**state, "model": _cpu_state(model), "optimizer": optimizer.state_dict()})


def _curve_point(epoch: int, phase: str, loss: float | None, held: dict | None, seconds: float | None = None) -> dict:
    """One row of the learning curve: the epoch's mean training loss, the held-out recall and AUC, its seconds."""
    return {"epoch": epoch, "phase": phase, "train_loss": loss, "seconds": seconds,
            **({f"stop_{k}": held[k] for k in CURVE_METRICS} if held else {})}


def curve_table(curve: list[dict], best_epoch: int) -> str:
    """The learning curve as markdown (reports/recommender-curve.md)."""
    cell = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [f"| {p['epoch']}{' (selected)' if p['epoch'] == best_epoch else ''} | {p['phase']} | {cell(p['train_loss'])} | "
            + " | ".join(cell(p.get(f"stop_{k}")) for k in CURVE_METRICS)
            + f" | {'' if p.get('seconds') is None else round(p['seconds'])} |" for p in curve]
    return "\n".join(["| epoch | phase | train loss | held-out R@1 | held-out R@10 | held-out R@50 | held-out AUC | seconds |",
                      "|---:|---|---:|---:|---:|---:|---:|---:|", *rows])


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def stopping_split(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(rows to train on, rows of the held-out dialogues that select the epoch): whole dialogues, seeded."""
    ids = sorted({r["conversation_id"] for r in rows})
    held = set(np.random.default_rng(0).permutation(ids)[: max(1, round(fraction * len(ids)))].tolist()) if ids else set()
    return [r for r in rows if r["conversation_id"] not in held], [r for r in rows if r["conversation_id"] in held]


def with_node_init(inputs, held: set[int], rcfg: RecConfig) -> dict:
    """The model's meta with its initial entity table (`rec.node_init: ppmi-svd`) from the counted dialogues
    except the `held` ones: built from those, it carried their answers into the epoch's selection and the
    hybrid's weights (held-out R@50 0.49 with them, 0.45 without; the dev split 0.40 either way)."""
    if rcfg.node_init != "ppmi-svd":
        return inputs.meta
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.cooccurrence import ppmi_svd

    init = ppmi_svd((e for c, e in inputs.entities.items() if c not in held), load_kg(inputs.meta["kg_dir"]).num_entities,
                    rcfg.hidden, rcfg.train.seed)
    return {**inputs.meta, "tables": {**inputs.meta["tables"], "init": init}}


def fit_recommender(cfg: Config, rcfg: RecConfig, name: str, inputs, run_dir: RunDir) -> dict:
    """Train on the counted dialogues' examples (`inputs`, a TrainingInputs) and save the best epoch's
    model to models/<name>/; returns its metrics."""
    from ecr_ray.raytools import fit
    from ecr_ray.rec.channels import fit_channels, fit_mix
    from ecr_ray.rec.checkpoint import build_recommender, save_recommender

    train, stop = stopping_split(inputs.train, rcfg.stop_fraction)
    if not train or not stop:
        raise RuntimeError(f"{len(train)} training and {len(stop)} held-out examples: the recommender needs both "
                           "(raise data.max_dialogues or rec.stop_fraction)")
    held = {r["conversation_id"] for r in stop}
    meta = with_node_init(inputs, held, rcfg)
    fitted, seconds, began = None, {}, time.perf_counter()
    if rcfg.variant == "hybrid":
        fitted = fit_channels(build_recommender(rcfg, meta, cfg.models.allow_download), train, inputs.own, rcfg)
        print(f"[rec-train] channel weights fitted for ranking: {fitted}", flush=True)
    seconds["channel fit"], began = time.perf_counter() - began, time.perf_counter()
    datasets = {"train": train, "stop": stop}
    if rcfg.pretrain_epochs:  # not the held-out dialogues: pre-training would teach their answers
        datasets["pretrain"] = [r for r in inputs.pretrain if r["conversation_id"] not in held]
    loop_config = {"rec": dataclasses.asdict(rcfg), "meta": meta, "own": inputs.own, "train_examples": len(train),
                   "channels": fitted and fitted["weights"],
                   "pretrain_examples": len(datasets.get("pretrain", [])), "allow_download": cfg.models.allow_download}
    state, metrics = fit(train_loop, rcfg.train, loop_config, datasets, name.replace("/", "-"), run_dir, cfg.ray)
    seconds["training"], began = time.perf_counter() - began, time.perf_counter()
    recommender = build_recommender(rcfg, meta, cfg.models.allow_download)
    recommender.load_state_dict(state["best"] if state["best"] is not None else state["model"])
    # a re-run after the last epoch resumes with nothing left to train: the state, not the report, is the record
    if state.get("best_epoch", -1) < 0:  # a failed run, and it says so
        print(f"[rec-train] WARNING: no epoch beat the network before training on the held-out dialogues: the saved {rcfg.variant} "
              "model is the untrained one" + (" plus its fitted channels" if rcfg.variant == "hybrid" else ""), flush=True)
    mix = fit_mix(recommender, stop, inputs.own, rcfg) if rcfg.variant == "hybrid" else None
    seconds["mix fit"] = time.perf_counter() - began
    if mix:
        print(f"[rec-train] the learned score's weight beside the channels, fitted on the held-out dialogues: {mix['weight']}"
              + (" -- WARNING: the learned part adds nothing to the channels" if mix["weight"] == 0 else ""), flush=True)
    metrics.update(seconds=seconds, mix=mix, curve=state.get("curve", []), epochs_run=state["epoch"] + 1, best_epoch=state.get("best_epoch", -1), best_stop_metric=state["best_metric"],
                   resumed_at=state.get("resumed_at", []), train_examples=len(train), stop_examples=len(stop),
                   pretrain_examples=len(datasets.get("pretrain", [])), channel_fit=fitted)
    with tempfile.TemporaryDirectory() as local:
        save_recommender(recommender, inputs.meta, local, metrics)
        write_model_config(local, dataclasses.replace(cfg, rec=rcfg))
        run_dir.upload(local, model(name))
    return metrics


def train_recommender(cfg: Config, run_dir: RunDir) -> dict:
    """The rec-train stage: the pool's train split (the epoch selected on some of its dialogues)."""
    from ecr_ray.rec.examples import model_inputs

    inputs, counts = model_inputs(cfg, run_dir)
    metrics = fit_recommender(cfg, cfg.rec, RECOMMENDER, inputs, run_dir)
    run_dir.write_json(report(RECOMMENDER), {"examples": counts, "training": metrics,
                                             "feedback_weights": dataclasses.asdict(cfg.rec.feedback_weights)})
    curve = curve_table(metrics["curve"], metrics["best_epoch"])
    mix = metrics["mix"] and "\n\nThe learned score's weight beside the channels, fitted with them on the held-out dialogues " + (
        f"({metrics['mix']['metric']} by weight): " + ", ".join(f"{w}: {v:.4f}" for w, v in metrics["mix"]["curve"].items())
        + f"; chosen {metrics['mix']['weight']}, the channel weights refitted beside it: {metrics['mix']['channels']} "
        f"(fitted alone: {metrics['channel_fit']['weights']}).")
    run_dir.write_text(RECOMMENDER_CURVE, f"# Recommender ({cfg.rec.variant}): learning curve\n\nHeld out: {metrics['stop_examples']} "
                       f"examples of training dialogues never trained on (they select the epoch); the learned score alone.\n\n{curve}{mix or ''}\n")
    print(curve, flush=True)
    return {"train_examples": metrics["train_examples"], "stop_examples": metrics["stop_examples"], "epochs_run": metrics["epochs_run"],
            "best_epoch": metrics.get("best_epoch"), f"stop_{cfg.rec.early_stop_metric}": metrics.get("best_stop_metric")}
