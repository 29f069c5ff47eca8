"""Serving benchmarks over loopback, each against its baseline in the same run.

Needs a trained run directory (`ecr-ray run --config cpu --run-dir DIR`). Conversations are real
ReDial dialogue histories (the dev split's recommendation turns).

    python bench/serve.py load --run-dir DIR [--n 24] [--concurrency 1,2,4] [--set gen.decoding.max_new_tokens=48]
        p50/p99 latency and throughput of POST /recommend and of a streamed chat turn (and its time to
        the first token) at each concurrency, against the same parts called in-process one after another
        (ratio); the chat with the Generator decoding concurrent requests together vs one at a time
        (serve.max_batch=1), and with 1 vs 2 Generator replicas.
    python bench/serve.py kill --run-dir DIR [--seconds 60] [--concurrency 4] [--deployment Generator]
        concurrent conversations while one replica is killed: requests, errors, the slowest request
        against the timeout, and the time until the deployment answers again.
"""
import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import requests

from ecr_ray.artifacts import POOL, prepared
from ecr_ray.gen.respond import chat_turn
from ecr_ray.serving.components import LocalParts, answer, load_run, recommend, turn_messages

PORT = 8125
FIXED = {"num_replicas": 1, "autoscaling_config": None}  # no autoscaling during a measurement
DEPLOYMENTS = ("ChatIngress", "EmotionClassifier", "Recommender", "Retriever", "Generator")


def conversations(run, n: int, max_turns: int) -> list[list[dict]]:
    """Real dialogue histories ending with the user, as chat messages."""
    out = []
    for t in run.read_table(prepared(POOL, "rec_turns")).to_pylist():
        if t["split"] == "dev" and chat_turn(t, max_turns):
            out.append(turn_messages(t["context"], t["context_roles"]))
        if len(out) == n:
            return out
    return out


def summary(latencies: list[float], wall: float, first: list[float] | None = None) -> dict:
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    ttft = {"first_token_p50_s": round(statistics.median(first), 3)} if first else {}
    return {"p50_s": round(statistics.median(latencies), 3), "p99_s": round(q[98], 3), "per_s": round(len(latencies) / wall, 3), **ttft}


def in_process(parts, talks, top_k: int) -> dict:
    """Each conversation after the other through the parts in this process: POST /recommend's work, and
    a streamed chat turn (time to its first token and to its end)."""
    async def recommend_one(m):
        t = time.perf_counter()
        await recommend(parts, m, top_k)
        return time.perf_counter() - t, None

    async def turn(m):
        t, first = time.perf_counter(), None
        found, args = await answer(parts, m, top_k)
        async for piece in parts.stream(*args):
            first = first or (time.perf_counter() - t if isinstance(piece, str) and piece else None)
        return time.perf_counter() - t, first

    def timed(fn):
        start = time.perf_counter()
        got = [asyncio.run(fn(m)) for m in talks]
        return summary([g[0] for g in got], time.perf_counter() - start, [g[1] for g in got if g[1] is not None])

    return {"recommend": timed(recommend_one), "chat": timed(turn)}


def load(base: str, path: str, talks, concurrency: int, timeout: float) -> dict:
    """`talks` from `concurrency` clients at once; a chat turn streamed (its first token timed too)."""
    def one(m):
        t, first = time.perf_counter(), None
        stream = path.endswith("completions")
        with requests.post(f"{base}{path}", json={"messages": m, **({"stream": True} if stream else {})}, timeout=timeout, stream=stream) as r:
            r.raise_for_status()
            for line in r.iter_lines() if stream else ():
                if first is None and line.startswith(b"data: {") and (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - t
        return time.perf_counter() - t, first

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        got = list(pool.map(one, talks))
    return summary([g[0] for g in got], time.perf_counter() - start, [g[1] for g in got if g[1] is not None])


def start(run_dir: str, overrides: list[str], options: dict | None) -> str:
    from ray import serve

    from ecr_ray.serving.app import deploy

    if "ecr" in serve.status().applications:
        serve.delete("ecr")
    return deploy(run_dir, PORT, options, overrides)


def bench_load(args, cfg, run):
    import ray

    talks = conversations(run, args.n, cfg.serve.max_turns)
    parts = LocalParts(run, args.overrides, threads=cfg.serve.threads)  # as a user would: every core
    for m in talks[:2]:  # warm-up
        asyncio.run(recommend(parts, m, cfg.serve.top_k))
    base_line = in_process(parts, talks, cfg.serve.top_k)
    del parts
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    timeout = cfg.serve.request_timeout_s + 30
    last = args.concurrency[-1]
    # (label, Generator replicas, config overrides, concurrencies, paths)
    setups = [("batched", 1, [], args.concurrency, ("/recommend", "/v1/chat/completions")),
              ("one at a time", 1, ["serve.max_batch=1"], [last], ("/v1/chat/completions",)),
              ("batched", 2, [], [last], ("/v1/chat/completions",))]
    rows = []
    for label, replicas, extra, concurrencies, paths in setups:
        base = start(args.run_dir, [*args.overrides, *extra], {**{d: FIXED for d in DEPLOYMENTS}, "Generator": {**FIXED, "num_replicas": replicas}})
        load(base, "/v1/chat/completions", talks[:2], 2, timeout)  # warm-up
        for c in concurrencies:
            for path in paths:
                name = "recommend" if path == "/recommend" else "chat"
                got = load(base, path, talks, c, timeout)
                rows.append({"what": name, "generator": f"{replicas} x {label}", "concurrency": c, **got,
                             "vs_in_process": round(got["per_s"] / base_line[name]["per_s"], 2)})
    print(f"in-process, one after another ({len(talks)} conversations, {cfg.serve.threads} torch threads): {base_line}")
    print("| request | Generator replicas | concurrency | p50 s | p99 s | first token p50 s | per s | throughput vs in-process |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['generator']} | {r['concurrency']} | {r['p50_s']} | {r['p99_s']} | {r.get('first_token_p50_s', '')} | "
              f"{r['per_s']} | {r['vs_in_process']} |")
    chat = {(r["generator"], r["concurrency"]): r for r in rows if r["what"] == "chat"}
    one = chat[("1 x batched", last)]
    print(f"chat throughput at concurrency {last}: decoding together vs one at a time {one['per_s'] / chat[('1 x one at a time', last)]['per_s']:.2f}; "
          f"2 Generator replicas vs 1 {chat[('2 x batched', last)]['per_s'] / one['per_s']:.2f}")


def bench_kill(args, cfg, run):
    import ray

    talks = conversations(run, 64, cfg.serve.max_turns)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    base = start(args.run_dir, args.overrides, None)  # serve/config.yaml as it is: autoscaling on
    timeout = cfg.serve.request_timeout_s + 30
    records, stop_at = [], time.monotonic() + args.seconds

    def conversation(i):
        k = i
        while time.monotonic() < stop_at:
            t = time.monotonic()
            try:
                status = requests.post(f"{base}/v1/chat/completions", json={"messages": talks[k % len(talks)]}, timeout=timeout).status_code
            except requests.RequestException as err:
                status = type(err).__name__
            records.append((t, time.monotonic(), status))
            k += args.concurrency

    prefix = f"SERVE_REPLICA::ecr#{args.deployment}#"
    replicas = lambda: {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        futures = [pool.submit(conversation, i) for i in range(args.concurrency)]
        time.sleep(args.seconds / 4)
        before = replicas()
        victim = sorted(before)[0]
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        while not (replicas() - {victim}):
            time.sleep(0.2)
        replaced_s = time.monotonic() - killed_at
        for f in futures:
            f.result()
    errors = [r for r in records if r[2] != 200]
    in_flight = [r for r in records if r[0] < killed_at < r[1]]
    answered = [r[1] - killed_at for r in records if r[1] > killed_at and r[2] == 200]
    print(f"{len(records)} chat turns from {args.concurrency} concurrent conversations over {args.seconds:g} s; "
          f"one of {len(before)} {args.deployment} replicas killed at {killed_at - records[0][0]:.1f} s with {len(in_flight)} turns in flight "
          f"({sum(r[2] == 200 for r in in_flight)} of them answered 200)")
    print(f"errors: {len(errors)} {sorted({str(e[2]) for e in errors})}; slowest request {max(r[1] - r[0] for r in records):.1f} s "
          f"(timeout {cfg.serve.request_timeout_s:g} s); a new replica was running {replaced_s:.1f} s after the kill; "
          f"the first answer after the kill came {min(answered, default=float('nan')):.1f} s after it")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["load", "kill"])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--n", type=int, default=24, help="conversations per measurement")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--deployment", default="Generator")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    cfg, run = load_run(args.run_dir, args.overrides)
    if args.what == "load":
        bench_load(args, cfg, run)
    else:
        args.concurrency = args.concurrency[-1]
        bench_kill(args, cfg, run)


if __name__ == "__main__":
    main()
