"""The emotion-aware recommender (plain PyTorch; knows nothing of Ray or devices).

KG encoder: learned node embeddings -> RGCN -> residual projections, as in UniCRS/ECR.
User: attention over the mentioned entities (each fused with the user's emotion towards it when
`local_emotion`), plus beta times the emotion-related co-occurring neighbours (`global_emotion`),
combined with a context encoder from a registry. Scores: user . item embeddings over all items.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ecr_ray.config import RecConfig
from ecr_ray.emotion.labels import FEEDBACK_WEIGHTS, LABELS


class KGEncoder(nn.Module):
    def __init__(self, num_entities: int, num_relations: int, hidden: int, num_bases: int, edges: tuple[torch.Tensor, torch.Tensor]):
        from torch_geometric.nn import RGCNConv

        super().__init__()
        self.nodes = nn.Parameter(torch.randn(num_entities, hidden) * hidden**-0.5)
        self.rgcn = RGCNConv(hidden, hidden, num_relations, num_bases=num_bases)
        self.proj1 = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden))
        self.proj2 = nn.Linear(hidden, hidden)
        # the graph is rebuilt from the KG files, not saved with the weights
        self.register_buffer("edge_index", edges[0], persistent=False)
        self.register_buffer("edge_type", edges[1], persistent=False)

    def forward(self) -> torch.Tensor:
        x = self.rgcn(self.nodes, self.edge_index, self.edge_type) + self.nodes
        x = self.proj1(x) + x
        return self.proj2(x)


class SentenceContext(nn.Module):
    """Cached sentence embeddings of the context (the offline/CPU default)."""

    def __init__(self, cfg: RecConfig, context_dim: int, allow_download: bool = False):
        super().__init__()
        self.proj = nn.Linear(context_dim, cfg.hidden)

    def features(self, batch: dict) -> dict:
        return {"context_vec": torch.as_tensor(np.stack(batch["context_vec"]), dtype=torch.float32)}

    def forward(self, inputs: dict, entity_states: torch.Tensor, entity_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(inputs["context_vec"])


def _prompt_context(cfg: RecConfig, context_dim: int, allow_download: bool = False):
    from ecr_ray.rec.prompt import PromptContext

    return PromptContext(cfg.prompt, cfg.hidden, allow_download)


CONTEXT_ENCODERS: dict[str, Callable] = {"minilm": SentenceContext, "prompt": _prompt_context}


class ECRRecommender(nn.Module):
    def __init__(self, cfg: RecConfig, num_entities: int, num_relations: int, edges, item_ids: np.ndarray,
                 neighbour_ids: np.ndarray, neighbour_weights: np.ndarray, context_dim: int, allow_download: bool = False):
        super().__init__()
        if cfg.context_encoder not in CONTEXT_ENCODERS:
            raise ValueError(f"unknown rec.context_encoder {cfg.context_encoder!r}; known: {', '.join(CONTEXT_ENCODERS)}")
        h = cfg.hidden
        self.cfg = cfg
        self.kg = KGEncoder(num_entities, num_relations, h, cfg.num_bases, edges)
        self.emotions = nn.Embedding(len(LABELS), h)
        self.fuse = nn.Linear(2 * h, h)
        self.attn = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1, bias=False))
        self.context = CONTEXT_ENCODERS[cfg.context_encoder](cfg, context_dim, allow_download)
        self.user = nn.Linear(2 * h, h)
        self.item_bias = nn.Parameter(torch.zeros(len(item_ids)))
        self.register_buffer("item_ids", torch.as_tensor(item_ids, dtype=torch.long))
        self.register_buffer("neighbour_ids", torch.as_tensor(neighbour_ids, dtype=torch.long))
        self.register_buffer("neighbour_weights", torch.as_tensor(neighbour_weights, dtype=torch.float32))
        if not cfg.local_emotion:  # unused parameters break DDP's gradient sync
            self.emotions, self.fuse = None, None

    def entity_states(self, entity_embeds, entities, emotions):
        """Mentioned entities [B, L, h], fused with the user's emotion towards each (local)."""
        states = entity_embeds[entities.clamp(min=0)]
        if self.cfg.local_emotion:
            felt = emotions.sum(-1, keepdim=True) > 0  # entities the user has not reacted to stay as they are
            fused = self.fuse(torch.cat([states, emotions @ self.emotions.weight], -1))
            states = states + felt * fused
        return states

    def user_vector(self, inputs: dict, entity_embeds: torch.Tensor) -> torch.Tensor:
        entities, mask = inputs["entities"], inputs["entities"] >= 0
        states = self.entity_states(entity_embeds, entities, inputs["emotions"])
        scores = self.attn(states).squeeze(-1).masked_fill(~mask, -1e9)  # finite: -inf rows would give NaN gradients
        weights = torch.softmax(scores, -1) * mask  # a context with no entity pools to zeros
        pooled = (weights.unsqueeze(-1) * states).sum(1)
        if self.cfg.global_emotion:
            w = self.neighbour_weights[entities.clamp(min=0)] * mask.unsqueeze(-1)  # [B, L, k]
            nb = entity_embeds[self.neighbour_ids[entities.clamp(min=0)]]  # [B, L, k, h]
            pooled = pooled + self.cfg.beta * (w.unsqueeze(-1) * nb).sum((1, 2)) / w.sum((1, 2)).clamp(min=1e-8).unsqueeze(-1)
        context = self.context(inputs, states, mask)
        return self.user(torch.cat([pooled, context], -1))

    def forward(self, inputs: dict, entity_embeds: torch.Tensor | None = None, all_entities: bool = False) -> torch.Tensor:
        """Logits over the items (or over every entity, for pre-training)."""
        entity_embeds = self.kg() if entity_embeds is None else entity_embeds
        user = self.user_vector(inputs, entity_embeds)
        if all_entities:
            return user @ entity_embeds.T
        return user @ entity_embeds[self.item_ids].T + self.item_bias

    def inputs(self, batch: dict) -> dict:
        """Tensors for forward() from a numpy batch of examples (the collate step)."""
        from ecr_ray.rec.features import pad_batch

        ids, emo = pad_batch(batch["entities"], batch["entity_emotions"])
        return {"entities": torch.from_numpy(ids), "emotions": torch.from_numpy(emo), **self.context.features(batch)}


def feedback_weights(feedback: torch.Tensor) -> torch.Tensor:
    """m(feedback) per example, from the labels module (like 2.0, dislike 1.0, not said 0.5)."""
    table = torch.zeros(max(FEEDBACK_WEIGHTS) + 1)
    for value, weight in FEEDBACK_WEIGHTS.items():
        table[value] = weight
    return table[feedback.long()]


def rec_loss(logits: torch.Tensor, targets: torch.Tensor, feedback: torch.Tensor, reweight: bool) -> torch.Tensor:
    losses = nn.functional.cross_entropy(logits, targets, reduction="none")
    return (losses * feedback_weights(feedback)).mean() if reweight else losses.mean()
