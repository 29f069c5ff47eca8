"""The evaluation stages of generation.

gen-eval-served-<g>  the chat path: the same sampled turns answered through the chat API's parts and its
                  decoder (one decode each) -> gen/responses/served/<g>, and the metrics below ->
                  reports/gen-eval-served-<g>.json (the pool's dev sample -> gen-eval-served-dev.json)
gen-eval-<g>      Dist-1/2, BLEU, item mentions, hallucinations, emotion intensity, LLM scores of ECR's
                  batch responses -> reports/gen-eval-<g>.json (the pool's dev sample -> gen-eval-dev.json)
gen-compare       base model / fine-tuned without retrieval / ECR on the dev sample -> reports/
                  generation.{json,md,png} and generation-examples.md (optional: `ecr-ray compare`)
judge-check       the judge's validity on training-split turns -> reports/judge-check.json (optional:
                  `ecr-ray judge-check`; for choosing a judge without the dev turns)
"""
from __future__ import annotations

from functools import partial

from ecr_ray.artifacts import GENERATION_REPORTS, GENERATOR_NO_RETRIEVAL, POOL, model, report, responses, split_name
from ecr_ray.config import Config
from ecr_ray.rec.examples import feeling_stages
from ecr_ray.eval.compare import compare
from ecr_ray.eval.generation import evaluate_group
from ecr_ray.eval.judge_check import JUDGE_CHECK, judge_check
from ecr_ray.eval.judge_validity import readings
from ecr_ray.eval.served import SERVED, evaluate_served
from ecr_ray.llm.client import require_api_key
from ecr_ray.rec.context import context_stage
from ecr_ray.stage import Stage

SCORING = ("eval.scorer", "eval.readings", "eval.score_sample", "eval.score_seed", "gen.emotion_threshold")  # the generator and decoding: the needs
ANSWERING = ("gen.decoding", "gen.context_turns", "gen.sample_size", "gen.sample_seed")  # the chat path's (gen-train covers the generator)


def eval_stages(cfg: Config) -> list[Stage]:
    require_api_key(cfg.eval.scorer, "the generation scorer", "eval.scorer")
    readings(cfg)  # a bad eval.readings fails at planning, not after the responses
    stages = [Stage(f"gen-eval-{g}", run=partial(evaluate_group, group=g), outputs=(report(f"gen-eval-{split_name(g)}"),),
                    needs=(f"gen-respond-{g}",), config=SCORING, version=3)  # 3: eval.readings
              for g in [POOL, *sorted(cfg.data.split_files)]]
    stages += [Stage(f"gen-eval-{SERVED}-{g}", run=partial(evaluate_served, group=g), config=(*ANSWERING, *SCORING),
                     outputs=(responses(SERVED, g), report(f"gen-eval-{SERVED}-{split_name(g)}")),
                     needs=("gen-train", "rec-train", *feeling_stages(cfg, g), *context_stage(cfg, g)),
                     version=4)  # 3: the report records the decoding the chat then uses; 4: eval.readings
               for g in [POOL, *sorted(cfg.data.split_files)]]
    stages.append(Stage("gen-compare", run=compare, needs=(f"gen-respond-{POOL}",), optional=True, config=SCORING, version=3,
                        outputs=(model(GENERATOR_NO_RETRIEVAL), *(responses(v, POOL) for v in ("base", "no-retrieval")), *GENERATION_REPORTS)))
    stages.append(Stage("judge-check", run=judge_check, needs=(f"prepare-{POOL}", "emotion-classifier"), optional=True,
                        config=(*SCORING, "eval.check_turns", "gen.context_turns"), version=4,
                        outputs=(JUDGE_CHECK,)))
    return stages
