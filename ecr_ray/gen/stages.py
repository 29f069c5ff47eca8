"""The generation stages.

gen-reviews       reviews -> sentences -> KG entities -> emotion classifier (Ray Data) -> emotional
                  sentences and item triples: gen/reviews (per review), gen/retrieval (per item),
                  reports/reviews.json (how many reviews, sentences, items, triples survive each step)
gen-train         the generator (Ray Train) on review prompts with knowledge -> models/generator
gen-respond-<g>   a seeded sample of g's recommendation turns: the recommender's top item ->
                  knowledge -> prompt -> response (Ray Data actor pool) -> gen/responses/ecr/<g>

Their evaluation (gen-eval-<g>, gen-compare) is declared in `ecr_ray/eval/stages.py`.
"""
from __future__ import annotations

from functools import partial

from ecr_ray.artifacts import GENERATOR, POOL, RETRIEVAL, REVIEWS, SENTENCES, model, report, responses
from ecr_ray.config import Config, ConfigError
from ecr_ray.rec.examples import feeling_stages
from ecr_ray.gen.respond import respond_group
from ecr_ray.gen.reviews import process_reviews
from ecr_ray.gen.train import train_generator
from ecr_ray.rec.context import context_stage
from ecr_ray.stage import Stage, file_digest

TRAINING = ("gen.generator", "gen.max_entities", "gen.max_triples", "gen.grounded_targets", "models.allow_download")  # what decides a trained generator
RESPONDING = (*TRAINING, "gen.decoding", "gen.context_turns", "gen.sample_size", "gen.sample_seed")  # ... and its responses


def gen_stages(cfg: Config) -> list[Stage]:
    g = cfg.gen
    if g.generator.method == "lora" and g.generator.model is None:
        raise ConfigError("gen.generator.model=null (a random GPT-2) needs gen.generator.method=full")
    stages = [Stage("gen-reviews", run=process_reviews, outputs=(SENTENCES, REVIEWS, RETRIEVAL, report("reviews")),
                    needs=("emotion-classifier",), config=("gen.max_reviews", "gen.min_sentence_words", "gen.emotion_threshold",
                            "gen.min_emotional_share"),
                    inputs=_review_files),
              Stage("gen-train", run=train_generator, outputs=(model(GENERATOR), report(GENERATOR)), needs=("gen-reviews",), config=TRAINING)]
    for grp in [POOL, *sorted(cfg.data.split_files)]:
        stages.append(Stage(f"gen-respond-{grp}", run=partial(respond_group, group=grp), outputs=(responses("ecr", grp),),
                            needs=("gen-train", "rec-train", *feeling_stages(cfg, grp), *context_stage(cfg, grp)), config=RESPONDING,
                            version=3))  # 3: a named movie is left out under every entity of its title
    return stages


def _review_files(cfg: Config) -> dict:
    g = cfg.gen
    files = [g.train_reviews_file] + ([g.extra_reviews_file] if g.extra_reviews_file else [])
    return {"files": {f: file_digest(cfg.data.path(f)) for f in files}}
