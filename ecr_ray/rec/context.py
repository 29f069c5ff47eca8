"""Sentence embeddings of dialogue contexts (the recommender's offline context encoder).

`ContextEmbedder` is the plain callable a Ray Data actor pool runs (the model loads once, in
__init__); `embed` serves plain loops and serving. Mean pooling over the tokens, L2-normalised,
as MiniLM's sentence-transformers recipe; the most recent tokens are kept when a context is long.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ecr_ray.rec.features import context_text

CONTEXT_FIELD = pa.field("context_vec", pa.list_(pa.float32()))


class ContextEmbedder:
    def __init__(self, model: str, max_length: int, batch_size: int = 32, allow_download: bool = False, threads: int | None = 1):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ecr_ray.models import resolve_model

        if threads:
            torch.set_num_threads(threads)  # one core per actor; parallelism comes from the actor pool
        path = resolve_model(model, allow_download)
        self.tokenizer = AutoTokenizer.from_pretrained(path, truncation_side="left")
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length, self.batch_size = max_length, batch_size

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        from ecr_ray.emotion.classifier import mean_pool

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer([t or "." for t in texts[i : i + self.batch_size]], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                pooled = mean_pool(self.model(**enc).last_hidden_state, enc["attention_mask"])
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["context", "context_roles"]).to_pylist()
        vectors = self.embed([context_text(r["context"], r["context_roles"]) for r in rows])
        keep = batch.select(["conversation_id", "turn"])
        return keep.append_column(CONTEXT_FIELD, pa.array(vectors.tolist(), CONTEXT_FIELD.type))
