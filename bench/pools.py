"""Each Ray Data actor pool against the plain loop a user would write, start-up apart from steady state.

    python bench/pools.py link|infer|context|sentences|reviews|generate|all --run-dir DIR [--batches N] [--set KEY=VALUE ...]

Needs a run directory of the cpu preset (`ecr-ray run --config cpu --run-dir DIR`). Every benchmark runs
one stage's UDF (the same class, batches of the stage's pool size) over the same real rows twice: N
batches (default 8 per actor), the stage's rows taken in order and, where they are fewer, again from the start:

- plain: in this process, one batch after the other, with every core (torch threads = cores);
- Ray: through `raytools.map_actors` on the preset's pool (its actors, CPUs and threads), as the stage does.

Start-up is the time until the first batch is out (building the model; for Ray also starting the actors).
Steady state is the rate over the batches after each side's warm-up: the first batch for the plain loop,
the first batch of every actor for the pool (one block per batch, so every batch is timed as it comes
out). The ratio is Ray's steady rate over the plain loop's (>1: Ray faster); both are measured in the
same run, one after the other, on the same cores.
"""
import argparse
import dataclasses
import os
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow as pa

from ecr_ray.artifacts import CLASSIFIER, GENERATOR, POOL, model, prepared, responses
from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir

CORES = os.cpu_count()


@dataclasses.dataclass
class Case:
    what: str
    udf: type
    kwargs: dict  # for both sides
    rows: list[dict]
    pool: object  # the preset's ActorPool
    torch: bool = False  # the UDF takes `threads`: every core in the plain loop, the pool's threads on an actor


def rate(start: float, marks: list[tuple[float, int]], warm: int) -> dict:
    """Start-up (to the first batch out) and rows/s after the first `warm` batches."""
    warm = min(warm, len(marks) - 1)
    after = sum(rows for _, rows in marks[warm:])
    return {"startup_s": marks[0][0] - start, "steady_per_s": after / (marks[-1][0] - marks[warm - 1][0]) if warm else float("nan")}


def plain(case: Case) -> dict:
    start, marks = time.perf_counter(), []
    udf = case.udf(**case.kwargs, **({"threads": CORES} if case.torch else {}))
    table = pa.Table.from_pylist(case.rows)
    for i in range(0, table.num_rows, case.pool.batch_size):
        out = udf(table.slice(i, case.pool.batch_size))
        marks.append((time.perf_counter(), out.num_rows))
    return rate(start, marks, 1)


def pooled(case: Case) -> dict:
    import ray

    from ecr_ray.raytools import map_actors

    start, marks = time.perf_counter(), []
    ds = ray.data.from_items(case.rows, override_num_blocks=len(case.rows) // case.pool.batch_size)
    kwargs = {**case.kwargs, **({"threads": case.pool.threads} if case.torch else {})}
    for batch in map_actors(ds, case.udf, kwargs, case.pool).iter_batches(batch_size=None, batch_format="pyarrow"):
        marks.append((time.perf_counter(), batch.num_rows))
    return rate(start, marks, case.pool.actors)


def cycled(rows: list, pool, batches: int | None) -> list:
    """`batches` (default 8 per actor) whole batches of `rows`, from the start again where they run out."""
    n = (batches or 8 * pool.actors) * pool.batch_size
    return [rows[i % len(rows)] for i in range(n)]


def cases(cfg, run: RunDir, batches: int | None) -> dict:
    """The stages' UDFs over the run's real rows (`cycled`)."""
    from ecr_ray.data.linking import DialogueLinker
    from ecr_ray.data.prepare import read_group
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.gen.generate import ResponseGenerator
    from ecr_ray.gen.reviews import ReviewSentences, read_reviews
    from ecr_ray.rec.context import ContextEmbedder

    kg_dir, g = str(cfg.data.path(cfg.data.kg_dir)), cfg.gen
    classifier = {"model_dir": run.local_copy(model(CLASSIFIER)), "second_threshold": cfg.emotion.second_label_threshold}

    def link():
        dialogues, _ = read_group(cfg, POOL, cfg.data.path(cfg.data.pool_file))
        return Case("entity linking of dialogues (pure Python)", DialogueLinker, {"kg_dir": kg_dir}, cycled(dialogues, cfg.data.link_pool, batches),
                    cfg.data.link_pool)

    def infer():
        pool = cfg.emotion.infer_pool
        texts = cycled(run.read_table(prepared(POOL, "user_utterances"), columns=["text"]).to_pylist(), pool, batches)
        return Case("emotion inference of user utterances", EmotionPredictor, classifier, texts, pool, torch=True)

    def context():
        r = cfg.rec
        turns = run.read_table(prepared(POOL, "rec_turns"), columns=["conversation_id", "turn", "context", "context_roles"]).to_pylist()
        return Case("context embedding (MiniLM)", ContextEmbedder, {"model": r.context_model, "max_length": r.context_max_length},
                    cycled(turns, r.context_pool, batches), r.context_pool, torch=True)

    def review_rows():
        return read_reviews(cfg.data.path(g.train_reviews_file), g.extra_reviews_file and cfg.data.path(g.extra_reviews_file), g.max_reviews)

    def sentences():
        return Case("review sentences and their entities (pure Python)", ReviewSentences, {"kg_dir": kg_dir, "min_words": g.min_sentence_words},
                    cycled(review_rows(), g.sentence_pool, batches), g.sentence_pool)

    def reviews():
        pool = g.review_pool
        rows = cycled(ReviewSentences(kg_dir, g.min_sentence_words)(pa.Table.from_pylist(review_rows())).to_pylist(), pool, batches)
        return Case("emotion of review sentences", EmotionPredictor, classifier, rows, pool, torch=True)

    def generate():
        pool = g.respond_pool
        prompts = cycled([{k: v for k, v in r.items() if k not in ("response", "prompt_truncated", "variant", "retrieval")}
                          for r in run.read_table(responses("ecr", "pool")).to_pylist()], pool, batches)
        kwargs = {"model_dir": run.local_copy(model(GENERATOR)), "generator": g.generator, "decoding": g.decoding, "retrieval": True,
                  "kg_dir": kg_dir, "bf16": g.decoding.batch_bf16}
        return Case(f"generation ({g.decoding.candidates} candidates, <= {g.decoding.max_new_tokens} tokens)", ResponseGenerator, kwargs,
                    prompts, pool, torch=True)

    return {"link": link, "infer": infer, "context": context, "sentences": sentences, "reviews": reviews, "generate": generate}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["link", "infer", "context", "sentences", "reviews", "generate", "all"])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--batches", type=int, default=None, help="batches per benchmark (default: 8 per actor of the pool)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    import ray

    cfg, run = load_config(args.config, args.overrides), RunDir(args.run_dir)
    every = cases(cfg, run, args.batches)
    ray.init(address="local", num_cpus=CORES, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"| stage | rows | plain loop ({CORES} threads): start-up s, rows/s | Ray pool: actors x CPUs, start-up s, rows/s | ratio (steady) |")
    print("|---|---:|---|---|---:|")
    for name in every if args.what == "all" else [args.what]:
        case = every[name]()
        a, b = plain(case), pooled(case)
        p = case.pool
        print(f"| {case.what} | {len(case.rows)} | {a['startup_s']:.1f}, {a['steady_per_s']:.1f} | {p.actors} x {p.cpus:g}, "
              f"{b['startup_s']:.1f}, {b['steady_per_s']:.1f} | {b['steady_per_s'] / a['steady_per_s']:.2f} |", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
