"""The stage graph: each stage a function of (config, run directory) -> artifacts + summary.

A stage is skipped when its manifest (`_stages/<name>.json`) holds the same hash; the hash covers
the stage's config values, the content of the files it reads and the hashes of the stages it
needs. The manifest is written last, so a crash leaves the stage to run again.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ecr_ray.config import Config
from ecr_ray.rundir import RunDir


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Config, RunDir], dict]  # writes `outputs`, returns a JSON-able summary
    key: Callable[[Config], dict]  # config values and input files that decide its outputs
    outputs: tuple[str, ...]
    needs: tuple[str, ...] = ()
    version: int = 1  # bump when the stage's code changes its outputs
    optional: bool = False  # runs only when named (e.g. --stages rec-ablations), never in a full run


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def stage_graph(cfg: Config) -> list[Stage]:
    """Every stage that exists, in dependency order (later issues append theirs)."""
    from ecr_ray.data.prepare import prepare_stages
    from ecr_ray.emotion.stages import emotion_stages
    from ecr_ray.gen.stages import gen_stages
    from ecr_ray.rec.stages import rec_stages

    return prepare_stages(cfg) + emotion_stages(cfg) + rec_stages(cfg) + gen_stages(cfg)


def run_stages(cfg: Config, run_dir: RunDir, only: Sequence[str] | None = None, force: bool = False) -> dict[str, dict]:
    """Run the graph (or the named stages and nothing else); returns name -> summary."""
    stages = stage_graph(cfg)
    known = [s.name for s in stages]
    for name in only or ():
        if not any(_matches(name, k) for k in known):
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(known)}")
    hashes: dict[str, str] = {}
    summaries: dict[str, dict] = {}
    for stage in stages:
        digest = _stage_hash(cfg, stage, hashes)
        hashes[stage.name] = digest
        # an optional stage is selected by its full name only, never by a prefix such as "rec"
        selected = any(n == stage.name if stage.optional else _matches(n, stage.name) for n in only or ())
        if not selected and (only or stage.optional):
            continue
        manifest = f"_stages/{stage.name}.json"
        if not force and run_dir.exists(manifest):
            previous = run_dir.read_json(manifest)
            if previous["hash"] == digest and all(run_dir.exists(o) for o in stage.outputs):
                summaries[stage.name] = {**previous["summary"], "skipped": True}
                print(f"[{stage.name}] up to date (hash {digest}), skipped", flush=True)
                continue
        for output in stage.outputs:
            run_dir.delete(output)
        print(f"[{stage.name}] running", flush=True)
        start = time.perf_counter()
        summary = stage.run(cfg, run_dir)
        summary["seconds"] = round(time.perf_counter() - start, 2)
        run_dir.write_json(manifest, {"hash": digest, "summary": summary, "config": cfg.to_dict()})
        summaries[stage.name] = summary
        print(f"[{stage.name}] done in {summary['seconds']}s: {_one_line(summary)}", flush=True)
    return summaries


def with_needs(cfg: Config, name: str) -> list[str]:
    """`name` and every stage it needs, directly or not, in graph order (what `ecr-ray ablations` runs)."""
    by_name = {s.name: s for s in stage_graph(cfg)}
    wanted, todo = set(), [name]
    while todo:
        stage = by_name[todo.pop()]
        if stage.name not in wanted:
            wanted.add(stage.name)
            todo.extend(stage.needs)
    return [n for n in by_name if n in wanted]


def _matches(selector: str, name: str) -> bool:
    """'prepare' selects every 'prepare-*' stage; a full name selects itself."""
    return name == selector or name.startswith(selector + "-")


def _stage_hash(cfg: Config, stage: Stage, upstream: dict[str, str]) -> str:
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "key": stage.key(cfg),
        "needs": {n: upstream[n] for n in stage.needs},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _one_line(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "seconds")
