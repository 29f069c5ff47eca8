"""The run's report (`reports/run.md`): every stage's wall time and the final figures, each naming its
split, so one file answers "how long, and how good"; the paper's figures in a table of their own (another
split: never set beside ours as a comparison)."""
from __future__ import annotations

import os

# ECR (Zhang et al., RecSys 2024) on ReDial: the recommender on the official test split (Table 2), the
# classifier on GPT-3.5-turbo labels. Our dev split and teacher labels differ: a table of their own.
PAPER = {
    ("emotion-classifier", "recall@2"): 0.8775,
    ("rec-eval-pool", "recall@1"): 0.049, ("rec-eval-pool", "recall@10"): 0.220, ("rec-eval-pool", "recall@50"): 0.428,
    ("rec-eval-pool", "recall_true@1"): 0.055, ("rec-eval-pool", "recall_true@10"): 0.238,
    ("rec-eval-pool", "recall_true@50"): 0.452, ("rec-eval-pool", "auc"): 0.541,
}

SPLITS = {  # where each stage's figures come from
    "prepare-pool": "ReDial train pool", "linking-report": "UniCRS valid dialogues",
    "emotion-teacher": "GoEmotions test", "emotion-classifier": "held-out annotations",
    "rec-eval-pool": "pool dev", "gen-train": "held-out reviews", "stance-train": "pool dev (questionnaires)",
    "gen-eval-served-pool": "dev turns, chat path", "gen-eval-pool": "dev turns, batch path",  # the README says what each path is
}
RESPONSE_FIGURES = [("dist-1", "Dist-1"), ("dist-2", "Dist-2"), ("bleu-1", "BLEU-1"), ("bleu-2", "BLEU-2"), ("item_mention_rate", "item mentioned"),
                    ("hallucination_rate", "hallucination rate (wrong titles included, before any filter)"),
                    ("responses_with_wrong_title", "replies naming a wrong movie title"),
                    ("title_put_by_decoding", "replies whose title the decoding put in (gen.decoding.name_item)"),
                    ("emotion_intensity", "emotion intensity (classifier)"),
                    ("llm_emotional_intensity", "LLM score: emotional intensity"), ("llm_emotional_persuasiveness", "LLM score: emotional persuasiveness"),
                    ("llm_logic_persuasiveness", "LLM score: logic persuasiveness"), ("llm_informativeness", "LLM score: informativeness"),
                    ("llm_lifelikeness", "LLM score: lifelikeness"),
                    *[(f"llm_pairwise_{c}", f"LLM, preferred to the ReDial reply: {c.replace('_', ' ')}") for c in (
                        "emotional_intensity", "emotional_persuasiveness", "logic_persuasiveness", "informativeness", "lifelikeness")]]
PAPER_SPLIT = "ReDial's official test split (classifier: GPT-3.5 labels)"  # the paper's figures: not a split evaluated here

FIGURES = [  # (stage, summary key, what it is)
    ("prepare-pool", "movie_mentions_linked", "movie mentions linked to the KG"),
    ("linking-report", "entity_f1", "entity linking F1 against UniCRS' entity lists"),
    ("emotion-teacher", "test_recall@2", "teacher Recall@2, mapped to the nine emotions"),
    ("emotion-classifier", "recall@1", "emotion classifier Recall@1"),
    ("emotion-classifier", "recall@2", "emotion classifier Recall@2"),
    ("emotion-classifier", "macro_f1", "emotion classifier macro-F1"),
    ("stance-train", "macro_f1", "stance towards each named movie, macro-F1 (liked / disliked / no stance)"),
    ("stance-train", "utterance_macro_f1", "the same read ECR's way (the utterance's emotions as every movie's stance)"),
    ("stance-train", "recall_disliked", "stance: recall of disliked movies"),
    ("rec-eval-pool", "variant", "recommender variant (rec.variant)"),
    *[("rec-eval-pool", k, f"recommender {label}") for k, label in [
        ("recall@1", "R@1"), ("recall@10", "R@10"), ("recall@50", "R@50"), ("recall_true@1", "RT@1"),
        ("recall_true@10", "RT@10"), ("recall_true@50", "RT@50"), ("auc", "AUC"),
        ("recall_new@10", "R@10 on items not mentioned before"), ("recall_new@50", "R@50 on items not mentioned before")]],
    *[("rec-eval-pool", f"{name}: recall@{k}", f"{label} R@{k} (same examples)") for name, label in [
        ("paper", "ECR's model alone (the paper variant)"),
        ("channels alone", "the hybrid's count/copy channels alone"),
        ("popularity", "baseline popularity"), ("co-occurrence", "baseline co-occurrence"),
        ("co-occurrence + copy", "baseline co-occurrence + copy"),
        ("hybrid − channels alone", "paired difference: what the learned part adds,"),
        ("paper − co-occurrence", "paired difference: ECR's model alone minus co-occurrence,")] for k in (10, 50)],
    ("gen-train", "val_loss", "generator validation loss"),
    *[("gen-eval-served-pool", k, f"chat reply: {label}") for k, label in RESPONSE_FIGURES],
    *[("gen-eval-pool", k, f"batch response: {label}") for k, label in RESPONSE_FIGURES[:7]],  # the text figures; the judge's: reports/
]
FIGURE_STAGES = list(dict.fromkeys(stage for stage, _, _ in FIGURES))
RESULTS_BEGIN, RESULTS_END = "<!-- results:begin (ecr-ray results) -->", "<!-- results:end -->"


def machine_line() -> str:
    from ecr_ray.precision import cpu_capability, cpu_model

    return f"Machine: {cpu_model()}, {os.cpu_count()} cores; torch CPU capability {cpu_capability()}."


def run_report(summaries: dict[str, dict], preset: str, location: str, wall_s: float) -> str:
    """Markdown: the machine, a row per stage (its wall time when it last ran, and whether this invocation ran it),
    then the figures (with their 95% interval over dialogues where the stage gives one)."""
    lines = [f"# Run report: preset `{preset}`, {location}", "", machine_line(), "",
             "| stage | wall time | this invocation |", "|---|---:|---|"]
    for name, s in summaries.items():
        status = f"FAILED: {s['failed']}" if s.get("failed") else "reused (up to date)" if s.get("skipped") else "ran"
        lines.append(f"| {name} | {_duration(s.get('seconds', 0))} | {status} |")
    total = sum(s.get("seconds", 0) for s in summaries.values())
    ran = sum(s.get("seconds", 0) for s in summaries.values() if not s.get("skipped"))
    lines += [f"| **all stages** | **{_duration(total)}** | {_duration(ran)} run now; this invocation took {_duration(wall_s)} |", ""]
    return "\n".join(lines + figures_table(summaries, preset)) + "\n"


def figures_table(summaries: dict[str, dict], preset: str) -> list[str]:
    """The figures a run's stages report, each naming its split, with its 95% interval; then, in a table of its
    own, the paper's figures on its split."""
    lines = [f"| figure | split | ecr-ray `{preset}` [95% interval] |", "|---|---|---:|"]
    for stage, key, label in FIGURES:
        if stage in summaries and key in summaries[stage]:
            interval = summaries[stage].get("intervals", {}).get(key)
            shown = _value(summaries[stage][key]) + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
            lines.append(f"| {label} | {SPLITS[stage]} | {shown} |")
    labels = {(stage, key): label for stage, key, label in FIGURES}
    return [*lines, "", f"The paper's figures, on {PAPER_SPLIT}: another split than any above, so not a comparison.", "",
            "| figure | paper |", "|---|---:|", *(f"| {labels[k]} | {_value(v)} |" for k, v in PAPER.items())]


def results_page(run_dir, name: str, stale: set[str] = frozenset()) -> tuple[str, str]:
    """(reports/results.md, the table for the README) from a trained run's stage manifests: the figures its
    stages last wrote, whichever invocation ran them. A stage with no record, or `stale` (`pipeline.stale_stages`:
    its figures describe an earlier state of the run), is named under the table instead."""
    from ecr_ray.artifacts import RUN_REPORT, manifest

    recorded = [stage for stage in FIGURE_STAGES if run_dir.exists(manifest(stage))]
    if not recorded:
        raise FileNotFoundError(f"{run_dir.uri} holds no finished stage: run `ecr-ray run` into it first")
    records = {stage: run_dir.read_json(manifest(stage)) for stage in recorded if stage not in stale}
    preset = run_dir.read_json(manifest(recorded[0]))["config"]["name"]
    table = figures_table({stage: r["summary"] for stage, r in records.items()}, preset)
    absent = [f"{stage} ({'older than a stage it reads' if stage in recorded else 'no record'})" for stage in FIGURE_STAGES if stage not in records]
    if absent:
        table += ["", f"Not shown: the figures of {', '.join(absent)}; `ecr-ray run --config {preset} --run-dir {name}` "
                      "brings them up to date."]
    machine = next((ln for ln in run_dir.read_text(RUN_REPORT).splitlines() if ln.startswith("Machine:")), "Machine: not recorded.") \
        if run_dir.exists(RUN_REPORT) else "Machine: not recorded."
    verdict = validity_verdict(judge_validity_record(run_dir))
    table += [*([""] + [verdict] if verdict else [])]
    page = [f"# Results: run `{name}` (preset `{preset}`)", "",
            f"Written by `ecr-ray results --run-dir {name}` from that run's stage records; do not edit. {machine} "
            "Intervals: 95%, bootstrap over whole dialogues."
            + (" Chat replies are what a chat user gets (one decode, as served); batch responses are the preset's batch decoding "
               "of the same turns (its candidates, if any), both before any filter."
               if "gen-eval-served-pool" in records or "gen-eval-pool" in records else ""),
            "", *table, *audit_lines(run_dir), *validity_lines(judge_validity_record(run_dir))]
    return "\n".join(page) + "\n", "\n".join(table)


JUDGE_VALIDITY_FROM = {"train": "reports/judge-check.json", "dev": "reports/gen-eval-served-dev.json"}


def judge_validity_record(run_dir) -> dict:
    """Per criterion, the judge's validity in its reading in use on training turns (`ecr-ray judge-check`) and on the
    dev turns its chat-path scores come from: {criterion: {judge, reading, train: {auc, low, high, turns}, dev: {...}}}; {} when
    the run has neither report. A split whose report read the criterion another way is left out of it."""
    from ecr_ray.eval.judge import CRITERIA

    found = {}
    for split, path in JUDGE_VALIDITY_FROM.items():
        if run_dir.exists(path):
            record = run_dir.read_json(path)
            found[split] = record.get("judge_validity", record) | {"model": record.get("scorer", {}).get("model")}
    if "dev" not in found:
        return {}
    out, judge = {}, found["dev"]["model"]
    for c in CRITERIA:
        reading = found["dev"][c].get("reading", "score")
        out[c] = {"judge": judge, "reading": reading, **{split: {"auc": v[c]["auc"], "low": (v[c]["interval"] or [None])[0], "high": (v[c]["interval"] or [None, None])[1],
                                                 "turns": v[c]["turns"]}
                                         for split, v in found.items() if v[c].get("reading", "score") == reading and v["model"] == judge}}
    return out


def validity_verdict(record: dict) -> str:
    """One sentence under the figures: can the LLM judge's rows be read (every criterion valid on both splits)?"""
    from ecr_ray.eval.judge_validity import VALID_AUC

    if not record:
        return ""
    failing = {c: [s for s in ("train", "dev") if (v.get(s) or {}).get("auc") is None or v[s]["auc"] < VALID_AUC] for c, v in record.items()}
    failing = {c: f for c, f in failing.items() if f}
    judge = next(iter(record.values()))["judge"]
    if not failing:
        return f"The LLM judge ({judge}) tells each criterion's negative apart on training and dev turns (AUC >= {VALID_AUC}): its rows can be read."
    named = ", ".join(f"{c.replace('_', ' ')} ({'/'.join(f)})" for c, f in failing.items())
    return f"The LLM judge ({judge}) is NOT valid for {named} (AUC < {VALID_AUC}; reports/results.md): those rows do not measure quality."


def validity_lines(record: dict) -> list[str]:
    """The judge-validity record as a table under the results."""
    from ecr_ray.eval.judge_validity import VALID_AUC

    if not record:
        return []
    shown = lambda v: "not checked" if v is None or v["auc"] is None else (  # noqa: E731
        f"{v['auc']:.2f}" + (f" [{v['low']:.2f}, {v['high']:.2f}]" if v["low"] is not None else "") + f" ({v['turns']})")
    return ["", f"Judge validity ({next(iter(record.values()))['judge']}; [judge-validity.json](judge-validity.json)): per criterion, in the reading used, "
            f"how often the judge tells the real reply from the same reply changed the way that criterion punishes "
            f"(AUC, turns in brackets); valid at {VALID_AUC} on both splits.", "",
            "| criterion | reading | training turns | dev turns |", "|---|---|---:|---:|",
            *(f"| {c} | {v['reading']} | {shown(v.get('train'))} | {shown(v.get('dev'))} |" for c, v in record.items())]


def audit_lines(run_dir) -> list[str]:
    """The hallucination audit of the chat replies (`ecr-ray audit`), if the run has one: a paragraph under the table."""
    path = "reports/hallucination-audit-dev.json"
    a = run_dir.read_json(path) if run_dir.exists(path) else {}
    if not a.get("audited"):
        return []
    shown = lambda k: f"{a[k]:.2f} [{a['intervals'][k][0]:.2f}, {a['intervals'][k][1]:.2f}]" if k in a["intervals"] else f"{a[k]:.2f}"  # noqa: E731
    return ["", f"Hallucination audit ([audit page](hallucination-audit.md), rubric docs/hallucination-rubric.md): of {a['audited']} "
            f"dev chat replies, the rubric audit found a hallucination in {shown('audited_rate')}, the automatic detector in "
            f"{shown('automatic_rate')} (agreement {shown('agreement')}): the automatic rate counts only what the KG can name."
            + (f" A second, independent auditor: {two['second_rate']:.2f}, agreement with the first {two['agreement']:.2f} "
               f"(Cohen's kappa {two['kappa']:.2f})." if (two := a.get("second")) and two.get("kappa") is not None else "")]


def replace_results(readme: str, table: str) -> str:
    """The README with the table between its results markers replaced."""
    head, begin, rest = readme.partition(RESULTS_BEGIN)
    _, end, tail = rest.partition(RESULTS_END)
    if not begin or not end:
        raise ValueError(f"the README has no {RESULTS_BEGIN} ... {RESULTS_END} markers")
    return f"{head}{begin}\n{table}\n{end}{tail}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _value(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
