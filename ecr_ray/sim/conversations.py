"""Simulated dialogues, the unit of work: a batch of personas talks to every system in every mode (`converse`), each
persona's logged turns give the turn-by-turn reference (`turn_hits`), and `SimulatedDialogues` does a batch on a Ray
Data actor, writing each dialogue's result to the cache before it returns, so a stage stopped mid-way resumes with
the dialogues not yet done."""
from __future__ import annotations

import dataclasses
import pickle
import time

import pyarrow as pa

from ecr_ray.config import Config
from ecr_ray.rundir import RunDir
from ecr_ray.sim.systems import KS, TOP, hits

# a cached dialogue: its key (the persona and what decides its outcome), the run that wrote it, the result (pickled)
RESULT_SCHEMA = pa.schema([("key", pa.string()), ("run", pa.string()), ("result", pa.binary())])


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


def turn_hits(parts, persona: dict) -> list[list[bool]]:
    """The reference for one dialogue: per logged recommender turn and target (one example each, as rec-eval counts),
    is the target in the served recommender's top k, for each k of KS."""
    import asyncio

    from ecr_ray.serving.components import recommend, turn_messages

    found = []
    for t in persona["turns"]:
        messages = turn_messages(t["context"], t["context_roles"])
        if not any(m["role"] == "user" for m in messages):
            continue
        items = [i["item"] for i in asyncio.run(recommend(parts, messages, TOP))["items"]]
        found += [[target in items[:k] for k in KS] for target in t["target_items"] if target >= 0]
    return found


class Simulator:
    """What a process needs to simulate dialogues: the seeker (with its title filter) and the systems of `sim.systems`,
    each built once. `run` simulates a batch of personas with every system in every mode."""

    def __init__(self, cfg: Config, run_dir: RunDir, threads: int, actors: int = 1):
        from ecr_ray.artifacts import POOL, read_rows, read_tables
        from ecr_ray.data.kg import load_kg
        from ecr_ray.rec.baselines import item_popularity
        from ecr_ray.rec.features import item_index
        from ecr_ray.serving.components import LocalParts
        from ecr_ray.sim.seeker import MODES, EndpointChat, LocalChat, Seeker, TitleFilter
        from ecr_ray.sim.systems import SYSTEMS, AlwaysTarget, CoOccurrence, Random, Remote, Served, listed

        s = self.sim = cfg.sim
        self.modes, self.names = listed(s.modes, MODES, "sim.modes"), listed(s.systems, SYSTEMS, "sim.systems")
        self.kg = load_kg(cfg.data.path(cfg.data.kg_dir))
        self.parts = LocalParts(run_dir, threads=threads)  # the served systems and the turn-by-turn reference
        index = item_index(self.kg)
        train = [{"item": index[i]} for t in read_rows(run_dir, POOL, "rec_turns") if t["split"] == "train" for i in t["target_items"] if i >= 0]
        made = {"ecr-ray": lambda: Remote(s.system_url, cfg.serve.model_name, cfg.serve.token_env) if s.system_url else Served(self.parts),
                "ecr-ray without emotion": lambda: Served(self.parts, neutral=True),
                "co-occurrence + copy": lambda: CoOccurrence(self.kg, read_tables(run_dir)["items"], item_popularity(train, len(index)),
                                                             cfg.rec.recency_decay, cfg.eval.baselines.copy_bonus),
                "always target": lambda: AlwaysTarget(self.kg, s.seed), "random": lambda: Random(self.kg, s.seed)}
        self.systems = {name: made[name]() for name in self.names}
        chat = (EndpointChat(dataclasses.asdict(s.llm), actors) if s.llm.base_url
                else LocalChat(s.llm.model, cfg.models.allow_download, threads=threads))
        self.seeker = Seeker(chat, TitleFilter(self.kg), s.llm, s.retries, s.max_words, s.seed)

    def run(self, people: list[dict]) -> list[dict]:
        """Per persona: {conversation_id, systems: {name: {mode: dialogue}}, turns (the reference's hits), seconds
        (its share of the batch's seeker and system time per system)}."""
        out = [{"conversation_id": p["conversation_id"], "systems": {n: {} for n in self.names}, "seconds": {}} for p in people]
        for name, system in self.systems.items():
            clock = {"seeker": 0.0, "system": 0.0}
            for mode in self.modes:
                for o, d in zip(out, converse(people, system, self.seeker, mode, self.sim.rounds, self.kg, clock), strict=True):
                    o["systems"][name][mode] = d
                print(f"[simulate] a batch of {len(people)} dialogues: {name}, {mode} mode done (so far {clock['seeker']:.0f} s writing "
                      f"the seekers' messages, {clock['system']:.0f} s answering them)", flush=True)  # a batch can take an hour on a CPU
            for o in out:
                o["seconds"][name] = {k: v / len(people) for k, v in clock.items()}
        for o, p in zip(out, people, strict=True):
            o["turns"] = turn_hits(self.parts, p)
        return out


class SimulatedDialogues:
    """Ray Data UDF over batches {key, persona (pickled)}: the batch's dialogues simulated together (a round's seeker
    messages and replies are batched), each result written to the cache as this batch's part before it returns."""

    def __init__(self, llm: dict, actors: int, run: str, cache: str, config: dict, run_uri: str, threads: int):
        import pyarrow.fs as pafs

        from ecr_ray.config import from_dict

        del llm  # the pool contract's (`llm.cache.ask_pending`): config's sim.llm, whose endpoint it has probed
        self.simulator = Simulator(from_dict(Config, config), RunDir(run_uri), threads, actors)
        self.run = run
        self.fs, self.cache = pafs.FileSystem.from_uri(cache)

    def __call__(self, batch):
        import uuid

        import pyarrow.parquet as pq

        rows = batch.to_pylist()
        results = self.simulator.run([pickle.loads(r["persona"]) for r in rows])
        table = pa.Table.from_pylist([{"key": r["key"], "run": self.run, "result": pickle.dumps(x)} for r, x in zip(rows, results, strict=True)],
                                     schema=RESULT_SCHEMA)
        pq.write_table(table, f"{self.cache}/part-{self.run}-{uuid.uuid4().hex[:8]}.parquet", filesystem=self.fs)
        return table.select(["key"])
