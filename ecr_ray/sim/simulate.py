"""`ecr-ray simulate`: simulated seekers (`sim/persona.py`, `sim/seeker.py`) talk to each system of `sim.systems`
(`sim/systems.py`) for `sim.rounds` rounds in each mode; success@k by round with intervals over dialogues, rounds
to success, the title filter's rejections, the simulator's validity, and the turn-by-turn recall of the same
dialogues as the reference -> reports/simulation-<split>.{json,md,png}."""
from __future__ import annotations

import hashlib
import json
import pickle
import time

import numpy as np

from ecr_ray.artifacts import POOL, SIM_CACHE, report
from ecr_ray.config import Config
from ecr_ray.eval.intervals import dialogue_intervals
from ecr_ray.eval.judge_validity import readings
from ecr_ray.rundir import RunDir
from ecr_ray.sim.seeker import MODES
from ecr_ray.sim.systems import KS, SANITY, SYSTEMS, listed

SIM_VERSION = 2  # bump when a change alters the simulated dialogues (their cache keys hold it)


def simulation_reports(cfg: Config) -> tuple[str, str, str]:
    return tuple(report(f"simulation-{cfg.sim.split}").replace(".json", ext) for ext in (".json", ".md", ".png"))


def needed_stages(cfg: Config) -> tuple[str, ...]:
    """The stages whose outputs decide a simulated dialogue (the stage needs them; a dialogue's cache key holds their hashes)."""
    from ecr_ray.rec.examples import feeling_stages

    return (f"prepare-{POOL}", "rec-train", "gen-train", "gen-reviews", *feeling_stages(cfg, POOL))


def dialogue_keys(cfg: Config, run_dir: RunDir, people: list[dict]) -> list[str]:
    """Each persona's cache key: its dialogue, the simulation's knobs (not the judge's: it scores afterwards) and the
    hashes of the stages that trained what it talks to, so a re-run reuses only dialogues that would come out the same."""
    from ecr_ray.artifacts import manifest
    from ecr_ray.config import output_values

    knobs = {k: v for k, v in output_values(cfg, "sim").items() if k not in ("score_replies",)}
    decided = {"sim": knobs, "baselines": output_values(cfg, "eval.baselines"), "decay": cfg.rec.recency_decay,
               "context_turns": cfg.gen.context_turns, "version": SIM_VERSION,
               "stages": {n: run_dir.read_json(manifest(n))["hash"] for n in needed_stages(cfg) if run_dir.exists(manifest(n))}}
    base = hashlib.sha256(json.dumps(decided, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return [f"{base}:{p['conversation_id']}" for p in people]


def simulated(cfg: Config, run_dir: RunDir, people: list[dict]) -> tuple[list[dict], int]:
    """Every persona's simulated dialogues (`conversations.Simulator.run`), from the cache where a run before (or one
    stopped mid-way) left them, the rest on a Ray Data actor pool (`sim.pool`, a batch of dialogues per call).
    Returns the results in `people`'s order and how many came from the cache."""
    from ecr_ray.llm.cache import ask_pending, read_cache
    from ecr_ray.sim.conversations import RESULT_SCHEMA, SimulatedDialogues

    keys, pool = dialogue_keys(cfg, run_dir, people), cfg.sim.pool
    cached = {r["key"] for r in read_cache(run_dir, SIM_CACHE, RESULT_SCHEMA)}
    pending = [{"key": k, "persona": pickle.dumps(p)} for k, p in zip(keys, people, strict=True) if k not in cached]
    if pending:
        print(f"[simulate] {len(pending)} dialogues to simulate ({len(people) - len(pending)} cached), "
              f"{pool.batch_size} a batch on {pool.actors} actor(s)", flush=True)
        ask_pending(cfg, run_dir, SIM_CACHE, SimulatedDialogues, pending, cfg.sim.llm, pool, local_server=False,
                    config=cfg.to_dict(), run_uri=run_dir.uri, threads=pool.threads)
    results = {r["key"]: pickle.loads(r["result"]) for r in read_cache(run_dir, SIM_CACHE, RESULT_SCHEMA)}
    missing = [p["conversation_id"] for k, p in zip(keys, people, strict=True) if k not in results]
    if missing:
        raise RuntimeError(f"{len(missing)} simulated dialogues have no result, e.g. {missing[:3]}")
    return [results[k] for k in keys], len(people) - len(pending)


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


def turn_by_turn(done: list[dict], intervals) -> dict:
    """The reference: recall@k of the served recommender on the same dialogues' logged recommender turns (one
    example per turn and target, as rec-eval counts; `conversations.turn_hits`), with intervals over dialogues."""
    rows = [(d["conversation_id"], hit) for d in done for hit in d["turns"]]
    hit = np.array([h for _, h in rows], dtype=float).reshape(-1, len(KS))
    recall = lambda pick: {f"recall@{k}": float(hit[pick, j].mean()) for j, k in enumerate(KS)} if len(pick) else {}  # noqa: E731
    return {**recall(np.arange(len(hit))), "examples": len(hit), "intervals": dialogue_intervals(recall, [c for c, _ in rows], intervals)}


def validity(results: dict, personas: dict[int, dict], title_filter, rounds: int) -> dict:
    """The simulator's own checks: no accepted message names a target; how often a message names one of the
    targets' attributes, and how often it speaks as the assistant instead of the seeker; the always-target system
    wins at round 1 and the random one almost never."""
    from ecr_ray.data.linking import text_key
    from ecr_ray.sim.seeker import speaks_as_assistant

    messages = [(d["conversation_id"], x["message"]) for by_mode in results.values() for ds in by_mode.values() for d in ds["dialogues"]
                for x in d["rounds"] if x["message"]]
    unique = list(dict.fromkeys(messages))
    leaks = sum(bool(title_filter.leaks(m, personas[c])) for c, m in unique)
    said = [any(f" {text_key(v)} " in f" {text_key(m)} " for vs in personas[c]["attributes"].values() for v in vs) for c, m in unique]
    written = sum(ds["messages"] for by_mode in results.values() for ds in by_mode.values())
    rejected = sum(ds["rejected"] for by_mode in results.values() for ds in by_mode.values())
    out = {"messages": len(unique), "leak_rate_after_filter": leaks / max(len(unique), 1),
           "rejected_share": rejected / max(written + rejected, 1), "attribute_match": float(np.mean(said)) if said else None,
           "assistant_voice": float(np.mean([speaks_as_assistant(m) for _, m in unique])) if unique else None}
    for name, key in (("always target", "success@1 round 1"), ("random", f"success@50 round {rounds}")):
        if name in results:
            out[f"{name}: {key}"] = {mode: ds[key] for mode, ds in results[name].items()}
    return out


def simulate(cfg: Config, run_dir: RunDir) -> dict:
    """The simulate stage."""
    from ecr_ray.data.kg import load_kg
    from ecr_ray.sim.persona import personas as make_personas
    from ecr_ray.sim.seeker import TitleFilter

    s, start = cfg.sim, time.time()
    modes, names = listed(s.modes, MODES, "sim.modes"), listed(s.systems, SYSTEMS, "sim.systems")
    kg, people = load_kg(cfg.data.path(cfg.data.kg_dir)), make_personas(cfg, run_dir)
    done, reused = simulated(cfg, run_dir, people)
    results, timing = {}, {n: {k: sum(d["seconds"][n][k] for d in done) for k in ("seeker", "system")} for n in names}
    for name in names:
        results[name] = {}
        for mode in modes:
            dialogues = [d["systems"][name][mode] for d in done]
            results[name][mode] = {**success_table(dialogues, s.rounds, cfg.eval.intervals), "dialogues": dialogues,
                                   "messages": sum(x["message"] is not None for d in dialogues for x in d["rounds"]),
                                   "rejected": sum(d["rejected"] for d in dialogues), "failed": sum(d["failed"] for d in dialogues)}
            print(f"[simulate] {name}, {mode}: success@1/10/50 by round {s.rounds} "
                  + " / ".join(f"{results[name][mode][f'success@{k} round {s.rounds}']:.2f}" for k in KS), flush=True)
    timing["dialogues"] = time.time() - start
    if s.score_replies:
        began = time.time()
        judged = reply_scores(cfg, run_dir, results, kg)
        timing["judge"] = time.time() - began
        for name, by_mode in results.items():
            for mode in by_mode:
                if f"{name} | {mode}" in judged:
                    by_mode[mode]["llm"] = judged[f"{name} | {mode}"]
    out = {"split": s.split, "dialogues": len(people), "rounds": s.rounds, "modes": modes, "simulator": s.llm.model,
           "system_url": s.system_url, "reused_from_cache": reused,
           "judge": {"model": cfg.eval.scorer.model, "readings": readings(cfg)},
           "systems": results, "validity": validity(results, {p["conversation_id"]: p for p in people}, TitleFilter(kg), s.rounds),
           "turn_by_turn": turn_by_turn(done, cfg.eval.intervals), "seconds": {**timing, "all": time.time() - start}}
    json_path, md_path, png_path = simulation_reports(cfg)
    run_dir.write_json(json_path, out)
    run_dir.write_text(md_path, simulation_page(out))
    run_dir.write_bytes(png_path, simulation_chart(out))
    print(simulation_page(out), flush=True)
    return {"dialogues": len(people), "reused_from_cache": reused,
            **{f"{n} {m}: success@10 round {s.rounds}": results[n][m][f"success@10 round {s.rounds}"] for n in names for m in modes},
            "leak_rate_after_filter": out["validity"]["leak_rate_after_filter"]}


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
              f"speaking as the assistant (offering help, refusing, recommending) {shown(v['assistant_voice'], None)}",
              *(f"{k} {', '.join(f'{m} {x:.2f}' for m, x in val.items())}" for k, val in v.items() if isinstance(val, dict))]
    lines += ["", "Simulator validity: " + "; ".join(checks) + ".", ""]
    t = out["seconds"]
    fresh = out["dialogues"] - out["reused_from_cache"]
    lines += [f"Time of this run: {t['all'] / 60:.1f} min, of which simulating {fresh} dialogues {t['dialogues'] / 60:.1f} min"
              + (f" ({out['reused_from_cache']} read from the cache)" if out["reused_from_cache"] else "")
              + (f" and the judge {t['judge'] / 60:.1f} min" if "judge" in t else "")
              + f". Per system, summed over all {out['dialogues']} dialogues (a cached one with the time it took then): " + "; ".join(
        f"{n}: seeker {v['seeker']:.0f} s, system {v['system']:.0f} s" for n, v in t.items() if isinstance(v, dict))
        + " (a seeker message written for one system is reused by the next).", ""]
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
