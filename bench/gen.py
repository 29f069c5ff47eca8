"""Generator benchmarks, each against its baseline in the same run.

Needs a run directory where the generation stages ran (`ecr-ray run --config cpu --run-dir DIR`):

    python bench/gen.py generate --run-dir DIR [--n 32]   generated tokens/s: Ray Data actor pool vs a plain loop (ratio)
    python bench/gen.py lora --run-dir DIR [--n 32]       LoRA training samples/s, 2 Ray Train workers vs 1 (ratio)
"""
import argparse
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir


def bench_generate(cfg, run_dir, n):
    import ray

    from ecr_ray.artifacts import GENERATOR, model, responses
    from ecr_ray.gen.generate import ResponseGenerator
    from ecr_ray.gen.respond import generate

    prompts = [{k: v for k, v in r.items() if k not in ("response", "prompt_truncated", "variant", "retrieval")}
               for r in run_dir.read_table(responses("ecr", "pool")).to_pylist()[:n]]
    g, batch = cfg.gen, cfg.gen.respond_pool.batch_size
    start = time.perf_counter()
    local = ResponseGenerator(run_dir.local_copy(model(GENERATOR)), g.generator, g.decoding, retrieval=True, threads=1)
    loop = []
    for i in range(0, len(prompts), batch):
        part = prompts[i : i + batch]
        loop += local.respond([{**p, "knowledge": {"entities": p["entities"], "triples": p["triples"]}} for p in part])[0]
    loop_s = time.perf_counter() - start
    tokens = lambda texts: sum(len(local.tokenizer(t)["input_ids"]) for t in texts)  # noqa: E731
    loop_rate = tokens(loop) / loop_s
    actors = max(1, int(ray.cluster_resources()["CPU"]))
    pooled = dataclasses.replace(cfg, gen=dataclasses.replace(g, respond_pool=dataclasses.replace(g.respond_pool, actors=actors, cpus=1.0)))
    with tempfile.TemporaryDirectory() as scratch:
        out = RunDir(scratch)
        out.upload(run_dir.local_copy(model(GENERATOR)), model(GENERATOR))
        start = time.perf_counter()
        generate(pooled, out, prompts, "ecr", "bench")
        pool_s = time.perf_counter() - start
        pool_rate = tokens(out.read_table("bench").column("response").to_pylist()) / pool_s
    print(f"generate {len(prompts)} responses (<= {g.decoding.max_new_tokens} tokens, batches of {batch}, incl. model loading): "
          f"plain loop 1 thread {loop_rate:.1f} tokens/s; Ray Data {actors} actors x 1 CPU {pool_rate:.1f} tokens/s "
          f"({pool_rate / actors:.1f} per replica); ratio {pool_rate / loop_rate:.2f} (per replica {pool_rate / actors / loop_rate:.2f})")


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
    parser.add_argument("what", choices=["generate", "lora"])
    parser.add_argument("--run-dir", required=True, help="a run directory where the generation stages ran")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    {"generate": bench_generate, "lora": bench_lora}[args.what](load_config(args.config), RunDir(args.run_dir), args.n)
    ray.shutdown()


if __name__ == "__main__":
    main()
