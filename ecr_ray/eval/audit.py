"""The hallucination audit: a seeded sample of the chat path's replies (gen-eval-served's), judged by a
person against a fixed rubric (docs/hallucination-rubric.md), beside the automatic rate
(`gen.retrieval.Grounding`): how far the metric can be trusted, and what it cannot see.

`ecr-ray audit` writes the sheet the auditor reads (each reply with its prompt, never the automatic
flags: the audit is blind) into the run directory; the verdicts go to a labels file (jsonl, one
{conversation_id, turn, response_sha, hallucinated, claims, dangling} per reply: ids and verdicts
only, no dialogue text); with that file the command sets the two side by side. A verdict counts only
for the reply it was given on: a reply that changed since (another run) is reported as unaudited.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

AUDIT_SIZE = 50  # replies per audit (the issue's)
AUDIT_SEED = 0


def response_sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def audit_sample(rows: list[dict], size: int = AUDIT_SIZE, seed: int = AUDIT_SEED) -> list[dict]:
    """A seeded sample of `size` replies, in (dialogue, turn) order."""
    order = sorted(rows, key=lambda r: (int(r["conversation_id"]), int(r["turn"])))
    keep = sorted(np.random.default_rng(seed).permutation(len(order))[:size].tolist())
    return [order[i] for i in keep]


def sheet(sample: list[dict]) -> str:
    """The auditor's sheet (markdown): each reply with what its prompt gave the generator."""
    parts = ["# Hallucination audit sheet\n\nJudge each reply by docs/hallucination-rubric.md against its prompt only; "
             "write one verdict line per reply into the labels file.\n"]
    for r in sample:
        triples = "; ".join(" | ".join(t) for t in r["triples"]) or "none"
        parts.append(f"## {r['conversation_id']}/{r['turn']} (response_sha {response_sha(r['response'])})\n\n"
                     f"Conversation:\n\n```\n{r['context'].strip()}\n```\n\nMovie to recommend: **{r['title']}**  \n"
                     f"Related entities: {', '.join(r['entities']) or 'none'}  \nKnowledge: {triples}\n\n"
                     f"Reply:\n\n> {r['response'].strip()}\n")
    return "\n".join(parts)


def read_labels(text: str) -> dict[tuple[int, int], dict]:
    """(conversation_id, turn) -> verdict, from the labels file's lines; a malformed line is an error naming it."""
    labels = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
            labels[(int(v["conversation_id"]), int(v["turn"]))] = {"sha": v["response_sha"], "hallucinated": bool(v["hallucinated"]),
                                                                    "claims": list(v.get("claims", [])), "dangling": bool(v.get("dangling", False))}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"labels line {n}: {err!r} (each line: a JSON object with conversation_id, turn, response_sha, hallucinated)") from err
    return labels


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Agreement of two yes/no raters beyond chance (None when chance agreement is total)."""
    observed = float(np.mean(a == b))
    chance = float(np.mean(a) * np.mean(b) + (1 - np.mean(a)) * (1 - np.mean(b)))
    return None if chance == 1 else (observed - chance) / (1 - chance)


def agreement(sample: list[dict], labels: dict, grounding, intervals) -> dict:
    """The audited and the automatic share of replies with a hallucination on the audited replies, their
    agreement (raw and Cohen's kappa) and where they differ, with intervals over dialogues."""
    from ecr_ray.eval.intervals import dialogue_intervals

    audited, stale, missing = [], [], []
    for r in sample:
        v = labels.get((int(r["conversation_id"]), int(r["turn"])))
        if v is None:
            missing.append(f"{r['conversation_id']}/{r['turn']}")
        elif v["sha"] != response_sha(r["response"]):
            stale.append(f"{r['conversation_id']}/{r['turn']}")
        else:
            named, unsupported = grounding.named(r["response"], r)
            audited.append({"row": r, "verdict": v, "auto": bool(unsupported), "flagged": [grounding.kg.names[e] for e in unsupported]})
    out = {"sample": len(sample), "audited": len(audited), "stale": stale, "missing": missing}
    if not audited:
        return out
    human = np.array([a["verdict"]["hallucinated"] for a in audited])
    auto = np.array([a["auto"] for a in audited])

    def stat(idx: np.ndarray) -> dict:
        return {"audited_rate": float(human[idx].mean()), "automatic_rate": float(auto[idx].mean()),
                "agreement": float((human[idx] == auto[idx]).mean())}

    dialogues = [a["row"]["conversation_id"] for a in audited]
    out.update(stat(np.arange(len(audited))), kappa=cohen_kappa(human, auto),
               intervals=dialogue_intervals(stat, dialogues, intervals),
               confusion={"both": int((human & auto).sum()), "audit only": int((human & ~auto).sum()),
                          "automatic only": int((~human & auto).sum()), "neither": int((~human & ~auto).sum())},
               dangling=float(np.mean([a["verdict"]["dangling"] for a in audited])),
               disagreements=[{"reply": f"{a['row']['conversation_id']}/{a['row']['turn']}", "audit": a["verdict"]["claims"],
                               "automatic": a["flagged"]} for a in audited if a["verdict"]["hallucinated"] != a["auto"]])
    return out


def inter_rater(sample: list[dict], first: dict, second: dict) -> dict:
    """Two auditors' verdicts on the replies both judged as they are now: each one's rate, their agreement, kappa."""
    pairs = []
    for r in sample:
        key, sha = (int(r["conversation_id"]), int(r["turn"])), response_sha(r["response"])
        a, b = first.get(key), second.get(key)
        if a and b and a["sha"] == sha == b["sha"]:
            pairs.append((a, b))
    a, b = (np.array([p[i]["hallucinated"] for p in pairs], dtype=bool) for i in (0, 1))
    return {"replies": len(pairs), "first_rate": float(a.mean()) if pairs else None, "second_rate": float(b.mean()) if pairs else None,
            "agreement": float((a == b).mean()) if pairs else None, "kappa": cohen_kappa(a, b) if pairs else None}


def audit_table(result: dict, labels_path: str) -> str:
    """reports/hallucination-audit.md."""
    if not result["audited"]:
        return f"# Hallucination audit\n\nNo reply of the sample has a current verdict in {labels_path}.\n"
    iv = result["intervals"]
    cell = lambda k: f"{result[k]:.2f}" + (f" [{iv[k][0]:.2f}, {iv[k][1]:.2f}]" if k in iv else "")  # noqa: E731
    c, kappa = result["confusion"], "n/a" if result["kappa"] is None else f"{result['kappa']:.2f}"
    lines = [
        "# Hallucination audit: the automatic rate against an auditor's verdicts",
        "",
        f"{result['audited']} of {result['sample']} sampled chat-path replies judged by docs/hallucination-rubric.md "
        f"({labels_path}); written by `ecr-ray audit`. Share of replies with a hallucination, 95% intervals over dialogues.",
        "",
        "| | value |", "|---|---:|",
        f"| audited (rubric) | {cell('audited_rate')} |",
        f"| automatic (KG entities the prompt does not support, wrong titles) | {cell('automatic_rate')} |",
        f"| agreement | {cell('agreement')} |",
        f"| Cohen's kappa | {kappa} |",
        f"| both / audit only / automatic only / neither | {c['both']} / {c['audit only']} / {c['automatic only']} / {c['neither']} |",
        f"| replies with a dangling reference (audit) | {result['dangling']:.2f} |",
    ]
    if result.get("second"):
        two = result["second"]
        kappa2 = "n/a" if two["kappa"] is None else f"{two['kappa']:.2f}"
        lines += ["", f"A second, independent auditor ({two['labels']}) on {two['replies']} of the same replies: "
                      f"{two['second_rate']:.2f} hallucinated against the first's {two['first_rate']:.2f}; "
                      f"agreement {two['agreement']:.2f}, Cohen's kappa {kappa2}."]
    if result["stale"] or result["missing"]:
        lines += ["", f"Not audited: {len(result['stale'])} replies changed since their verdict, {len(result['missing'])} have none."]
    if result["disagreements"]:
        lines += ["", "Where they differ:", "", "| reply | audit's unsupported claims | automatic flags |", "|---|---|---|"]
        lines += [f"| {d['reply']} | {'; '.join(d['audit']) or '-'} | {', '.join(d['automatic']) or '-'} |" for d in result["disagreements"]]
    return "\n".join(lines) + "\n"
