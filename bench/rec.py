"""Recommender benchmarks, each against its baseline in the same run.

Needs a run directory whose recommender inputs exist (`ecr-ray run --config cpu --run-dir DIR`):

    python bench/rec.py kg --run-dir DIR [--set rec.hidden=256] the RGCN layer over the full KG, rec/rgcn.py against
                                                            torch-geometric's RGCNConv: forward, forward+backward (ratios)
    python bench/rec.py channels --run-dir DIR [--n 20]     one training step (collate + forward + backward) with
                                                            each channel added in turn, against the plain model (ratios)
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

    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.checkpoint import build_recommender
    from ecr_ray.rec.examples import model_inputs

    model = build_recommender(cfg.rec, model_inputs(cfg, run_dir)[0].meta)
    edge_index, edge_type = load_kg(cfg.data.path(cfg.data.kg_dir)).edges()
    kg, nodes = model.kg, model.kg.nodes
    ways = {"torch-geometric's RGCNConv": lambda: kg.rgcn(nodes, edge_index, edge_type), "grouped by relation": lambda: kg.graph(kg.rgcn, nodes)}
    times = {}
    for name, conv in ways.items():
        with torch.no_grad():
            forward = _timed(conv, n)
        times[name] = forward, _timed(lambda conv=conv: conv().sum().backward(), n)
    print(f"the RGCN layer on the full KG ({nodes.shape[0]} entities, {edge_index.shape[1]} edges, {cfg.rec.hidden} dims, "
          f"{torch.get_num_threads()} threads):")
    base = times[next(iter(ways))]
    for name, (forward, both) in times.items():
        print(f"  {name:28s} forward {forward * 1000:5.0f} ms, forward+backward {both * 1000:5.0f} ms; "
              f"speed-up {base[0] / forward:.2f}x / {base[1] / both:.2f}x")


CHANNELS = {  # each row adds one part to the one above
    "plain (user . item)": {"variant": "hybrid", "cooccurrence_channel": False, "copy_channel": False, "local_emotion": False,
                            "global_emotion": False},
    "+ co-occurrence": {"cooccurrence_channel": True},
    "+ copy": {"copy_channel": True},
    "+ local emotion": {"local_emotion": True},
    "+ global emotion": {"global_emotion": True},
}


def bench_channels(cfg, run_dir, n):
    import torch

    from ecr_ray.rec.checkpoint import build_recommender
    from ecr_ray.rec.evaluate import as_columns
    from ecr_ray.rec.examples import model_inputs
    from ecr_ray.rec.model import rec_loss

    inputs = model_inputs(cfg, run_dir)[0]
    batch = as_columns(inputs.train[: cfg.rec.train.batch_size])
    flags, times = {}, {}
    for name, change in CHANNELS.items():
        flags.update(change)
        model = build_recommender(dataclasses.replace(cfg.rec, **flags), inputs.meta)

        def one_step():
            logits = model(model.inputs(batch, inputs.own))
            rec_loss(logits, torch.as_tensor(batch["item"]), torch.as_tensor(batch["feedback"]), None).backward()

        times[name] = _timed(one_step, n)
    base = times[next(iter(CHANNELS))]
    print(f"one training step, batch {len(batch['item'])}, {cfg.rec.hidden} dims, {torch.get_num_threads()} threads:")
    for name, seconds in times.items():
        print(f"  {name:22s} {seconds * 1000:6.0f} ms  ratio {seconds / base:.2f}")


def bench_train(cfg, run_dir, n):
    from ecr_ray.rec.examples import model_inputs
    from ecr_ray.rec.train import fit_recommender

    inputs = model_inputs(cfg, run_dir)[0]
    inputs = inputs._replace(train=inputs.train[:n])
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:  # the benchmark's models stay out of the run directory
        for workers in (1, 2):
            rcfg = dataclasses.replace(cfg.rec, train=dataclasses.replace(cfg.rec.train, epochs=1, num_workers=workers, cpus_per_worker=2 / workers))
            start = time.perf_counter()
            fit_recommender(cfg, rcfg, f"bench-{workers}", inputs, RunDir(scratch))
            rates[workers] = len(inputs.train) / (time.perf_counter() - start)
    print(f"train the recommender on {len(inputs.train)} examples, 1 epoch (incl. Ray Train start-up): 1 worker x 2 CPUs "
          f"{rates[1]:.1f} samples/s, 2 workers x 1 CPU {rates[2]:.1f} samples/s, ratio {rates[2] / rates[1]:.2f}")


def bench_eval(cfg, run_dir, n):
    from ecr_ray.config import IntervalConfig
    from ecr_ray.rec.evaluate import evaluate_rows, load_trained
    from ecr_ray.rec.examples import model_inputs

    dev = model_inputs(cfg, run_dir)[0].held_out[:n]
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
    parser.add_argument("what", choices=["kg", "channels", "train", "eval"])
    parser.add_argument("--run-dir", required=True, help="a run directory holding the recommender's inputs")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--n", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, e.g. rec.hidden=256")
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    run = {"kg": (bench_kg, 5), "channels": (bench_channels, 20), "train": (bench_train, 4096), "eval": (bench_eval, 1024)}[args.what]
    run[0](load_config(args.config, args.overrides), RunDir(args.run_dir), args.n or run[1])
    ray.shutdown()


if __name__ == "__main__":
    main()
