"""Training the generator on Ray Train (DDP over N workers, a checkpoint every epoch holding only the
trained weights: LoRA adapters, or the whole GPT-2; resume after a failure or a crash), on review
prompts with (or without) retrieved knowledge; the gen-train stage."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import time

import numpy as np

from ecr_ray.artifacts import GENERATOR, REVIEWS, model, report, write_model_config
from ecr_ray.config import Config, GeneratorConfig, from_dict
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


def autocast(device, bf16: bool):
    """bfloat16 matmuls over the float32 weights when `bf16` (`generator.autocast_bf16` resolved), else nothing."""
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)


def trained_state(model) -> dict:
    """The weights that training changes (adapters only for LoRA), on the CPU."""
    return {k: p.detach().cpu().clone() for k, p in model.named_parameters() if p.requires_grad}


def mean_loss(model, batches, pad_id: int, device, bf16: bool) -> float:
    import torch

    model.eval()
    total = tokens = 0.0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            n = int((inputs["labels"][:, 1:] != -100).sum())
            with autocast(device, bf16):
                total += float(model(**inputs).loss) * n
            tokens += n
    return total / tokens if tokens else float("nan")


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker. Plain PyTorch apart from the Ray Train calls."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from ecr_ray.gen.model import build_generator
    from ecr_ray.precision import use_bf16
    from ecr_ray.raytools import adamw, report_epoch, restore, step, world_rank

    g = from_dict(GeneratorConfig, config["generator"])
    t = g.train
    torch.manual_seed(t.seed)
    generator, tokenizer = build_generator(g, config["allow_download"])
    optimizer = adamw([p for p in generator.parameters() if p.requires_grad], t)
    state = restore(generator, optimizer)
    start = state["epoch"] + 1 if state else 0
    ddp = prepare_model(generator)
    device = next(generator.parameters()).device
    bf16 = use_bf16(g.autocast_bf16, device.type)
    rank = world_rank()
    steps, every = config["steps_per_epoch"], max(1, config["steps_per_epoch"] // 20)
    for epoch in range(start, t.epochs):
        ddp.train()
        losses, began = [], time.perf_counter()
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=t.batch_size, batch_format="numpy", local_shuffle_buffer_size=4 * t.batch_size, local_shuffle_seed=t.seed + epoch):
            with autocast(device, bf16):
                loss = ddp(**{k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id).items()}).loss
            losses.append(step(optimizer, loss))
            if rank == 0 and len(losses) % every == 0:  # progress: epochs of a 7B model on CPUs are long
                pace = (time.perf_counter() - began) / len(losses)
                print(f"[generator] epoch {epoch + 1}/{t.epochs} step {len(losses)}/{steps} loss {np.mean(losses[-every:]):.3f} "
                      f"({pace:.1f} s/step, ~{pace * (steps - len(losses)) / 60:.0f} min left in the epoch)", flush=True)
        val = mean_loss(generator, ray.train.get_dataset_shard("val").iter_batches(batch_size=t.batch_size, batch_format="numpy"),
                        tokenizer.pad_token_id, device, bf16)
        metrics = {"epoch": epoch, "resumed_from": start, "steps": len(losses),
                   "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_loss": val,
                   "val_perplexity": math.exp(val) if val == val and val < 50 else float("nan")}
        report_epoch(metrics, lambda: {"model": trained_state(generator), "optimizer": optimizer.state_dict(), "epoch": epoch})


def fit_generator(cfg: Config, name: str, train_rows: list[dict], val_rows: list[dict], run_dir: RunDir, extra: dict) -> dict:
    """Train cfg.gen.generator on tokenised rows {input_ids, labels}; the result goes to models/<name>/. Returns the last metrics."""
    from ecr_ray.gen.model import build_generator, save_generator
    from ecr_ray.raytools import fit

    g = cfg.gen.generator
    if not train_rows:
        raise RuntimeError("no generator training examples: no review that gen-reviews kept answers a dialogue context "
                           "(reports/reviews.json: training_reviews); raise gen.max_reviews or gen.min_emotional_share")
    loop_config = {"generator": dataclasses.asdict(g), "allow_download": cfg.models.allow_download,
                   "steps_per_epoch": math.ceil(len(train_rows) / (g.train.batch_size * g.train.num_workers))}
    state, metrics = fit(train_loop, g.train, loop_config, {"train": train_rows, "val": val_rows or train_rows[:1]}, name, run_dir, cfg.ray)
    generator, tokenizer = build_generator(g, cfg.models.allow_download)
    generator.load_state_dict(state["model"], strict=False)
    metrics["epochs_run"] = state["epoch"] + 1
    with tempfile.TemporaryDirectory() as local:
        save_generator(generator, tokenizer, g, local, {**extra, "training": metrics})
        write_model_config(local, cfg)
        run_dir.upload(local, model(name))
    return metrics


def _held_out(review_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(f"gen-holdout:{review_id}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def training_examples(cfg: Config, run_dir: RunDir, retrieval: bool) -> tuple[list[dict], list[dict], dict]:
    """(train, validation) tokenised examples from the reviews that answer a seeker utterance (grounded targets
    with gen.grounded_targets), and counts: truncated prompts, reviews left out for want of a grounded target."""
    from ecr_ray.gen.model import load_tokenizer
    from ecr_ray.gen.prompts import PromptBuilder
    from ecr_ray.gen.retrieval import Grounding, item_title, load_retriever
    from ecr_ray.gen.targets import grounded_target

    g, gen = cfg.gen.generator, cfg.gen
    retriever = load_retriever(cfg, run_dir)
    grounding = Grounding(retriever.kg) if gen.grounded_targets else None
    reviews = sorted((r for r in run_dir.read_table(REVIEWS).to_pylist() if r["context"]),
                     key=lambda r: hashlib.sha256(f"{g.train.seed}:{r['review_id']}".encode()).hexdigest())  # seeded order
    builder = PromptBuilder(load_tokenizer(g, cfg.models.allow_download), g.max_length, g.response_tokens, retrieval)
    train, val, ungrounded = [], [], 0
    for r in reviews:
        held = _held_out(r["review_id"], g.holdout_fraction)
        if not held and g.max_examples is not None and len(train) >= g.max_examples:
            continue
        title = item_title(retriever.kg, r["item"])
        knowledge = retriever.knowledge(r["item"], gen.max_entities, gen.max_triples, r["entities"], r["triples"])
        target = r["response"]
        if grounding:
            target = grounded_target(r["sentences"], title, {**knowledge, "item": r["item"], "title": title, "context": r["context"],
                                                             "retrieval": retrieval}, grounding)
            ungrounded += target is None
        if target:
            (val if held else train).append(builder.example(r["context"], title, knowledge, target))
    return train, val, {"truncated_prompts": builder.truncated, "reviews_without_grounded_target": ungrounded}


def train_generator(cfg: Config, run_dir: RunDir, retrieval: bool = True, name: str = GENERATOR) -> dict:
    """The gen-train stage (and the no-retrieval variant of gen-compare)."""
    train, val, counts = training_examples(cfg, run_dir, retrieval)
    metrics = fit_generator(cfg, name, train, val, run_dir, {"retrieval": retrieval})
    run_dir.write_json(report(name), {"train_examples": len(train), "val_examples": len(val), **counts,
                                      "retrieval": retrieval, "training": metrics})
    return {"train_examples": len(train), "val_examples": len(val), **counts,
            **{k: metrics.get(k) for k in ("epochs_run", "train_loss", "val_loss")}}
