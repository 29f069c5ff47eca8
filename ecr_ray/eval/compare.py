"""gen-compare: the untuned base model, the generator fine-tuned without retrieval and ECR (fine-tuned +
retrieval) answer the same dev turns; their text metrics and LLM scores side by side, beside the judge's
validity ->
reports/generation.{json,md,png} and generation-examples.md."""
from __future__ import annotations

from ecr_ray.artifacts import GENERATION_REPORTS, POOL, responses
from ecr_ray.config import Config
from ecr_ray.eval.generation import TEXT_KEYS, before_filter, judged, merged, text_report
from ecr_ray.eval.judge_validity import validity_table
from ecr_ray.gen.respond import VARIANTS, generate
from ecr_ray.gen.train import train_generator
from ecr_ray.rundir import RunDir

VARIANT_NAMES = {"base": "base model (no fine-tuning)", "no-retrieval": "fine-tuned, no retrieval", "ecr": "ECR: fine-tuned + retrieval"}


def compare(cfg: Config, run_dir: RunDir) -> dict:
    """The gen-compare stage."""
    from ecr_ray.report import comparison_chart, comparison_table

    train_generator(cfg, run_dir, retrieval=False, name=VARIANTS["no-retrieval"][0])
    json_path, md_path, png_path, examples_path = GENERATION_REPORTS
    ecr = before_filter(run_dir.read_table(responses("ecr", POOL)).to_pylist())
    prompts = [{k: v for k, v in r.items() if k not in ("response", "untrimmed", "prompt_truncated", "variant", "retrieval")} for r in ecr]
    by_variant = {}
    for variant in ("base", "no-retrieval"):
        generate(cfg, run_dir, prompts, variant, responses(variant, POOL))
        by_variant[variant] = before_filter(run_dir.read_table(responses(variant, POOL)).to_pylist())
    by_variant["ecr"] = ecr
    for rows in by_variant.values():
        rows.sort(key=lambda r: (r["conversation_id"], r["turn"]))
    scores, validity = judged(cfg, run_dir, by_variant, ecr)
    results = {VARIANT_NAMES[v]: merged(text_report(cfg, run_dir, rows), scores[v]) for v, rows in by_variant.items()}
    llm_keys = [f"llm_{c}" for c, how in validity["readings"].items() if how == "score"]  # each criterion in its reading in use
    pair_keys = [f"llm_pairwise_{c}" for c, how in validity["readings"].items() if how == "pairwise"]
    run_dir.write_json(json_path, {**results, "judge_validity": validity})
    table = (comparison_table(results, TEXT_KEYS) + "\n" + comparison_table(results, llm_keys + pair_keys + ["ok", "scored"]) + "\n"
             + ("llm_pairwise_*: the share of turns whose reply the judge prefers to the logged ReDial reply.\n\n" if pair_keys else "")
             + validity_table(validity, cfg.eval.scorer))
    run_dir.write_text(md_path, table)
    charts = [("text metrics (dev sample)", TEXT_KEYS), ("LLM scores 0-9", llm_keys)] + ([("preferred over the logged reply", pair_keys)] if pair_keys else [])
    run_dir.write_bytes(png_path, comparison_chart(results, charts))
    run_dir.write_text(examples_path, examples(by_variant))
    print(table, flush=True)
    return {name: {k: m[k] for k in ("hallucination_rate", "emotion_intensity", "bleu-2", *llm_keys, *pair_keys)} for name, m in results.items()}


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
