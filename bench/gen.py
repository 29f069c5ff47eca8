"""Generator benchmarks, each against its baseline in the same run.

Needs a run directory where the generation stages ran (`ecr-ray run --config cpu --run-dir DIR`):

    python bench/gen.py lora --run-dir DIR [--n 32]       LoRA training samples/s, 2 Ray Train workers vs 1 (ratio)

Generation on its actor pool against a plain loop is in bench/pools.py.
"""
import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir


def bench_lora(cfg, run_dir, n):
    from ecr_ray.gen.train import fit_generator, training_examples

    train, val, _ = training_examples(cfg, run_dir, retrieval=True)
    train, val = train[:n], val[:4]
    rates = {}
    with tempfile.TemporaryDirectory() as scratch:  # the benchmark's models stay out of the run directory
        for workers in (1, 2):
            g = cfg.gen.generator
            g = dataclasses.replace(g, train=dataclasses.replace(g.train, epochs=1, num_workers=workers, cpus_per_worker=2 / workers))
            start = time.perf_counter()
            fit_generator(dataclasses.replace(cfg, gen=dataclasses.replace(cfg.gen, generator=g)), f"bench-{workers}", train, val,
                          RunDir(scratch), {"retrieval": True})
            rates[workers] = len(train) / (time.perf_counter() - start)
    print(f"LoRA training of {cfg.gen.generator.model} on {len(train)} examples (<= {cfg.gen.generator.max_length} tokens), 1 epoch "
          f"incl. Ray Train start-up: 1 worker x 2 CPUs {rates[1]:.2f} samples/s, 2 workers x 1 CPU {rates[2]:.2f} samples/s, "
          f"ratio {rates[2] / rates[1]:.2f}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["lora"])
    parser.add_argument("--run-dir", required=True, help="a run directory where the generation stages ran")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    bench_lora(load_config(args.config), RunDir(args.run_dir), args.n)
    ray.shutdown()


if __name__ == "__main__":
    main()
