"""The run's report (`reports/run.md`): every stage's wall time and the final figures, beside the
paper's where they measure the same thing, so one file answers "how long, and how good"."""
from __future__ import annotations

# ECR (Zhang et al., RecSys 2024) on ReDial: the recommender on the official test split (Table 2), the
# classifier on GPT-3.5-turbo labels. Our dev split and teacher labels differ: beside, not against.
PAPER = {
    ("emotion-classifier", "recall@2"): 0.8775,
    ("rec-eval-pool", "recall@1"): 0.049, ("rec-eval-pool", "recall@10"): 0.220, ("rec-eval-pool", "recall@50"): 0.428,
    ("rec-eval-pool", "recall_true@1"): 0.055, ("rec-eval-pool", "recall_true@10"): 0.238,
    ("rec-eval-pool", "recall_true@50"): 0.452, ("rec-eval-pool", "auc"): 0.541,
}

FIGURES = [  # (stage, summary key, what it is)
    ("prepare-pool", "movie_mentions_linked", "movie mentions linked to the KG"),
    ("linking-report", "entity_f1", "entity linking F1 against UniCRS' entity lists"),
    ("emotion-teacher", "test_recall@2", "teacher Recall@2, GoEmotions test mapped to the nine emotions"),
    ("emotion-classifier", "recall@1", "emotion classifier Recall@1 (held-out annotations)"),
    ("emotion-classifier", "recall@2", "emotion classifier Recall@2 (held-out annotations)"),
    ("emotion-classifier", "macro_f1", "emotion classifier macro-F1"),
    *[("rec-eval-pool", k, f"recommender {label} (dev split)") for k, label in [
        ("recall@1", "R@1"), ("recall@10", "R@10"), ("recall@50", "R@50"), ("recall_true@1", "RT@1"),
        ("recall_true@10", "RT@10"), ("recall_true@50", "RT@50"), ("auc", "AUC")]],
    ("gen-train", "val_loss", "generator validation loss (held-out reviews)"),
    *[("gen-eval-pool", k, f"responses: {label} (dev turns)") for k, label in [
        ("dist-1", "Dist-1"), ("dist-2", "Dist-2"), ("bleu-1", "BLEU-1"), ("bleu-2", "BLEU-2"), ("item_mention_rate", "item mentioned"),
        ("hallucination_rate", "hallucination rate"), ("emotion_intensity", "emotion intensity (classifier)"),
        ("llm_emotional_intensity", "LLM score: emotional intensity"), ("llm_emotional_persuasiveness", "LLM score: emotional persuasiveness"),
        ("llm_logic_persuasiveness", "LLM score: logic persuasiveness"), ("llm_informativeness", "LLM score: informativeness"),
        ("llm_lifelikeness", "LLM score: lifelikeness")]],
]


def run_report(summaries: dict[str, dict], preset: str, location: str, wall_s: float) -> str:
    """Markdown: a row per stage (its wall time when it last ran, and whether this invocation ran it), then the
    figures (with their 95% interval over dialogues where the stage gives one)."""
    lines = [f"# Run report: preset `{preset}`, {location}", "",
             "| stage | wall time | this invocation |", "|---|---:|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {_duration(s.get('seconds', 0))} | {'reused (up to date)' if s.get('skipped') else 'ran'} |")
    total = sum(s.get("seconds", 0) for s in summaries.values())
    ran = sum(s.get("seconds", 0) for s in summaries.values() if not s.get("skipped"))
    lines += [f"| **all stages** | **{_duration(total)}** | {_duration(ran)} run now; this invocation took {_duration(wall_s)} |", "",
              "| figure | this run | paper |", "|---|---:|---:|"]
    for stage, key, label in FIGURES:
        if stage in summaries and key in summaries[stage]:
            paper = PAPER.get((stage, key))
            interval = summaries[stage].get("intervals", {}).get(key)
            shown = _value(summaries[stage][key]) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
            lines.append(f"| {label} | {shown} | {'' if paper is None else _value(paper)} |")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _value(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
