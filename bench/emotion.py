"""Emotion stage benchmarks, each against its baseline in the same run (ratios > 1: Ray faster).

    python bench/emotion.py annotate [--n 24]   Ray Data annotation vs a sequential loop of the same
                                                 client calls, against the same local LLM server (2 replicas)
    python bench/emotion.py train [--n 512]     classifier training samples/s, 1 vs 2 Ray Train workers

Inference over utterances is in bench/pools.py (every actor pool against its plain loop).
"""
import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ecr_ray.artifacts import POOL, prepared
from ecr_ray.config import ClassifierConfig, TrainKnobs, load_config
from ecr_ray.data.prepare import prepare_group
from ecr_ray.emotion.labels import read_goemotions
from ecr_ray.rundir import RunDir


def _utterances(cfg, run_dir, n):
    import pyarrow.dataset as pads

    from ecr_ray.emotion.annotate import cache_key

    prepare_group(cfg, run_dir, POOL, cfg.data.path(cfg.data.pool_file))
    rows = pads.dataset(run_dir.path(prepared(POOL, "user_utterances"))).to_table().to_pylist()[:n]
    return [{**r, "key": cache_key("bench", r["context"], r["text"])} for r in rows]


def bench_annotate(cfg, run_dir, n):
    import ray

    from ecr_ray.config import ActorPool
    from ecr_ray.emotion.annotate import LLMAnnotator
    from ecr_ray.llm.server import start_llm_server, stop_llm_server
    from ecr_ray.raytools import map_actors

    cfg.llm_server.replicas, cfg.llm_server.replica_cpus = 2, 0.5
    rows = _utterances(cfg, run_dir, n)
    url = start_llm_server(cfg, cfg.emotion.llm.model)
    cache = run_dir.location("cache")
    run_dir.fs.create_dir(run_dir.path("cache"), recursive=True)
    try:
        llm = {**dataclasses.asdict(cfg.emotion.llm), "base_url": url, "max_tokens": 24, "qps": 100.0}
        plain = LLMAnnotator({**llm, "concurrency": 1}, 1, "plain", cache, context_turns=4, max_chars=1000)
        start = time.perf_counter()
        for row in rows:
            plain.ask(row)
        base = time.perf_counter() - start
        start = time.perf_counter()
        kwargs = {"llm": {**llm, "concurrency": 4}, "actors": 2, "run": "ray", "cache": cache, "context_turns": 4, "max_chars": 1000}
        ds = ray.data.from_items(rows, override_num_blocks=4)
        out = map_actors(ds, LLMAnnotator, kwargs, ActorPool(actors=2, cpus=0.25, batch_size=max(1, n // 4))).take_all()
        took = time.perf_counter() - start
        assert len(out) == n
    finally:
        stop_llm_server()
    print(f"annotate {n} utterances: sequential {n / base:.2f}/s, Ray Data (2 actors x 2 threads, 2 replicas) {n / took:.2f}/s, "
          f"ratio {base / took:.2f}")


def bench_train(cfg, run_dir, n):
    from ecr_ray.emotion.train import fit_classifier

    rows = read_goemotions(cfg.data.path(cfg.emotion.goemotions_dir), "train")[:n]
    val = rows[:32]
    rates = {}
    for workers in (1, 2):
        ccfg = ClassifierConfig(max_length=48, train=TrainKnobs(epochs=1, num_workers=workers, cpus_per_worker=0.5, lr=1e-4))
        start = time.perf_counter()
        fit_classifier(cfg, f"bench{workers}", ccfg, rows, val, run_dir)
        rates[workers] = n / (time.perf_counter() - start)
    print(f"train MiniLM on {n} examples (incl. Ray Train start-up): 1 worker {rates[1]:.1f} samples/s, "
          f"2 workers {rates[2]:.1f} samples/s, ratio {rates[2] / rates[1]:.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["annotate", "train"])
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = load_config("tiny")
    with tempfile.TemporaryDirectory() as work:
        run = {"annotate": (bench_annotate, 24), "train": (bench_train, 512)}[args.what]
        run[0](cfg, RunDir(work), args.n or run[1])
    ray.shutdown()


if __name__ == "__main__":
    main()
