"""The stage contract: what a stage reads, writes and runs, and the hash that says whether it must run again.

A stage is skipped when its manifest (`_stages/<name>.json`) holds the same hash; the hash covers
the config values the stage declares (runtime knobs left out, see `config.output_values`), the
digests of the input files it reads, and the hashes of the stages it needs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ecr_ray.config import Config, output_values
from ecr_ray.rundir import RunDir


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Config, RunDir], dict]  # writes `outputs`, returns a JSON-able summary
    outputs: tuple[str, ...]
    config: tuple[str, ...] = ()  # dotted config paths (sections or knobs) that decide its outputs
    inputs: Callable[[Config], dict] | None = None  # digests of the files it reads besides other stages' outputs
    needs: tuple[str, ...] = ()
    version: int = 1  # bump when the stage's code changes its outputs
    optional: bool = False  # runs only when named (e.g. --stages rec-ablations), never in a full run

    def key(self, cfg: Config) -> dict:
        return {**{path: output_values(cfg, path) for path in self.config}, **(self.inputs(cfg) if self.inputs else {})}

    def digest(self, cfg: Config, upstream: dict[str, str]) -> str:
        payload = {"stage": self.name, "version": self.version, "key": self.key(cfg), "needs": {n: upstream[n] for n in self.needs}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def files_digest(folder: str | Path, names) -> dict[str, str]:
    return {name: file_digest(Path(folder) / name) for name in names}
