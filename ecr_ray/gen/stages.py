"""The generation stages.

gen-reviews       reviews -> sentences -> KG entities -> emotion classifier (Ray Data) -> emotional
                  sentences and item triples: gen/reviews (per review), gen/retrieval (per item),
                  reports/reviews.json (how many reviews, sentences, items, triples survive each step)
gen-train         the generator (Ray Train) on review prompts with knowledge -> models/generator
gen-respond-<g>   a seeded sample of g's recommendation turns: the recommender's top item ->
                  knowledge -> prompt -> response (Ray Data actor pool) -> gen/responses/ecr/<g>
gen-eval-<g>      Dist-1/2, BLEU, item mentions, hallucinations, emotion intensity, LLM scores
                  -> reports/gen-eval-<g>.json (the pool's dev sample -> gen-eval-dev.json)
gen-compare       base model / fine-tuned without retrieval / ECR on the dev sample -> reports/
                  generation.{json,md,png} and generation-examples.md (optional: `ecr-ray compare`)
"""
from __future__ import annotations

import dataclasses
import hashlib
from functools import partial

import numpy as np
import pyarrow as pa

from ecr_ray.config import Config, ConfigError
from ecr_ray.data.kg import load_kg
from ecr_ray.data.prepare import POOL, prepared
from ecr_ray.llm_client import ERROR, FAILED, OK, ask_pending, best_results, check_answered, read_cache, require_api_key, this_run
from ecr_ray.pipeline import Stage, file_digest
from ecr_ray.rundir import RunDir

REVIEWS, RETRIEVAL, SENTENCES, SCORES = "gen/reviews", "gen/retrieval", "gen/sentences", "cache/scores"
TRAIN, COMPARE = "gen-train", "gen-compare"
# variant -> (model folder under models/ or None for the untuned base, retrieval in the prompt)
VARIANTS = {"base": (None, True), "no-retrieval": ("generator-no-retrieval", False), "ecr": ("generator", True)}
VARIANT_NAMES = {"base": "base model (no fine-tuning)", "no-retrieval": "fine-tuned, no retrieval", "ecr": "ECR: fine-tuned + retrieval"}
SCORER_CPUS = 0.25  # a scoring actor only waits on the endpoint
SCORER_BATCH = 8  # responses per scoring batch (a cache part)
TEXT_KEYS = ["dist-1", "dist-2", "bleu-1", "bleu-2", "bleu-4", "item_mention_rate", "hallucination_rate", "emotion_intensity"]
_RUNTIME_ONLY = ("review_actors", "review_actor_cpus", "review_batch_size", "actors", "actor_cpus", "actor_gpus", "batch_size", "scorer_actors")


def responses(variant: str, group: str) -> str:
    return f"gen/responses/{variant}/{group}"


def eval_report(group: str) -> str:
    return f"reports/gen-eval-{'dev' if group == POOL else group}.json"


def gen_stages(cfg: Config) -> list[Stage]:
    from ecr_ray.gen.model import METHODS

    g = cfg.gen
    if g.generator.method not in METHODS:
        raise ConfigError(f"gen.generator.method should be one of {METHODS}, got {g.generator.method!r}")
    if g.generator.method == "lora" and g.generator.model is None:
        raise ConfigError("gen.generator.model=null (a random GPT-2) needs gen.generator.method=full")
    require_api_key(g.scorer, "the generation scorer", "gen.scorer")
    groups = [POOL, *sorted(cfg.data.split_files)]
    context = (lambda grp: (f"rec-context-{grp}",)) if cfg.rec.context_encoder == "minilm" else (lambda grp: ())
    stages = [Stage("gen-reviews", run=process_reviews, outputs=(SENTENCES, REVIEWS, RETRIEVAL, "reports/reviews.json"),
                    needs=("emotion-classifier",), key=_reviews_key),
              Stage(TRAIN, run=partial(train_generator, retrieval=True), outputs=("models/generator", "reports/generator.json"),
                    needs=("gen-reviews",), key=_train_key)]
    for grp in groups:
        stages.append(Stage(f"gen-respond-{grp}", run=partial(respond_group, group=grp), outputs=(responses("ecr", grp),),
                            needs=(TRAIN, "rec-train", f"emotion-infer-{grp}", *context(grp)), key=_respond_key))
        stages.append(Stage(f"gen-eval-{grp}", run=partial(evaluate_group, group=grp), outputs=(eval_report(grp),),
                            needs=(f"gen-respond-{grp}",), key=_score_key))
    stages.append(Stage(COMPARE, run=compare, needs=(f"gen-respond-{POOL}",), optional=True,
                        key=lambda c: _train_key(c) | _respond_key(c) | _score_key(c),
                        outputs=("models/generator-no-retrieval", *(responses(v, POOL) for v in ("base", "no-retrieval")),
                                 "reports/generation.json", "reports/generation.md", "reports/generation.png", "reports/generation-examples.md")))
    return stages


def _reviews_key(cfg: Config) -> dict:
    g = cfg.gen
    files = [g.train_reviews_file] + ([g.extra_reviews_file] if g.extra_reviews_file else [])
    return {"files": {f: file_digest(cfg.data.path(f)) for f in files},
            **{k: getattr(g, k) for k in ("max_reviews", "min_sentence_words", "emotion_threshold")}}


def _generator_key(cfg: Config) -> dict:
    key = dataclasses.asdict(cfg.gen.generator)
    if key["dtype"] == "float32":  # what every generator trained before the knob used: those runs stay up to date
        del key["dtype"]
    return key


def _train_key(cfg: Config) -> dict:
    return {"generator": _generator_key(cfg), "max_entities": cfg.gen.max_entities,
            "max_triples": cfg.gen.max_triples, "allow_download": cfg.models.allow_download}


def _respond_key(cfg: Config) -> dict:
    skip = (*_RUNTIME_ONLY, "scorer", "score_sample", "score_seed")
    return {**{k: v for k, v in dataclasses.asdict(cfg.gen).items() if k not in skip}, "generator": _generator_key(cfg)}


def _score_key(cfg: Config) -> dict:
    return {"scorer": dataclasses.asdict(cfg.gen.scorer), "score_sample": cfg.gen.score_sample, "score_seed": cfg.gen.score_seed}


# --- reviews -----------------------------------------------------------------------------------

def process_reviews(cfg: Config, run_dir: RunDir) -> dict:
    import ray

    from ecr_ray.data.titles import MovieLinker
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.gen.reviews import ReviewSentences, item_neighbours, read_reviews, retrieval_base, review_knowledge
    from ecr_ray.ray_session import ensure_ray

    g, kg_dir = cfg.gen, str(cfg.data.path(cfg.data.kg_dir))
    kg = load_kg(kg_dir)
    reviews = read_reviews(cfg.data.path(g.train_reviews_file), g.extra_reviews_file and cfg.data.path(g.extra_reviews_file), g.max_reviews)
    movies = MovieLinker(kg)
    linked = sum(movies.link(r["title"]) is not None for r in reviews if r["title"])
    ensure_ray(cfg.ray)
    (ray.data.from_items(reviews, override_num_blocks=max(1, min(16, len(reviews) // 100)))
     .map_batches(ReviewSentences, batch_format="pyarrow", batch_size=64, fn_constructor_kwargs={"kg_dir": kg_dir, "min_words": g.min_sentence_words},
                  compute=ray.data.ActorPoolStrategy(size=1), num_cpus=g.review_actor_cpus)
     .repartition(target_num_rows_per_block=8 * g.review_batch_size)  # sentences outnumber reviews: blocks for the pool
     .map_batches(EmotionPredictor, batch_format="pyarrow", batch_size=g.review_batch_size,
                  fn_constructor_kwargs={"model_dir": run_dir.location("models/emotion_classifier"),
                                         "second_threshold": cfg.emotion.second_label_threshold, "batch_size": g.review_batch_size},
                  compute=ray.data.ActorPoolStrategy(size=g.review_actors), num_cpus=g.review_actor_cpus,
                  num_gpus=cfg.emotion.infer_actor_gpus)
     .write_parquet(run_dir.location(SENTENCES)))
    sentences = run_dir.read_table(SENTENCES).to_pylist() if run_dir.exists(SENTENCES) else []
    kept, funnel = review_knowledge(sentences, item_neighbours(kg), g.emotion_threshold)
    originals = {r["review_id"]: r for r in reviews}
    for r in kept:
        r["context"] = originals[r["review_id"]]["context"]
    base = retrieval_base(kept)
    if not kept:
        raise RuntimeError(f"no review kept an emotional sentence out of {len(reviews)} (gen.emotion_threshold={g.emotion_threshold})")
    run_dir.write_parquet(f"{REVIEWS}/part-0.parquet", pa.Table.from_pylist(kept))
    run_dir.write_parquet(f"{RETRIEVAL}/part-0.parquet", pa.Table.from_pylist(base))
    report = {"reviews_read": len(reviews), "reviews_linked_to_item": linked, **funnel,
              "training_reviews": sum(r["source"] == "train" and bool(r["context"]) for r in kept),
              "items": len(base), "items_with_triples": sum(bool(b["triples"]) for b in base)}
    run_dir.write_json("reports/reviews.json", report)
    return report


def _retriever(cfg: Config, run_dir: RunDir):
    from ecr_ray.gen.retrieval import Retriever

    return Retriever(load_kg(cfg.data.path(cfg.data.kg_dir)), run_dir.read_table(RETRIEVAL).to_pylist())


# --- training ----------------------------------------------------------------------------------

def _held_out(review_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(f"gen-holdout:{review_id}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def training_examples(cfg: Config, run_dir: RunDir, retrieval: bool) -> tuple[list[dict], list[dict], int]:
    """(train, validation) tokenised examples from the reviews that answer a seeker utterance; truncated prompts."""
    from ecr_ray.gen.model import load_tokenizer
    from ecr_ray.gen.prompts import PromptBuilder
    from ecr_ray.gen.retrieval import item_title

    g, gen = cfg.gen.generator, cfg.gen
    retriever = _retriever(cfg, run_dir)
    reviews = sorted((r for r in run_dir.read_table(REVIEWS).to_pylist() if r["context"]),
                     key=lambda r: hashlib.sha256(f"{g.seed}:{r['review_id']}".encode()).hexdigest())  # seeded order
    builder = PromptBuilder(load_tokenizer(dataclasses.asdict(g), cfg.models.allow_download), g.max_length, g.response_tokens, retrieval)
    train, val = [], []
    for r in reviews:
        held = _held_out(r["review_id"], g.holdout_fraction)
        if not held and g.max_examples is not None and len(train) >= g.max_examples:
            continue
        knowledge = retriever.knowledge(r["item"], gen.max_entities, gen.max_triples, r["entities"], r["triples"])
        (val if held else train).append(builder.example(r["context"], item_title(retriever.kg, r["item"]), knowledge, r["response"]))
    return train, val, builder.truncated


def train_generator(cfg: Config, run_dir: RunDir, retrieval: bool, name: str = "generator") -> dict:
    from ecr_ray.gen.train import fit_generator

    train, val, truncated = training_examples(cfg, run_dir, retrieval)
    metrics = fit_generator(cfg, dataclasses.asdict(cfg.gen.generator), name, train, val, run_dir, {"retrieval": retrieval})
    report = {"train_examples": len(train), "val_examples": len(val), "truncated_prompts": truncated, "retrieval": retrieval,
              "training": metrics}
    run_dir.write_json(f"reports/{name}.json", report)
    return {"train_examples": len(train), "val_examples": len(val), "truncated_prompts": truncated,
            **{k: metrics.get(k) for k in ("epochs_run", "train_loss", "val_loss")}}


# --- responses ---------------------------------------------------------------------------------

def dialogue_prompts(cfg: Config, run_dir: RunDir, group: str) -> list[dict]:
    """A seeded sample of the group's recommendation turns (the pool: its dev split), each with the
    recommender's top item and that item's knowledge."""
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.rec.checkpoint import load_recommender
    from ecr_ray.rec.features import context_text
    from ecr_ray.rec.stages import MODEL, load_examples, recommend_rows

    g = cfg.gen
    rows, _ = load_examples(cfg, run_dir, group)
    first = {}
    for r in rows:
        if group != POOL or r["split"] == "dev":
            first.setdefault((r["conversation_id"], r["turn"]), r)
    keys = sorted(first, key=lambda k: hashlib.sha256(f"{g.sample_seed}:{k[0]}:{k[1]}".encode()).hexdigest())[: g.sample_size]
    if not keys:
        raise RuntimeError(f"split {group!r} has no recommendation turn with a target item in the KG: nothing to answer")
    sample = [first[k] for k in sorted(keys)]
    model, _ = load_recommender(run_dir.local_copy(f"models/{MODEL}"), cfg.rec, cfg.models.allow_download)
    retriever = _retriever(cfg, run_dir)
    item_ids = retriever.kg.item_ids
    top = recommend_rows(model, sample, cfg.rec, {int(e): i for i, e in enumerate(item_ids)})
    turns = {(t["conversation_id"], t["turn"]): t for t in run_dir.read_table(prepared(group, "rec_turns")).to_pylist()}
    out = []
    for row, index in zip(sample, top, strict=True):
        turn, item = turns[(row["conversation_id"], row["turn"])], int(item_ids[index])
        k = retriever.knowledge(item, g.max_entities, g.max_triples)
        out.append({"conversation_id": row["conversation_id"], "turn": row["turn"], "reference": turn["response"],
                    "context": context_text(turn["context"][-g.context_turns:], turn["context_roles"][-g.context_turns:]),
                    "item": item, "title": item_title(retriever.kg, item), "target_item": int(item_ids[row["item"]]),
                    "entities": k["entities"], "triples": k["triples"], "entity_ids": k["entity_ids"],
                    "triple_ids": k["triple_ids"]})
    return out


def generate(cfg: Config, run_dir: RunDir, prompts: list[dict], variant: str, out: str) -> dict:
    """Responses of one variant for the prompts (Ray Data actor pool) -> parquet at `out`."""
    import ray

    from ecr_ray.gen.generate import ResponseGenerator, decoding_settings
    from ecr_ray.ray_session import ensure_ray

    ensure_ray(cfg.ray)
    g = cfg.gen
    folder, retrieval = VARIANTS[variant]
    if folder and not run_dir.exists(f"models/{folder}"):
        raise RuntimeError(f"no trained generator in {run_dir.location(f'models/{folder}')}")
    (ray.data.from_items([{**p, "variant": variant, "retrieval": retrieval} for p in prompts],
                         override_num_blocks=max(1, -(-len(prompts) // g.batch_size)))
     .map_batches(ResponseGenerator, batch_format="pyarrow", batch_size=g.batch_size,
                  fn_constructor_kwargs={"model_dir": folder and run_dir.location(f"models/{folder}"),
                                         "generator": dataclasses.asdict(g.generator), "decoding": decoding_settings(g), "retrieval": retrieval,
                                         "allow_download": cfg.models.allow_download, "threads": max(1, int(g.actor_cpus))},
                  compute=ray.data.ActorPoolStrategy(size=g.actors), num_cpus=g.actor_cpus, num_gpus=g.actor_gpus)
     .write_parquet(run_dir.location(out)))
    table = run_dir.read_table(out, columns=["response", "prompt_truncated"])
    return {"responses": table.num_rows, "truncated_prompts": sum(table.column("prompt_truncated").to_pylist()),
            "empty_responses": sum(not r for r in table.column("response").to_pylist())}


def respond_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    return generate(cfg, run_dir, dialogue_prompts(cfg, run_dir, group), "ecr", responses("ecr", group))


# --- evaluation --------------------------------------------------------------------------------

def text_report(cfg: Config, run_dir: RunDir, rows: list[dict]) -> dict:
    """Text metrics of one variant's responses (hallucinations against its own prompt's knowledge)."""
    from ecr_ray.data.linking import TextEntityLinker
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.eval.text_metrics import text_metrics
    from ecr_ray.gen.retrieval import Retriever

    kg = load_kg(cfg.data.path(cfg.data.kg_dir))
    linker, hops = TextEntityLinker(kg), Retriever(kg, [])
    for r in rows:
        shown = set(r["entity_ids"]) | {e for t in r["triple_ids"] for e in t} if r["retrieval"] else set()
        r["named"], r["allowed"] = linker.link(r["response"]), shown | hops.one_hop(r["item"]) | {r["item"]}
    predictor = EmotionPredictor(run_dir.local_copy("models/emotion_classifier"), cfg.emotion.second_label_threshold)
    return text_metrics(rows, predictor.predict([r["response"] for r in rows]))


def score_sample(cfg: Config, rows: list[dict]) -> list[dict]:
    """The seeded sample of responses the LLM scorer rates (the same turns for every variant)."""
    g = cfg.gen
    order = sorted(rows, key=lambda r: hashlib.sha256(f"{g.score_seed}:{r['conversation_id']}:{r['turn']}".encode()).hexdigest())
    return order[: g.score_sample]


def llm_scores(cfg: Config, run_dir: RunDir, by_variant: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean 0-9 scores per variant from the configured endpoint (the local server when none), cached."""
    from ecr_ray.eval.scorer import CRITERIA, ResponseScorer, SCORE_SCHEMA, score_key

    s, g = cfg.gen.scorer, cfg.gen
    samples = {v: [{"key": score_key(s.model, r["context"], r["title"], r["response"]), "context": r["context"], "title": r["title"],
                    "response": r["response"]} for r in score_sample(cfg, rows)] for v, rows in by_variant.items()}
    cached = best_results(read_cache(run_dir, SCORES, SCORE_SCHEMA))
    pending = list({x["key"]: x for rows in samples.values() for x in rows if x["key"] not in cached}.values())
    run_id = ask_pending(cfg, run_dir, SCORES, ResponseScorer, pending, s, g.scorer_actors, SCORER_CPUS, SCORER_BATCH,
                         server_model=s.model) if pending else None
    rows = read_cache(run_dir, SCORES, SCORE_SCHEMA)
    mine = this_run(rows, run_id)
    check_answered(mine, len(pending), s, "gen.scorer", "responses")
    results = best_results(rows, keep_errors=True)
    out = {}
    for variant, sample in samples.items():
        got = [results[x["key"]] for x in sample]
        ok = [r for r in got if r["status"] == OK]
        out[variant] = {"scored": len(sample), "ok": len(ok), "failed": sum(r["status"] == FAILED for r in got),
                        "unanswered": sum(r["status"] == ERROR for r in got), "requests_this_run": sum(r["requests"] for r in mine),
                        **{f"llm_{c}": float(np.mean([r[c] for r in ok])) if ok else None for c in CRITERIA}}
    return out


def evaluate_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    rows = run_dir.read_table(responses("ecr", group)).to_pylist()
    report = {**text_report(cfg, run_dir, rows), "scorer": {"model": cfg.gen.scorer.model, "base_url": cfg.gen.scorer.base_url}}
    report.update(llm_scores(cfg, run_dir, {"ecr": rows})["ecr"])
    run_dir.write_json(eval_report(group), report)
    return {k: v for k, v in report.items() if not isinstance(v, dict)}


# --- comparison --------------------------------------------------------------------------------

def compare(cfg: Config, run_dir: RunDir) -> dict:
    from ecr_ray.eval.scorer import CRITERIA
    from ecr_ray.report import comparison_chart, comparison_table

    train_generator(cfg, run_dir, retrieval=False, name=VARIANTS["no-retrieval"][0])
    ecr = run_dir.read_table(responses("ecr", POOL)).to_pylist()
    prompts = [{k: v for k, v in r.items() if k not in ("response", "prompt_truncated", "variant", "retrieval")} for r in ecr]
    by_variant = {}
    for variant in ("base", "no-retrieval"):
        generate(cfg, run_dir, prompts, variant, responses(variant, POOL))
        by_variant[variant] = run_dir.read_table(responses(variant, POOL)).to_pylist()
    by_variant["ecr"] = ecr
    for rows in by_variant.values():
        rows.sort(key=lambda r: (r["conversation_id"], r["turn"]))
    scores = llm_scores(cfg, run_dir, by_variant)
    results = {VARIANT_NAMES[v]: {**text_report(cfg, run_dir, rows), **scores[v]} for v, rows in by_variant.items()}
    llm_keys = [f"llm_{c}" for c in CRITERIA]
    run_dir.write_json("reports/generation.json", results)
    table = comparison_table(results, TEXT_KEYS) + "\n" + comparison_table(results, llm_keys + ["ok", "scored"])
    run_dir.write_text("reports/generation.md", table)
    run_dir.write_bytes("reports/generation.png", comparison_chart(results, [("text metrics (dev sample)", TEXT_KEYS),
                                                                             ("LLM scores 0-9", llm_keys)]))
    run_dir.write_text("reports/generation-examples.md", examples(by_variant))
    print(table, flush=True)
    return {name: {k: m[k] for k in ("hallucination_rate", "emotion_intensity", "bleu-2", "llm_informativeness")} for name, m in results.items()}


def examples(by_variant: dict[str, list[dict]], n: int = 3) -> str:
    """The first n turns: context, item, retrieved knowledge and each variant's response."""
    parts = []
    for i, row in enumerate(by_variant["ecr"][:n]):
        parts.append(f"### Example {i + 1}\n\n**Context**\n\n```\n{row['context']}\n```\n\n**Item**: {row['title']}\n\n"
                     f"**Retrieved**: entities {row['entities']}; triples {[' | '.join(t) for t in row['triples']]}\n\n"
                     f"**Dataset response**: {row['reference']}\n\n")
        for variant, rows in by_variant.items():
            parts.append(f"- **{VARIANT_NAMES[variant]}**: {rows[i]['response']}\n")
        parts.append("\n")
    return "".join(parts)
