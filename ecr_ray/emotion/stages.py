"""The emotion stages: teacher -> annotation sample -> classifier -> inference on every split.

emotion-teacher      trains the GoEmotions teacher (only when emotion.source=teacher)
emotion-annotate     labels a sample of train-split seeker utterances (LLM endpoint or teacher);
                     LLM answers are cached in cache/annotations/ by (model, prompt version,
                     utterance), so a re-run or a crash resumes without asking again
emotion-classifier   trains the classifier on the annotations (Ray Train), metrics on a held-out part
emotion-infer-<g>    nine probabilities and top labels for every seeker utterance of group g
stance-train         the stance model on the questionnaires (emotion/stance.py), dev figures beside ECR's reading
stance-infer-<g>     the stance towards each KG movie every seeker utterance of group g names
"""
from __future__ import annotations

from functools import partial

from ecr_ray.artifacts import ANNOTATIONS, CLASSIFIER, POOL, STANCE, TEACHER, entity_stances, model, report, utterance_emotions
from ecr_ray.config import Config
from ecr_ray.emotion.annotate import PROMPT_VERSION, annotate_sample
from ecr_ray.emotion.infer import infer_group
from ecr_ray.emotion.labels import GOEMOTIONS_FILES
from ecr_ray.emotion.stance import infer_stances, train_stance
from ecr_ray.emotion.train import train_classifier, train_teacher
from ecr_ray.llm.client import require_api_key
from ecr_ray.stage import Stage, files_digest


def emotion_stages(cfg: Config) -> list[Stage]:
    e = cfg.emotion
    llm = e.source == "llm"
    if llm:
        require_api_key(e.llm, "emotion.source=llm", "emotion.llm")
    stages = [] if llm else [Stage(
        "emotion-teacher", run=train_teacher, outputs=(model(TEACHER), report(TEACHER)),
        config=("emotion.teacher", "emotion.eval_examples", "emotion.goemotions_dir"), inputs=_goemotions)]
    stages.append(Stage(
        "emotion-annotate", run=annotate_sample, outputs=(ANNOTATIONS,), needs=(f"prepare-{POOL}",) + (() if llm else ("emotion-teacher",)),
        config=("emotion.source", "emotion.sample_size", "emotion.sample_seed", "emotion.max_chars", "emotion.context_turns",
                "emotion.second_label_threshold", *(("emotion.llm",) if llm else ())),
        inputs=lambda c: {"prompt": PROMPT_VERSION} if c.emotion.source == "llm" else {}))
    stages.append(Stage(
        "emotion-classifier", run=train_classifier, outputs=(model(CLASSIFIER), report(CLASSIFIER)), needs=("emotion-annotate",),
        config=("emotion.classifier", "emotion.include_goemotions"), inputs=lambda c: _goemotions(c) if c.emotion.include_goemotions else {}))
    for group in [POOL, *sorted(cfg.data.split_files)]:
        stages.append(Stage(
            f"emotion-infer-{group}", run=partial(infer_group, group=group), outputs=(utterance_emotions(group),),
            needs=("emotion-classifier", f"prepare-{group}"), config=("emotion.second_label_threshold",)))
    stages.append(Stage("stance-train", run=train_stance, outputs=(model(STANCE), report(STANCE)), needs=(f"prepare-{POOL}", f"emotion-infer-{POOL}"),
                        config=("emotion.stance", "rec.beta", "rec.max_emotions"), version=2))
    for group in [POOL, *sorted(cfg.data.split_files)]:
        stages.append(Stage(f"stance-infer-{group}", run=partial(infer_stances, group=group), outputs=(entity_stances(group),),
                            needs=("stance-train", f"prepare-{group}")))
    return stages


def _goemotions(cfg: Config) -> dict:
    return {"goemotions": files_digest(cfg.data.path(cfg.emotion.goemotions_dir), GOEMOTIONS_FILES)}
