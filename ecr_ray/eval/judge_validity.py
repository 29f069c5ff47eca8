"""Can the judge tell? Per criterion, the turn's real reply against the same reply changed in the one way that
criterion must punish (a known direction), scored for the same turn; AUC per criterion, intervals over dialogues.

informativeness           the title and the KG entities the reply names, each replaced by "it"
logic_persuasiveness      the same reply, scored as if another movie (another turn's target) were recommended
lifelikeness              the reply's words shuffled (seeded)
emotional_*               the reply without its emotional sentences (the emotion classifier's), on the turns
                          that have one; "You could watch <title>." where nothing else is left

A turn whose reply cannot be changed that way (it names nothing; it has no emotional sentence) sits out that
criterion. Asked pairwise (`pairwise_validity`, an in-process judge), the AUC is the share of turns whose real reply
it prefers. The judge is valid when every criterion's AUC, in the reading `eval.readings` names, reaches VALID_AUC."""
from __future__ import annotations

import random
import re

import numpy as np

from ecr_ray.artifacts import CLASSIFIER, model
from ecr_ray.config import Config
from ecr_ray.eval.intervals import dialogue_intervals
from ecr_ray.eval.judge import CRITERIA
from ecr_ray.llm.client import OK
from ecr_ray.rundir import RunDir

VALID_AUC = 0.75
NEGATIVES = {"informativeness": "deinformed", "logic_persuasiveness": "other movie", "lifelikeness": "shuffled",
             "emotional_intensity": "unemotional", "emotional_persuasiveness": "unemotional"}
KINDS = ("real", "deinformed", "other movie", "shuffled", "unemotional")  # what the judge scores per turn, in this order


def validity_asked(cfg: Config, run_dir: RunDir, sample: list[dict]) -> dict[str, list[dict | None]]:
    """Per kind, the row {context, title, response} the judge is asked about for each turn of `sample`
    {conversation_id, turn, context, target_title, reference} (None where the turn sits that kind out)."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.emotion.infer import EmotionPredictor
    from ecr_ray.gen.retrieval import Grounding
    from ecr_ray.gen.reviews import emotion_score, split_sentences

    grounding = Grounding(load_kg(cfg.data.path(cfg.data.kg_dir)))
    predictor = EmotionPredictor(run_dir.local_copy(model(CLASSIFIER)), cfg.emotion.second_label_threshold)
    sentences = [split_sentences(r["reference"], 1) for r in sample]
    probs = iter(predictor.predict([s for ss in sentences for s in ss]))
    emotional = [[emotion_score(next(probs)) >= cfg.gen.emotion_threshold for _ in ss] for ss in sentences]
    titles = [r["target_title"] for r in sample]
    out: dict[str, list[dict | None]] = {kind: [] for kind in KINDS}
    for i, r in enumerate(sample):
        ask = lambda response, title=r["target_title"], r=r: {"context": r["context"], "title": title, "response": response}  # noqa: E731
        other = next((t for t in titles[i + 1:] + titles[:i] if t.lower() != r["target_title"].lower()), None)
        kept = [s for s, e in zip(sentences[i], emotional[i], strict=True) if not e]
        out["real"].append(ask(r["reference"]))
        deinformed = _deinformed(r["reference"], r["target_title"], grounding)
        out["deinformed"].append(deinformed and ask(deinformed))
        out["other movie"].append(other and ask(r["reference"], other))
        out["shuffled"].append(ask(_shuffled(r["reference"], f"{r['conversation_id']}:{r['turn']}")) if len(r["reference"].split()) > 2 else None)
        out["unemotional"].append(ask(" ".join(kept) or f"You could watch {r['target_title']}.") if any(emotional[i]) else None)
    return out


def _deinformed(text: str, title: str, grounding) -> str | None:
    """`text` with the title and every KG entity it names replaced by "it"; None when it names none."""
    from ecr_ray.data.kg import split_qualifier

    names = [title, *(split_qualifier(grounding.kg.names[e])[0] for e in grounding.linker.link(text))]
    pattern = re.compile("|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True)), re.IGNORECASE)
    changed = pattern.sub("it", text)
    return changed if changed != text else None


def _shuffled(text: str, seed: str) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def judge_validity(cfg: Config, sample: list[dict], asked: dict[str, list[dict | None]], results: list[dict]) -> dict:
    """Per criterion, the AUC of the real reply's score against its negative's (P(real higher), ties half) over the
    turns that have that negative, with its interval over dialogues; `results`: the judge's, for the rows of
    `asked` that are not None, kind after kind. `valid`: every criterion's AUC reaches VALID_AUC."""
    from ecr_ray.rec.metrics import auc

    answers = iter(results)
    scores = {kind: [None if row is None else next(answers) for row in rows] for kind, rows in asked.items()}
    value = lambda r, c: r[c] if r is not None and r["status"] == OK else np.nan  # noqa: E731
    dialogues = [r["conversation_id"] for r in sample]
    out = {"turns": len(sample), "valid_auc": VALID_AUC, "negatives": NEGATIVES}
    for criterion, kind in NEGATIVES.items():
        pairs = np.array([[value(scores["real"][i], criterion), value(scores[kind][i], criterion)] for i in range(len(sample))])
        have = ~np.isnan(pairs).any(1)

        def aucs(pick, pairs=pairs, have=have) -> dict:
            pick = pick[have[pick]]
            return {"auc": auc(pairs[pick, 0], pairs[pick, 1]) if len(pick) else None}

        spread = dialogue_intervals(aucs, dialogues, cfg.eval.intervals).get("auc")
        out[criterion] = {"negative": kind, "reading": "score", "turns": int(have.sum()), "auc": aucs(np.arange(len(sample)))["auc"], "interval": spread}
    out["valid"] = all((out[c]["auc"] or 0) >= VALID_AUC for c in CRITERIA)
    return out


def pairwise_validity(cfg: Config, sample: list[dict], asked: dict[str, list[dict | None]], judge, criteria=CRITERIA) -> dict:
    """Per criterion of `criteria`, the share of turns whose real reply an in-process judge prefers to its negative
    when shown both (`LocalJudge.prefer` above 0.5, ties half), with its interval over dialogues: the same negatives,
    except logic persuasiveness, against the real reply with the recommended title swapped for another turn's."""
    negatives = {c: "title swapped" if c == "logic_persuasiveness" else NEGATIVES[c] for c in criteria}
    from tqdm import tqdm

    prefs = {c: [] for c in criteria}
    for i, real in tqdm(enumerate(asked["real"]), total=len(asked["real"]), desc="judge, pairwise validity", mininterval=30):
        for kind in dict.fromkeys(negatives.values()):  # the criteria of one negative are asked together
            asking = [c for c in criteria if negatives[c] == kind]
            negative = _title_swapped(real, asked["other movie"][i]) if kind == "title swapped" else (asked[kind][i] or {}).get("response")
            got = judge.prefer(real["context"], real["title"], real["response"], negative, asking) if negative else {}
            for c in asking:
                prefs[c].append(got.get(c, np.nan))
    out = {"turns": len(sample), "valid_auc": VALID_AUC, "negatives": negatives, "reading": "pairwise"}
    dialogues = [r["conversation_id"] for r in sample]
    for criterion, kind in negatives.items():
        p = np.array(prefs[criterion], dtype=float)
        out[criterion] = {"negative": kind, "reading": "pairwise", "turns": int((~np.isnan(p)).sum()),
                          "auc": win_share(p, np.arange(len(p)))["share"],
                          "interval": dialogue_intervals(lambda pick, p=p: win_share(p, pick), dialogues, cfg.eval.intervals).get("share")}
    out["valid"] = all((out[c]["auc"] or 0) >= VALID_AUC for c in criteria)
    return out


def win_share(p: np.ndarray, pick: np.ndarray) -> dict:
    """The share of the picked preferences above 0.5 (ties half; NaN: not asked)."""
    v = p[pick][~np.isnan(p[pick])]
    return {"share": float(np.mean((v > 0.5) + 0.5 * (v == 0.5))) if len(v) else None}


def readings(cfg: Config) -> dict[str, str]:
    """How each criterion is read: "score" (0-9 alone) unless `eval.readings` says "pairwise"."""
    from ecr_ray.config import ConfigError

    asked = cfg.eval.readings
    if unknown := sorted(set(asked) - set(CRITERIA)):
        raise ConfigError(f"eval.readings names {unknown[0]!r}, not a criterion (known: {', '.join(CRITERIA)})")
    if bad := sorted(c for c, how in asked.items() if how not in ("score", "pairwise")):
        raise ConfigError(f"eval.readings.{bad[0]} should be 'score' or 'pairwise', got {asked[bad[0]]!r}")
    if "pairwise" in asked.values() and cfg.eval.scorer.base_url:
        raise ConfigError("a pairwise reading (eval.readings) needs the judge in-process: set eval.scorer.base_url to null")
    return {c: asked.get(c, "score") for c in CRITERIA}


def in_use(cfg: Config, by_score: dict, pairwise: dict | None) -> dict:
    """The validity of the readings `cfg` uses, criterion by criterion, beside both readings' full records; `valid`:
    every criterion's reading in use reaches VALID_AUC."""
    used = readings(cfg)
    out = {k: v for k, v in by_score.items() if k not in CRITERIA} | {"readings": used, "score": by_score}
    if pairwise:
        out["pairwise"] = pairwise
    for c, how in used.items():
        out[c] = {"reading": how, **(pairwise if how == "pairwise" else by_score)[c]}
    out.pop("negatives", None)  # each criterion's entry names its own
    out["valid"] = all((out[c]["auc"] or 0) >= VALID_AUC for c in CRITERIA)
    return out


def _title_swapped(real: dict, other: dict | None) -> str | None:
    """The real reply with the recommended title replaced by another movie's; None when it does not name it."""
    if other is None:
        return None
    changed = re.compile(re.escape(real["title"]), re.IGNORECASE).sub(other["title"], real["response"])
    return changed if changed != real["response"] else None


def validity_table(validity: dict, scorer) -> str:
    """The judge's validity as markdown, each criterion in the reading it is read in, with the verdict a reader
    needs before trusting the scores."""
    where = f"{scorer.model}{' at ' + scorer.base_url if scorer.base_url else ', in-process'}"
    rows = "".join(f"| {c} | {v.get('reading', 'score')} | {v['negative']} | {v['turns']} | " + ("n/a" if v["auc"] is None else f"{v['auc']:.3f}")
                   + (f" [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]" if v["interval"] else "") + " |\n"
                   for c in CRITERIA if c in validity for v in [validity[c]])
    verdict = (f"The judge's reading of every criterion tells its negative apart (AUC >= {validity['valid_auc']}); its scores can be read."
               if validity["valid"] else
               f"NOT VALID: at least one criterion's AUC is below {validity['valid_auc']}, so the scores above do not show what "
               "they name; treat them as unvalidated.")
    return (f"Judge validity ({where}; {validity['turns']} {validity.get('split', 'dev')} turns: the real reply against the same "
            "reply changed in the way each criterion punishes; score: each scored alone, AUC; pairwise: asked which of the two is "
            "better in both orders, the share preferring the real one)\n\n| criterion | reading | negative | turns | AUC [95%] |\n"
            "|---|---|---|---:|---:|\n" + rows + "\n" + verdict + "\n")
