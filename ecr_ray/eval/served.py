"""The chat path evaluated, as users get it: the sampled turns (`gen.respond.sample_turns`, the batch
path's) sent as a chat client sends them, through the parts the chat API composes (`serving/components`:
emotions -> the recommender over the linked text -> the top item's knowledge) and the served decoder (one
decode per turn, up to serve.max_batch decoded together by the replica's `ContinuousBatcher`), with the
settings saved beside the trained generator and this run's decoding over them (as `serve run` takes
overrides); then scored as gen-eval scores the batch responses."""
from __future__ import annotations

import asyncio
import dataclasses
import zlib

import pyarrow as pa

from ecr_ray.artifacts import report, responses, split_name
from ecr_ray.config import Config
from ecr_ray.rundir import RunDir

SERVED = "served"  # the chat path's responses: gen/responses/served/<group>; reports/gen-eval-served-<split>.json


def served_rows(cfg: Config, run_dir: RunDir, group: str, split: str = "dev") -> list[dict]:
    """One chat answer per sampled turn (the pool: of its `split`; settings are chosen on "train"): {conversation_id, turn, reference, context (the generator's), item,
    title, target_item, target_title, entities, triples, entity_ids, triple_ids, recommended, response}."""
    from ecr_ray.gen.respond import sample_turns
    from ecr_ray.gen.retrieval import item_title
    from ecr_ray.serving.batching import ContinuousBatcher
    from ecr_ray.serving.components import LocalParts, answer, decoding_overrides, turn_messages

    sample = sample_turns(cfg, run_dir, group, split)
    parts = LocalParts(run_dir, decoding_overrides(dataclasses.asdict(cfg.gen.decoding)), threads=cfg.serve.threads)  # this run's, as `serve run --set`
    kg = parts.recommender.kg
    batcher = ContinuousBatcher(parts.generator.chat_batch, cfg.serve.max_batch)
    done = 0

    async def one(row: dict, turn: dict) -> dict:
        nonlocal done
        found, (messages, title, knowledge) = await answer(parts, turn_messages(turn["context"], turn["context_roles"]), cfg.serve.top_k)
        prompt = parts.generator.row(messages, title, knowledge)
        seed = {"seed": zlib.crc32(f"{row['conversation_id']}:{row['turn']}".encode())}  # a sampling decode, as a client seeds it
        *pieces, end = [piece async for piece in batcher.stream(prompt, seed)]
        done += 1
        if done % 25 == 0 or done == len(sample):
            print(f"[gen-eval-served] {done}/{len(sample)} turns answered", flush=True)
        target = int(kg.item_ids[row["item"]])
        return {"conversation_id": row["conversation_id"], "turn": row["turn"], "reference": turn["response"],
                "context": prompt["context"], "item": found["items"][0]["item"], "title": title, "target_item": target,
                "target_title": item_title(kg, target), **{k: knowledge[k] for k in ("entities", "triples", "entity_ids", "triple_ids")},
                "recommended": [i["item"] for i in found["items"]], "response": "".join(pieces), "title_put": end["title_put"]}

    async def everyone() -> list[dict]:
        return list(await asyncio.gather(*(one(row, turn) for row, turn in sample)))

    return asyncio.run(everyone())


def evaluate_served(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The gen-eval-served-<group> stage: the chat path's answers -> gen/responses/served/<group> and
    reports/gen-eval-served-<split>.json (the metrics and judge of gen-eval-<group>)."""
    from ecr_ray.eval.generation import evaluate_rows

    rows = served_rows(cfg, run_dir, group)
    run_dir.write_parquet(f"{responses(SERVED, group)}/part-0.parquet", pa.Table.from_pylist(rows))
    return evaluate_rows(cfg, run_dir, rows, report(f"gen-eval-{SERVED}-{split_name(group)}"),
                         {"title_put_by_decoding": sum(r["title_put"] for r in rows) / len(rows),
                          "decoding": dataclasses.asdict(cfg.gen.decoding)})  # what the chat then decodes with (serving.components)
