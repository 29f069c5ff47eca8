"""The prepare stages.

prepare-pool       the pool file: validated, linked (Ray Data), split into train/dev by a hash of
                   conversationId -> prepared/pool/{dialogues,rec_turns,user_utterances,rejects.jsonl}
prepare-<name>     each extra raw file (`--split-file NAME=PATH`) as its own group, so adding a split
                   later never re-runs the pool
linking-report     movie-mention coverage on the pool, entity P/R/F1 against UniCRS -> reports/linking.json
"""
from __future__ import annotations

from pathlib import Path

from ecr_ray.artifacts import LINKING_REPORT, POOL, PREPARED, REJECTS, prepared
from ecr_ray.config import Config
from ecr_ray.data.linking_report import write_linking_report
from ecr_ray.data.prepare import inputs_key, prepare_group
from ecr_ray.stage import Stage, file_digest

RESERVED = (POOL, "train", "dev")


def outputs(group: str) -> tuple[str, ...]:
    return tuple(prepared(group, a) for a in (*PREPARED, REJECTS))


def data_stages(cfg: Config) -> list[Stage]:
    stages = [Stage(
        f"prepare-{POOL}", run=lambda c, rd: prepare_group(c, rd, POOL, c.data.path(c.data.pool_file)), outputs=outputs(POOL),
        config=("data.dev_fraction", "data.split_seed", "data.max_dialogues", "data.max_reject_fraction"),
        inputs=lambda c: {**inputs_key(c), "pool": file_digest(c.data.path(c.data.pool_file))},
        version=2,  # feedback from the seeker's questionnaire only
    )]
    for name, path in sorted(cfg.data.split_files.items()):
        if name in RESERVED:
            raise ValueError(f"split name {name!r} is reserved; choose another for --split-file")
        stages.append(Stage(
            f"prepare-{name}", run=lambda c, rd, name=name, path=path: prepare_group(c, rd, name, Path(path)), outputs=outputs(name),
            config=("data.max_reject_fraction", "data.max_dialogues", "data.allow_pool_overlap"),
            inputs=lambda c, path=path: {**inputs_key(c), "file": file_digest(path), "pool": file_digest(c.data.path(c.data.pool_file))},
            version=2,  # feedback from the seeker's questionnaire only; overlap with the pool refused
        ))
    stages.append(Stage(
        "linking-report", run=write_linking_report, outputs=(LINKING_REPORT,), needs=(f"prepare-{POOL}",),
        inputs=lambda c: {f: file_digest(c.data.path(getattr(c.data, f))) for f in ("unicrs_turns_file", "unicrs_dialogues_file")},
    ))
    return stages
