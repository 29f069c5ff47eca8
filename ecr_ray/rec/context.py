"""Sentence embeddings of dialogue contexts (the recommender's offline context encoder).

`ContextEmbedder` is the plain callable a Ray Data actor pool runs (the model loads once, in
__init__); `embed` serves plain loops and serving. Mean pooling over the tokens, L2-normalised,
as MiniLM's sentence-transformers recipe; the most recent tokens are kept when a context is long.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ecr_ray.artifacts import context_vectors_of, prepared
from ecr_ray.config import Config
from ecr_ray.rec.features import context_text
from ecr_ray.rundir import RunDir

CONTEXT_FIELD = pa.field("context_vec", pa.list_(pa.float32()))


def context_stage(cfg: Config, group: str) -> tuple[str, ...]:
    """The stage caching a group's context vectors when the context path uses them (what a stage scoring that group needs)."""
    return (f"rec-context-{group}",) if cfg.rec.context_encoder == "minilm" else ()


class ContextEmbedder:
    def __init__(self, model: str, max_length: int, batch_size: int = 32, allow_download: bool = False, threads: int | None = 1):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ecr_ray.models import resolve_model

        if threads:
            torch.set_num_threads(threads)
        path = resolve_model(model, allow_download)
        self.tokenizer = AutoTokenizer.from_pretrained(path, truncation_side="left")
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        from ecr_ray.emotion.classifier import by_length, mean_pool

        out = np.zeros((len(texts), self.dim), np.float32)
        with torch.no_grad():
            for chunk in by_length(texts, self.batch_size):
                enc = self.tokenizer([texts[i] or "." for i in chunk], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                pooled = mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"])
                out[chunk] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["context", "context_roles"]).to_pylist()
        vectors = self.embed([context_text(r["context"], r["context_roles"]) for r in rows])
        keep = batch.select(["conversation_id", "turn"])
        return keep.append_column(CONTEXT_FIELD, pa.array(vectors.tolist(), CONTEXT_FIELD.type))


def embed_contexts(cfg: Config, run_dir: RunDir, group: str) -> dict:
    """The rec-context-<group> stage: every recommender-turn context with a target item, embedded once (actor pool)."""
    import ray

    from ecr_ray.raytools import connect, map_actors

    connect(cfg.ray)
    r, out = cfg.rec, context_vectors_of(group)
    ds = (ray.data.read_parquet(run_dir.location(prepared(group, "rec_turns")))
          .select_columns(["conversation_id", "turn", "context", "context_roles", "target_items"])
          .filter(lambda row: any(i >= 0 for i in row["target_items"]))  # only turns the recommender is trained or scored on
          .repartition(target_num_rows_per_block=8 * r.context_pool.batch_size))  # the filter leaves one block: split it for the pool
    kwargs = {"model": r.context_model, "max_length": r.context_max_length, "allow_download": cfg.models.allow_download,
              "threads": r.context_pool.threads}
    map_actors(ds, ContextEmbedder, kwargs, r.context_pool).write_parquet(run_dir.location(out))
    table = run_dir.read_table(out, columns=["context_vec"])
    return {"contexts": table.num_rows, "dim": len(table.column("context_vec")[0]) if table.num_rows else 0}
