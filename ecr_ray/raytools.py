"""The Ray edge: every place the pipeline touches Ray goes through here.

`connect` joins the configured cluster, the job's cluster or a local Ray; `map_actors` runs a plain
callable class over a dataset on an actor pool; `fit` runs a training loop on Ray Train and returns
its final checkpoint; inside a loop, `restore`, `step` and `report_epoch` are the checkpoint/resume discipline.
Models, losses and metrics never import Ray.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

from ecr_ray.artifacts import TRAIN_STORAGE
from ecr_ray.config import ActorPool, RayConfig, TrainKnobs

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


def connect(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Ray on this kind of box binds the external interface unless told otherwise
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address)
    else:
        log.info("starting a local Ray in-process (no cluster address given)")
        ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_mb * 2**20, include_dashboard=False)


def map_actors(ds, udf: type, kwargs: dict, pool: ActorPool):
    """`ds` through `udf(**kwargs)` on `pool.actors` actors, pyarrow batches of `pool.batch_size` rows; the dataset fails
    when no batch finishes for `pool.stall_s` seconds."""
    import ray

    out = ds.map_batches(udf, fn_constructor_kwargs=kwargs, batch_format="pyarrow", batch_size=pool.batch_size,
                         compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.cpus, num_gpus=pool.gpus)
    out.context.execution_no_progress_timeout_s = pool.stall_s
    return out


def blocks_for(rows: int, batch_size: int) -> int:
    """Blocks for a dataset made from `rows` items: one per batch (so an actor pool gets work)."""
    return max(1, -(-rows // batch_size))


def fit(loop: Callable[[dict], None], knobs: TrainKnobs, loop_config: dict, datasets: dict[str, list[dict]], name: str,
        run_dir, ray_cfg: RayConfig) -> tuple[dict, dict]:
    """Run `loop` on `knobs.num_workers` Ray Train workers over `datasets` ("train" and "pretrain" are split
    between them; every worker sees the others whole).

    The run is named by `name` and a digest of what it learns from, so a re-run (or Ray Train after a worker
    failure) resumes only its own checkpoints. Returns (the last checkpoint's state, the last numeric metrics).
    """
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(ray_cfg)
    digest = _digest([loop_config, datasets])
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=knobs.num_workers, use_gpu=knobs.use_gpu,
                                     resources_per_worker={"CPU": knobs.cpus_per_worker, **({"GPU": 1} if knobs.use_gpu else {})}),
        run_config=RunConfig(name=f"{name}-{digest}", storage_path=run_dir.location(TRAIN_STORAGE),
                             failure_config=FailureConfig(max_failures=knobs.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={k: ray.data.from_items(rows) for k, rows in datasets.items()},
        dataset_config=ray.train.DataConfig(datasets_to_split=[k for k in datasets if k in ("train", "pretrain")]),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    return state, {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}


def restore(model, optimizer) -> dict | None:
    """Inside a loop: load the last checkpoint (after a worker failure or into a re-run) into the model and
    optimizer; returns the rest of its state, None when starting fresh."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    model.load_state_dict(state.pop("model"), strict=False)  # LoRA checkpoints hold the adapters only
    optimizer.load_state_dict(state.pop("optimizer"))
    return state


def adamw(params, knobs: TrainKnobs):
    """Inside a loop: AdamW at the knobs' rate and decay, fused (one kernel per step instead of a dozen passes
    over every weight: the emotion classifier's optimiser step on the CPU took 179 ms, fused 19 ms)."""
    import torch

    return torch.optim.AdamW(params, lr=knobs.lr, weight_decay=knobs.weight_decay, fused=True)


def step(optimizer, loss) -> float:
    """Inside a loop: one optimiser step on `loss` (DDP averages the gradients across workers); returns the loss."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def report_epoch(metrics: dict, state: Callable[[], dict]) -> None:
    """Inside a loop: report an epoch's metrics; rank 0 saves `state()` (model, optimizer, epoch, ...) as the checkpoint."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as folder:
        saved = None
        if world_rank() == 0:
            torch.save(state(), Path(folder) / STATE_FILE)
            saved = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=saved)


def world_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def _digest(obj) -> str:
    """A short hash of JSON-able data holding numpy arrays or torch tensors (hashed by their bytes)."""
    import numpy as np

    def arrays(a):
        if getattr(a, "is_sparse", False):
            a = a.coalesce()
            return [arrays(a.indices()), arrays(a.values()), list(a.shape)]
        if hasattr(a, "numpy"):
            a = a.detach().cpu().numpy()
        if isinstance(a, np.ndarray):
            return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
        return str(a)

    h = hashlib.sha256()
    h.update(json.dumps(obj, sort_keys=True, default=arrays).encode())
    return h.hexdigest()[:12]
