"""`ecr-ray simulate`: simulated seekers (`sim/persona.py`, `sim/seeker.py`) talk to each system of `sim.systems`
(`sim/systems.py`) for `sim.rounds` rounds in each mode; success@k by round with intervals over dialogues, rounds
to success, the title filter's rejections, the simulator's validity, and the turn-by-turn recall of the same
dialogues as the reference -> reports/simulation-<split>.{json,md,png}."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ecr_ray.artifacts import POOL, report
from ecr_ray.config import Config, ConfigError
from ecr_ray.eval.intervals import dialogue_intervals
from ecr_ray.eval.judge_validity import readings
from ecr_ray.rundir import RunDir
from ecr_ray.sim.seeker import MODES
from ecr_ray.sim.systems import KS, TOP, hits

SYSTEMS = ("ecr-ray", "ecr-ray without emotion", "co-occurrence + copy", "always target", "random")
SANITY = ("always target", "random")  # checks of the simulator, not systems: their replies are not judged


def listed(value: str, known: tuple[str, ...], key: str) -> list[str]:
    """A comma-separated knob's entries, each checked against `known`."""
    entries = [x.strip() for x in value.split(",") if x.strip()]
    if not entries or (bad := [x for x in entries if x not in known]):
        raise ConfigError(f"{key} should list some of {', '.join(known)}, got {value!r}")
    return entries


def simulation_reports(cfg: Config) -> tuple[str, str, str]:
    return tuple(report(f"simulation-{cfg.sim.split}").replace(".json", ext) for ext in (".json", ".md", ".png"))


def converse(people: list[dict], system, seeker, mode: str, rounds: int, kg, clock: dict | None = None) -> list[dict]:
    """The simulated dialogues of `people` with one system, a round at a time (the seekers' messages of a round are
    written together): per round the seeker's message (None: every try named a target, and the dialogue ends), the
    system's items and reply; `success[k]`: the first round whose top k held a target (None: never). A dialogue ends
    early once a target is the first item (the seeker has what it wants). `clock` gathers the seconds spent writing
    the seekers' messages and answering them."""
    from ecr_ray.gen.retrieval import item_title

    clock = {"seeker": 0.0, "system": 0.0} if clock is None else clock

    state = [{"conversation_id": p["conversation_id"], "success": dict.fromkeys(KS), "rounds": [], "rejected": 0, "failed": False,
              "history": [], "last": None} for p in people]
    for r in range(1, rounds + 1):
        active = [(p, d) for p, d in zip(people, state, strict=True) if not d["failed"] and not d["success"][1]]
        began = time.time()
        written = seeker.messages([(p, d["history"], mode, r, d["last"]) for p, d in active])
        clock["seeker"] += time.time() - began
        talking = []
        for (p, d), (message, tries) in zip(active, written, strict=True):
            d["rejected"] += tries
            if message is None:
                d["rounds"].append({"round": r, "message": None})
                d["failed"] = True
            else:
                d["history"].append({"role": "user", "content": message})
                talking.append((p, d))
        began = time.time()
        answers = system.answer_many([(p, d["history"]) for p, d in talking])
        clock["system"] += time.time() - began
        for (p, d), answer in zip(talking, answers, strict=True):
            message = d["history"][-1]["content"]
            found = hits(answer["items"], p["targets"])
            d["success"] = {k: d["success"][k] or (r if found[k] else None) for k in KS}
            d["history"].append({"role": "assistant", "content": answer["reply"]})
            top = answer["items"][0]
            d["last"] = {"title": item_title(kg, top), "target": top if top in p["targets"] else None}
            d["rounds"].append({"round": r, "message": message, "reply": answer["reply"], "top": answer["items"][:10], "hits": found})
    return [{k: v for k, v in d.items() if k not in ("history", "last")} for d in state]


def success_table(dialogues: list[dict], rounds: int, intervals) -> dict:
    """success@k after each round (cumulative), with intervals over dialogues, and the mean rounds to success."""
    ids = [d["conversation_id"] for d in dialogues]
    first = {k: np.array([d["success"][k] or np.inf for d in dialogues], dtype=float) for k in KS}

    def shares(pick) -> dict:
        return {f"success@{k} round {r}": float(np.mean(first[k][pick] <= r)) for k in KS for r in range(1, rounds + 1)}

    out = {**shares(np.arange(len(dialogues))), "intervals": dialogue_intervals(shares, ids, intervals)}
    for k in KS:
        done = first[k][np.isfinite(first[k])]
        out[f"rounds to success@{k}"] = float(done.mean()) if len(done) else None
    return out


def turn_by_turn(parts, personas: list[dict], intervals) -> dict:
    """The reference: recall@k of the served recommender on the same dialogues' logged recommender turns (one
    example per turn and target, as rec-eval counts), with intervals over dialogues."""
    import asyncio

    from ecr_ray.serving.components import recommend, turn_messages

    found, ids = [], []
    for p in personas:
        for t in p["turns"]:
            messages = turn_messages(t["context"], t["context_roles"])
            if not any(m["role"] == "user" for m in messages):
                continue
            items = [i["item"] for i in asyncio.run(recommend(parts, messages, TOP))["items"]]
            for target in (i for i in t["target_items"] if i >= 0):
                found.append([target in items[:k] for k in KS])
                ids.append(p["conversation_id"])
    hit = np.array(found, dtype=float).reshape(-1, len(KS))
    recall = lambda pick: {f"recall@{k}": float(hit[pick, j].mean()) for j, k in enumerate(KS)} if len(pick) else {}  # noqa: E731
    return {**recall(np.arange(len(hit))), "examples": len(hit), "intervals": dialogue_intervals(recall, ids, intervals)}


def validity(results: dict, personas: dict[int, dict], title_filter, rounds: int) -> dict:
    """The simulator's own checks: no accepted message names a target; how often a message names one of the
    targets' attributes; the always-target system wins at round 1 and the random one almost never."""
    from ecr_ray.data.linking import text_key

    messages = [(d["conversation_id"], x["message"]) for by_mode in results.values() for ds in by_mode.values() for d in ds["dialogues"]
                for x in d["rounds"] if x["message"]]
    unique = list(dict.fromkeys(messages))
    leaks = sum(bool(title_filter.leaks(m, personas[c])) for c, m in unique)
    said = [any(f" {text_key(v)} " in f" {text_key(m)} " for vs in personas[c]["attributes"].values() for v in vs) for c, m in unique]
    written = sum(ds["messages"] for by_mode in results.values() for ds in by_mode.values())
    rejected = sum(ds["rejected"] for by_mode in results.values() for ds in by_mode.values())
    out = {"messages": len(unique), "leak_rate_after_filter": leaks / max(len(unique), 1),
           "rejected_share": rejected / max(written + rejected, 1), "attribute_match": float(np.mean(said)) if said else None}
    for name, key in (("always target", "success@1 round 1"), ("random", f"success@50 round {rounds}")):
        if name in results:
            out[f"{name}: {key}"] = {mode: ds[key] for mode, ds in results[name].items()}
    return out


def simulate(cfg: Config, run_dir: RunDir) -> dict:
    """The simulate stage."""
    from ecr_ray.artifacts import read_rows, read_tables
    from ecr_ray.data.kg import load_kg
    from ecr_ray.rec.baselines import item_popularity
    from ecr_ray.rec.features import item_index
    from ecr_ray.serving.components import LocalParts
    from ecr_ray.sim.persona import personas as make_personas
    from ecr_ray.sim.seeker import EndpointChat, LocalChat, Seeker, TitleFilter
    from ecr_ray.sim.systems import AlwaysTarget, CoOccurrence, Random, Served

    s, start = cfg.sim, time.time()
    modes, names = listed(s.modes, MODES, "sim.modes"), listed(s.systems, SYSTEMS, "sim.systems")
    kg, people = load_kg(cfg.data.path(cfg.data.kg_dir)), make_personas(cfg, run_dir)
    parts = LocalParts(run_dir, threads=cfg.serve.threads) if {"ecr-ray", "ecr-ray without emotion"} & set(names) else None
    index = item_index(kg)
    train = [{"item": index[i]} for t in read_rows(run_dir, POOL, "rec_turns") if t["split"] == "train" for i in t["target_items"] if i >= 0]
    made = {"ecr-ray": lambda: Served(parts), "ecr-ray without emotion": lambda: Served(parts, neutral=True),
            "co-occurrence + copy": lambda: CoOccurrence(kg, read_tables(run_dir)["items"], item_popularity(train, len(index)),
                                                         cfg.rec.recency_decay, cfg.eval.baselines.copy_bonus),
            "always target": lambda: AlwaysTarget(kg, s.seed), "random": lambda: Random(kg, s.seed)}
    chat = (EndpointChat(dataclasses.asdict(s.llm)) if s.llm.base_url
            else LocalChat(s.llm.model, cfg.models.allow_download, threads=cfg.serve.threads))
    title_filter = TitleFilter(kg)
    seeker = Seeker(chat, title_filter, s.llm, s.retries, s.max_words, s.seed)
    results, timing = {}, {}
    for name in names:
        system, timing[name] = made[name](), {"seeker": 0.0, "system": 0.0}
        results[name] = {}
        for mode in modes:
            dialogues = converse(people, system, seeker, mode, s.rounds, kg, timing[name])
            results[name][mode] = {**success_table(dialogues, s.rounds, cfg.eval.intervals), "dialogues": dialogues,
                                   "messages": sum(x["message"] is not None for d in dialogues for x in d["rounds"]),
                                   "rejected": sum(d["rejected"] for d in dialogues), "failed": sum(d["failed"] for d in dialogues)}
            print(f"[simulate] {name}, {mode}: success@1/10/50 by round {s.rounds} "
                  + " / ".join(f"{results[name][mode][f'success@{k} round {s.rounds}']:.2f}" for k in KS), flush=True)
    if s.score_replies:
        began = time.time()
        judged = reply_scores(cfg, run_dir, results, kg)
        timing["judge"] = time.time() - began
        for name, by_mode in results.items():
            for mode in by_mode:
                if f"{name} | {mode}" in judged:
                    by_mode[mode]["llm"] = judged[f"{name} | {mode}"]
    out = {"split": s.split, "dialogues": len(people), "rounds": s.rounds, "modes": modes, "simulator": s.llm.model,
           "judge": {"model": cfg.eval.scorer.model, "readings": readings(cfg)},
           "systems": results, "validity": validity(results, {p["conversation_id"]: p for p in people}, title_filter, s.rounds),
           "seconds": {**timing, "all": time.time() - start}}
    if parts is not None:
        out["turn_by_turn"] = turn_by_turn(parts, people, cfg.eval.intervals)
    json_path, md_path, png_path = simulation_reports(cfg)
    run_dir.write_json(json_path, out)
    run_dir.write_text(md_path, simulation_page(out))
    run_dir.write_bytes(png_path, simulation_chart(out))
    print(simulation_page(out), flush=True)
    return {"dialogues": len(people), **{f"{n} {m}: success@10 round {s.rounds}": results[n][m][f"success@10 round {s.rounds}"]
                                         for n in names for m in modes}, "leak_rate_after_filter": out["validity"]["leak_rate_after_filter"]}


def reply_scores(cfg: Config, run_dir: RunDir, results: dict, kg) -> dict[str, dict]:
    """The judge's five 0-9 scores of every system reply in its conversation so far, per "system | mode", with their
    intervals over dialogues (`eval.generation.llm_scores`; cached like every judged response)."""
    from ecr_ray.eval.generation import judge_rows, llm_scores
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.rec.features import context_text

    samples = {}
    for name, by_mode in ((n, m) for n, m in results.items() if n not in SANITY):
        for mode, m in by_mode.items():
            rows = samples[f"{name} | {mode}"] = []
            for d in m["dialogues"]:
                said = []
                for x in (x for x in d["rounds"] if x["message"]):
                    said.append(("seeker", x["message"]))
                    recent = said[-cfg.gen.context_turns:]
                    rows.append({"conversation_id": d["conversation_id"], "context": context_text([t for _, t in recent], [r for r, _ in recent]),
                                 "title": item_title(kg, x["top"][0]), "response": x["reply"]})
                    said.append(("recommender", x["reply"]))
    flat = [r for rows in samples.values() for r in rows]
    return llm_scores(cfg, samples, judge_rows(cfg, run_dir, flat) if flat else [])


def simulation_page(out: dict) -> str:
    """The report as markdown: success@k at the last round per system and mode, the validity, three dialogues."""
    rounds, shown = out["rounds"], lambda v, iv: "n/a" if v is None else f"{v:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")  # noqa: E731
    lines = [f"# Simulated seekers ({out['simulator']}, {out['dialogues']} dialogues of {out['split']}, up to {rounds} rounds)", "",
             "| system | mode | " + " | ".join(f"success@{k} by round {rounds}" for k in KS) + " | rounds to success@10 |",
             "|---|---|" + "---:|" * (len(KS) + 1)]
    for name, by_mode in out["systems"].items():
        for mode, m in by_mode.items():
            lines.append(f"| {name} | {mode} | " + " | ".join(shown(m[f"success@{k} round {rounds}"], m["intervals"].get(f"success@{k} round {rounds}"))
                                                            for k in KS) + f" | {shown(m['rounds to success@10'], None)} |")
    scored = [(n, mode, m["llm"]) for n, by_mode in out["systems"].items() for mode, m in by_mode.items() if "llm" in m]
    if scored:
        from ecr_ray.eval.judge import CRITERIA

        unread = [c.replace("_", " ") for c, how in out["judge"]["readings"].items() if how != "score"]
        lines += ["", f"The judge's scores (0-9, {out['judge']['model']}) of the systems' replies in their conversations"
                  + (f"; {', '.join(unread)}: validated only pairwise (eval.readings), so unvalidated here" if unread else "") + ":", "",
                  "| system | mode | replies | " + " | ".join(c.replace("_", " ") for c in CRITERIA) + " |", "|---|---|---:|" + "---:|" * len(CRITERIA),
                  *(f"| {n} | {mode} | {llm['ok']} | " + " | ".join(shown(llm[f'llm_{c}'], llm['intervals'].get(f'llm_{c}')) for c in CRITERIA) + " |"
                    for n, mode, llm in scored)]
    if "turn_by_turn" in out:
        t = out["turn_by_turn"]
        lines += ["", f"Reference, turn by turn on the same dialogues' logged turns ({t['examples']} examples): "
                  + ", ".join(f"recall@{k} {shown(t[f'recall@{k}'], t['intervals'].get(f'recall@{k}'))}" for k in KS)]
    v = out["validity"]
    checks = [f"{v['messages']} distinct messages", f"leak rate after the filter {v['leak_rate_after_filter']:.3f}",
              f"rejected for naming a target {v['rejected_share']:.3f} of the messages written",
              f"naming one of the targets' attributes {shown(v['attribute_match'], None)}",
              *(f"{k} {', '.join(f'{m} {x:.2f}' for m, x in val.items())}" for k, val in v.items() if isinstance(val, dict))]
    lines += ["", "Simulator validity: " + "; ".join(checks) + ".", ""]
    t = out["seconds"]
    lines += [f"Time: {t['all'] / 60:.1f} min in all; " + "; ".join(
        f"{n}: seeker {v['seeker']:.0f} s, system {v['system']:.0f} s" for n, v in t.items() if isinstance(v, dict))
        + (f"; the judge {t['judge']:.0f} s" if "judge" in t else "") + " (a seeker message written for one system is reused by the next).", ""]
    first = next(iter(out["systems"].values()))
    for mode, m in first.items():
        for d in m["dialogues"][:3 if mode == next(iter(first)) else 0]:
            lines += [f"### Dialogue {d['conversation_id']} ({next(iter(out['systems']))}, {mode})", ""]
            for x in d["rounds"]:
                lines += [f"- seeker: {x['message'] or '(every try named a target: the turn failed)'}"] + ([f"- system: {x['reply']}"] if x["message"] else [])
            lines.append("")
    return "\n".join(lines) + "\n"


def simulation_chart(out: dict) -> bytes:
    """success@k by round, a panel per mode and k, a line per system."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes, rounds = out["modes"], range(1, out["rounds"] + 1)
    fig, axes = plt.subplots(len(modes), len(KS), figsize=(4 * len(KS), 3 * len(modes)), squeeze=False)
    for row, mode in zip(axes, modes):
        for ax, k in zip(row, KS):
            for name, by_mode in out["systems"].items():
                ax.plot(list(rounds), [by_mode[mode][f"success@{k} round {r}"] for r in rounds], marker="o", label=name)
            ax.set_title(f"{mode}: success@{k}", fontsize=9)
            ax.set_xticks(list(rounds))
            ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
