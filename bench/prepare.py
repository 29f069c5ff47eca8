"""Turn building on Ray Data vs a plain single-process loop over the same raw files.

    python bench/prepare.py [--config cpu] [--actors 1 2]

Both paths read and validate the pool, link entities, build rec turns and user utterances and
write parquet. Ray start-up is timed apart. Prints seconds and the ratio plain / Ray (>1: Ray faster).
"""
import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow.parquet as pq

from ecr_ray.config import load_config
from ecr_ray.data.linking import DialogueLinker
from ecr_ray.artifacts import POOL
from ecr_ray.data.prepare import prepare_group, read_group
from ecr_ray.data.turns import (
    REC_TURN_SCHEMA,
    USER_UTTERANCE_SCHEMA,
    rec_turns,
    to_table,
    user_utterances,
)
from ecr_ray.rundir import RunDir


def plain(cfg, out: str) -> int:
    dialogues, _ = read_group(cfg, POOL, cfg.data.path(cfg.data.pool_file))
    linker = DialogueLinker(str(cfg.data.path(cfg.data.kg_dir)))
    linked = [linker.link_dialogue(d) for d in dialogues]
    turns = to_table((t for d in linked for t in rec_turns(d)), REC_TURN_SCHEMA)
    pq.write_table(turns, f"{out}/rec_turns.parquet")
    pq.write_table(to_table((u for d in linked for u in user_utterances(d)), USER_UTTERANCE_SCHEMA), f"{out}/user_utterances.parquet")
    return turns.num_rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"ray start-up: {time.perf_counter() - start:.2f}s")
    work = tempfile.mkdtemp()
    try:
        start = time.perf_counter()
        rows = plain(load_config(args.config), work)
        base = time.perf_counter() - start
        print(f"plain loop: {base:.2f}s for {rows} rec turns")
        for actors in args.actors:
            cfg = load_config(args.config, [f"data.link_pool.actors={actors}"])
            run_dir = RunDir(f"{work}/ray{actors}")
            start = time.perf_counter()
            summary = prepare_group(cfg, run_dir, POOL, cfg.data.path(cfg.data.pool_file))
            took = time.perf_counter() - start
            assert summary["rec_turns"] == rows, (summary["rec_turns"], rows)
            print(f"ray data, {actors} linking actor(s): {took:.2f}s  ratio plain/ray = {base / took:.2f}")
    finally:
        shutil.rmtree(work)
        ray.shutdown()


if __name__ == "__main__":
    main()
