"""Connecting to Ray: the configured cluster, the job's cluster, or a local Ray in-process."""
from __future__ import annotations

import logging
import os

from ecr_ray.config import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig) -> None:
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
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 2**20,
            include_dashboard=False,
        )
