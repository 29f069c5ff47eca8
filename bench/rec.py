"""Recommender benchmarks, each against its baseline in the same run.

Needs a run directory whose recommender inputs exist (`ecr-ray run --config cpu --run-dir DIR`):

    python bench/rec.py kg --run-dir DIR [--config cpu]      RGCN over the full KG: forward, forward+backward (ratio)
    python bench/rec.py train --run-dir DIR [--n 4096]      training samples/s, 2 Ray Train workers vs 1 (ratio)
    python bench/rec.py eval --run-dir DIR [--n 1024]       evaluation turns/s, batched vs one turn at a time (ratio)
"""
import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_kg(cfg, run_dir, n):
    import torch

    from ecr_ray.rec.checkpoint import build_recommender
    from ecr_ray.rec.examples import model_inputs

    meta, *_ = model_inputs(cfg, run_dir)
    model = build_recommender(cfg.rec, meta)
    edges = model.kg.edge_index.shape[1]
    with torch.no_grad():
        forward = _timed(model.kg, n)
    both = _timed(lambda: model.kg().sum().backward(), n)
    print(f"RGCN on the full KG ({model.kg.nodes.shape[0]} entities, {edges} edges, {cfg.rec.hidden} dims, "
          f"{torch.get_num_threads()} threads): forward {forward * 1000:.0f} ms, forward+backward {both * 1000:.0f} ms, "
          f"ratio {both / forward:.2f}")


def bench_train(cfg, run_dir, n):
    from ecr_ray.rec.examples import model_inputs
    from ecr_ray.rec.train import fit_recommender

    meta, train, dev, _ = model_inputs(cfg, run_dir)
    train, dev = train[:n], dev[:256]
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:  # the benchmark's models stay out of the run directory
        for workers in (1, 2):
            rcfg = dataclasses.replace(cfg.rec, train=dataclasses.replace(cfg.rec.train, epochs=1, num_workers=workers, cpus_per_worker=2 / workers))
            start = time.perf_counter()
            fit_recommender(cfg, rcfg, f"bench-{workers}", meta, train, dev, RunDir(scratch))
            rates[workers] = len(train) / (time.perf_counter() - start)
    print(f"train the recommender on {len(train)} examples, 1 epoch (incl. Ray Train start-up): 1 worker x 2 CPUs "
          f"{rates[1]:.1f} samples/s, 2 workers x 1 CPU {rates[2]:.1f} samples/s, ratio {rates[2] / rates[1]:.2f}")


def bench_eval(cfg, run_dir, n):
    from ecr_ray.config import IntervalConfig
    from ecr_ray.rec.evaluate import evaluate_rows, load_trained
    from ecr_ray.rec.examples import model_inputs

    _, _, dev, _ = model_inputs(cfg, run_dir)
    dev = dev[:n]
    model = load_trained(cfg, run_dir)
    one = dataclasses.replace(cfg.rec, eval_batch_size=1)
    start = time.perf_counter()
    single = evaluate_rows(model, dev[:64], one, IntervalConfig(samples=0))  # scoring alone, no bootstrap
    base = 64 / (time.perf_counter() - start)
    start = time.perf_counter()
    batched = evaluate_rows(model, dev, cfg.rec, IntervalConfig(samples=0))
    rate = len(dev) / (time.perf_counter() - start)
    assert single["examples"] == 64 and batched["examples"] == len(dev)
    print(f"evaluate {len(dev)} dev turns: one at a time {base:.0f} turns/s, batches of {cfg.rec.eval_batch_size} "
          f"{rate:.0f} turns/s, ratio {rate / base:.1f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["kg", "train", "eval"])
    parser.add_argument("--run-dir", required=True, help="a run directory holding the recommender's inputs")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    run = {"kg": (bench_kg, 5), "train": (bench_train, 4096), "eval": (bench_eval, 1024)}[args.what]
    run[0](load_config(args.config), RunDir(args.run_dir), args.n or run[1])
    ray.shutdown()


if __name__ == "__main__":
    main()
