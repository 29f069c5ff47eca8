"""Answering recommendation turns: the recommender's top item -> its knowledge -> a prompt -> a
response, generated in batches on a Ray Data actor pool (the gen-respond stage; gen-compare's variants)."""
from __future__ import annotations

import hashlib

from ecr_ray.artifacts import GENERATOR, GENERATOR_NO_RETRIEVAL, POOL, model, read_rows, responses
from ecr_ray.config import Config
from ecr_ray.data.redial import SEEKER
from ecr_ray.rundir import RunDir

# variant -> (model folder under models/, or None for the untuned base; retrieval in the prompt)
VARIANTS = {"base": (None, True), "no-retrieval": (GENERATOR_NO_RETRIEVAL, False), "ecr": (GENERATOR, True)}


def sample_turns(cfg: Config, run_dir: RunDir, group: str, split: str = "dev") -> list[tuple[dict, dict]]:
    """A seeded sample of the group's recommendation turns with a target item (the pool: its `split`) that a
    chat client could send (`chat_turn`): (the turn's first recommendation example, the prepared turn), in turn order."""
    from ecr_ray.rec.examples import load_examples

    g = cfg.gen
    rows, _ = load_examples(cfg, run_dir, group)
    turns = {(t["conversation_id"], t["turn"]): t for t in read_rows(run_dir, group, "rec_turns")}
    first = {}
    for r in rows:
        key = (r["conversation_id"], r["turn"])
        if (group != POOL or r["split"] == split) and chat_turn(turns[key], cfg.serve.max_turns):
            first.setdefault(key, r)
    keys = sorted(first, key=lambda k: hashlib.sha256(f"{g.sample_seed}:{k[0]}:{k[1]}".encode()).hexdigest())[: g.sample_size]
    if not keys:
        raise RuntimeError(f"split {group!r} has no recommendation turn with a target item in the KG: nothing to answer")
    return [(first[k], turns[k]) for k in sorted(keys)]


def chat_turn(turn: dict, max_turns: int) -> bool:
    """Whether the chat API would answer the turn's context: it ends with the seeker, within serve.max_turns messages."""
    said = [role for text, role in zip(turn["context"], turn["context_roles"]) if text.strip()]
    return bool(said) and said[-1] == SEEKER and len(said) <= max_turns


def dialogue_prompts(cfg: Config, run_dir: RunDir, group: str, split: str = "dev") -> list[dict]:
    """The sampled turns (`sample_turns`), each with the recommender's top item and that item's knowledge."""
    from ecr_ray.gen.retrieval import item_title, load_retriever
    from ecr_ray.rec.evaluate import load_trained, recommend_rows
    from ecr_ray.rec.features import context_text, said_items

    g = cfg.gen
    sample = sample_turns(cfg, run_dir, group, split)
    retriever = load_retriever(cfg, run_dir)
    item_ids = retriever.kg.item_ids
    top = recommend_rows(load_trained(cfg, run_dir), [row for row, _ in sample], cfg.rec, said_items(retriever.kg))
    out = []
    for (row, turn), index in zip(sample, top, strict=True):
        item = int(item_ids[index])
        k = retriever.knowledge(item, g.max_entities, g.max_triples)
        out.append({"conversation_id": row["conversation_id"], "turn": row["turn"], "reference": turn["response"],
                    "context": context_text(turn["context"][-g.context_turns:], turn["context_roles"][-g.context_turns:]),
                    "item": item, "title": item_title(retriever.kg, item), "target_item": int(item_ids[row["item"]]),
                    "target_title": item_title(retriever.kg, int(item_ids[row["item"]])),
                    "entities": k["entities"], "triples": k["triples"], "entity_ids": k["entity_ids"],
                    "triple_ids": k["triple_ids"]})
    return out


def generate(cfg: Config, run_dir: RunDir, prompts: list[dict], variant: str, out: str) -> dict:
    """Responses of one variant for the prompts (Ray Data actor pool) -> parquet at `out`."""
    import ray

    from ecr_ray.gen.generate import ResponseGenerator
    from ecr_ray.raytools import blocks_for, connect, map_actors

    connect(cfg.ray)
    g, pool = cfg.gen, cfg.gen.respond_pool
    folder, retrieval = VARIANTS[variant]
    if folder and not run_dir.exists(model(folder)):
        raise RuntimeError(f"no trained generator in {run_dir.location(model(folder))}")
    ds = ray.data.from_items([{**p, "variant": variant, "retrieval": retrieval} for p in prompts],
                             override_num_blocks=blocks_for(len(prompts), pool.batch_size))
    kwargs = {"model_dir": folder and run_dir.location(model(folder)), "generator": g.generator, "decoding": g.decoding,
              "retrieval": retrieval, "allow_download": cfg.models.allow_download, "threads": pool.threads,
              "kg_dir": cfg.data.path(cfg.data.kg_dir), "bf16": g.decoding.batch_bf16}
    map_actors(ds, ResponseGenerator, kwargs, pool).write_parquet(run_dir.location(out))
    table = run_dir.read_table(out, columns=["response", "prompt_truncated"])
    return {"responses": table.num_rows, "truncated_prompts": sum(table.column("prompt_truncated").to_pylist()),
            "empty_responses": sum(not r for r in table.column("response").to_pylist())}


def respond_group(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The gen-respond-<group> stage: ECR's responses (fine-tuned generator + retrieval) -> gen/responses/ecr/<group>."""
    return generate(cfg, run_dir, dialogue_prompts(cfg, run_dir, group), "ecr", responses("ecr", group))
