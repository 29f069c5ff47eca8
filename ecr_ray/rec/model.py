"""The emotion-aware recommender (plain PyTorch; knows nothing of Ray or devices).

KG encoder: an entity table (random, or from the PPMI-SVD of the training dialogues) -> RGCN (rec/rgcn.py) ->
residual projections, as in UniCRS/ECR. User: attention over the mentioned entities (with
`local_emotion` each fused with the user's emotion towards it by a zero-initialised fusion, so an
untrained fusion leaves them as they are), plus, with `global_emotion`, the emotion-related
neighbours' representation with a learned weight, combined with a context encoder from a registry.

An item's score is user . item + its bias (`rec.variant: paper`, ECR's model alone). The hybrid
variant trains exactly that model, then adds count channels with weights fitted for ranking
(rec/channels.py), the learned score entering with a weight fitted on held-out dialogues, the channel
weights fitted again beside it there:
  hybrid = learned_weight x (user . item + bias) + channels, where the channels are
  co-occurrence  log(1 + training dialogues it occurs in) and log(1 + recency-weighted training
                 dialogues it shares with the context's entities; with `local_emotion` an entity the
                 user liked or met with negative emotion weighs 1 + its own weight x that emotion)
  copy           it was mentioned, last by the seeker / by the recommender (+ the user's emotion
                 towards it when `local_emotion`)
  global         log(1 + items x P(it | the context's entities)) over the emotion-related neighbours
The counts come from the training dialogues (rec/cooccurrence.py); for an example of a counted
dialogue, `inputs` subtracts what that dialogue put in, so training never sees its own answer.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ecr_ray.config import FeedbackWeights, RecConfig
from ecr_ray.data.redial import FEEDBACK_DISLIKE, FEEDBACK_LIKE, FEEDBACK_NOT_SAID
from ecr_ray.emotion.labels import LABELS
from ecr_ray.rec.rgcn import RelationGroups

LIKED, NEGATIVE = LABELS.index("like"), LABELS.index("negative")  # the emotions that weigh an entity's evidence


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    """log(1 + |x|) with x's sign: counts as log1p, and evidence against an item as much below 0."""
    return torch.sign(x) * torch.log1p(x.abs())


class KGEncoder(nn.Module):
    def __init__(self, num_entities: int, num_relations: int, hidden: int, num_bases: int, edges: tuple[torch.Tensor, torch.Tensor],
                 init: np.ndarray | None = None):
        from torch_geometric.nn import RGCNConv

        super().__init__()
        table = torch.randn(num_entities, hidden) * hidden**-0.5 if init is None else torch.as_tensor(init, dtype=torch.float32)
        self.nodes = nn.Parameter(table)
        self.rgcn = RGCNConv(hidden, hidden, num_relations, num_bases=num_bases)
        self.proj1 = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden))
        self.proj2 = nn.Linear(hidden, hidden)
        self.graph = RelationGroups(*edges, num_entities, num_relations)  # runs self.rgcn, about 8x fewer multiplications

    def forward(self) -> torch.Tensor:
        x = self.graph(self.rgcn, self.nodes) + self.nodes
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
    def __init__(self, cfg: RecConfig, num_entities: int, num_relations: int, edges, item_ids: np.ndarray, tables: dict,
                 context_dim: int, allow_download: bool = False):
        super().__init__()
        if cfg.context_encoder not in CONTEXT_ENCODERS:
            raise ValueError(f"unknown rec.context_encoder {cfg.context_encoder!r}; known: {', '.join(CONTEXT_ENCODERS)}")
        h = cfg.hidden
        self.cfg = cfg
        # the paper variant is ECR's model alone; the hybrid adds the count/copy channels (each can be switched off)
        hybrid = cfg.variant == "hybrid"
        self.counting, self.copying, self.global_scoring = (hybrid and cfg.cooccurrence_channel, hybrid and cfg.copy_channel,
                                                            hybrid and cfg.global_emotion)
        self.kg = KGEncoder(num_entities, num_relations, h, cfg.num_bases, edges, tables.get("init"))
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1, bias=False))
        self.context = CONTEXT_ENCODERS[cfg.context_encoder](cfg, context_dim, allow_download)
        self.user = nn.Linear(2 * h, h)
        if cfg.user_mixture:
            self.mixer = nn.Linear(h, 1)
        if hybrid:  # fitted after training (rec/channels.py `fit_mix`), never trained
            self.register_buffer("learned_weight", torch.ones(()))
        self.item_bias = nn.Parameter(torch.zeros(len(item_ids)))
        self.register_buffer("item_ids", torch.as_tensor(item_ids, dtype=torch.long))
        # parameters exist only for the parts in use: unused ones break DDP's gradient sync
        if cfg.local_emotion:
            self.emotions = nn.Embedding(len(LABELS), h)
            self.fuse = nn.Linear(2 * h, h)
            nn.init.zeros_(self.fuse.weight), nn.init.zeros_(self.fuse.bias)
        if self.counting:
            self.cooccurrence_weights = nn.Parameter(torch.tensor([0.1, 1.0]))  # popularity, shared with the context
            if cfg.local_emotion:
                self.emotion_weights = nn.Parameter(torch.zeros(2))  # evidence of a liked entity, of one met with negative emotion
        if self.copying:
            self.copy_weights = nn.Parameter(torch.tensor([1.0, 1.0]))  # last mentioned by the seeker, by the recommender
            if cfg.local_emotion:
                self.copy_gate = nn.Parameter(torch.zeros(len(LABELS)))
        if cfg.global_emotion:
            self.neighbour_weight = nn.Parameter(torch.zeros(()))  # the neighbours' representation in the user vector
        if self.global_scoring:
            self.global_weight = nn.Parameter(torch.zeros(()))  # their item score
        self.tables = {k: tables[k] for k in ("items", "popularity", "neighbours")}  # counts, read by `inputs`, never trained
        self.neighbour_totals = torch.sparse.sum(self.tables["neighbours"], 1).to_dense().double().numpy()
        self.item_entities = torch.as_tensor(item_ids, dtype=torch.long)  # `item_ids` stays on the CPU for `inputs`; the buffer moves
        self.entity_item = np.full(num_entities, -1, dtype=np.int64)
        self.entity_item[np.asarray(item_ids)] = np.arange(len(item_ids))

    @property
    def has_channels(self) -> bool:
        return self.counting or self.copying or self.global_scoring

    def fast_parameters(self) -> list[nn.Parameter]:
        """The item bias and the neighbours' weight: a vector and a scalar that need larger steps than the
        embeddings (`rec.bias_lr`)."""
        return [self.item_bias, *([self.neighbour_weight] if self.cfg.global_emotion else [])]

    def entity_states(self, entity_embeds, entities, emotions):
        """Mentioned entities [B, L, h], fused with the user's emotion towards each (local)."""
        states = entity_embeds[entities.clamp(min=0)]
        if self.cfg.local_emotion:
            felt = emotions.sum(-1, keepdim=True) > 0  # entities the user has not reacted to stay as they are
            fused = self.fuse(torch.cat([states, emotions @ self.emotions.weight], -1))
            states = states + felt * fused
        return states

    def pooled(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention over the mentioned entities' states [B, L, h] -> [B, h]."""
        scores = self.attn(states).squeeze(-1).masked_fill(~mask, -1e9)  # finite: -inf rows would give NaN gradients
        weights = torch.softmax(scores, -1) * mask  # a context with no entity pools to zeros
        return (weights.unsqueeze(-1) * states).sum(1)

    def user_vector(self, inputs: dict, entity_embeds: torch.Tensor, components: bool = False):
        """The user vector [B, h]; with `components` (rec.user_mixture) the components [C, h] (per example ECR's vector,
        then one per mentioned entity), their log mixture weights [C] and the example each belongs to [C]."""
        entities, mask = inputs["entities"], inputs["entities"] >= 0
        states = self.dropout(self.entity_states(entity_embeds, entities, inputs["emotions"]))
        pooled = self.pooled(states, mask)
        if self.cfg.global_emotion:
            pooled = pooled + self.neighbour_weight * torch.sparse.mm(inputs["neighbours"], entity_embeds)
        context = self.context(inputs, states, mask)
        if not components:
            return self.dropout(self.user(torch.cat([pooled, context], -1)))
        parts = torch.cat([pooled.unsqueeze(1), states], 1)  # ECR's pooled entities, then each entity, all read with the context
        users = self.dropout(self.user(torch.cat([parts, context.unsqueeze(1).expand_as(parts)], -1)))
        present = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
        log_weights = torch.log_softmax(self.mixer(users).squeeze(-1).masked_fill(~present, -1e9), -1)
        return users[present], log_weights[present], present.nonzero()[:, 0]  # padding dropped: it would cost item scores

    def channels(self, inputs: dict) -> torch.Tensor | float:
        """The item scores beside user . item: co-occurrence, copy and global."""
        out = 0.0
        if self.counting:
            counts = inputs["cooccurrence"]  # [B, 1 + emotions, items]
            if self.cfg.local_emotion:
                counts = counts[:, :1] + (self.emotion_weights[:, None] * counts[:, 1:]).sum(1, keepdim=True)
            shared = signed_log1p(counts[:, 0])  # below 0 only where a disliked movie's neighbours are pushed down
            out = out + self.cooccurrence_weights[0] * inputs["popularity"] + self.cooccurrence_weights[1] * shared
        if self.global_scoring:
            out = out + self.global_weight * inputs["neighbour_items"]
        if self.copying:
            seeker = inputs["by_seeker"]
            value = seeker * self.copy_weights[0] + (1 - seeker) * self.copy_weights[1]
            if self.cfg.local_emotion:
                value = value + inputs["emotions"] @ self.copy_gate
            positions = inputs["mentioned_items"]  # [B, L], -1: not an item
            copy = torch.zeros(len(positions), len(self.item_ids), device=value.device)
            out = out + copy.scatter_add(1, positions.clamp(min=0), value * (positions >= 0))
        return out

    def forward(self, inputs: dict, entity_embeds: torch.Tensor | None = None, all_entities: bool = False,
                channels: bool = True) -> torch.Tensor:
        """Logits over the items: the learned score, plus the channels unless `channels` is False (what
        training fits, and the hybrid's ECR model alone); over every entity with `all_entities` (pre-training)."""
        entity_embeds = self.kg() if entity_embeds is None else entity_embeds
        if all_entities:
            return self.user_vector(inputs, entity_embeds) @ entity_embeds.T
        if self.cfg.user_mixture:  # log of the mixture's probabilities: what a softmax of them gives back
            users, log_weights, example = self.user_vector(inputs, entity_embeds, components=True)
            each = log_weights[:, None] + torch.log_softmax(users @ entity_embeds[self.item_ids].T + self.item_bias, -1)
            learned = grouped_logsumexp(each, example, len(inputs["entities"]))
        else:
            learned = self.user_vector(inputs, entity_embeds) @ entity_embeds[self.item_ids].T + self.item_bias
        return self.learned_weight * learned + self.channels(inputs) if channels and self.has_channels else learned

    def entity_evidence(self, batch: dict, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """How much each mentioned entity of a one-example batch adds to the scores of `items` (positions
        among the items), per channel, in logits [entities, items]: each channel's score split in
        proportion to each entity's part of its evidence (what the reasons of a recommendation name)."""
        from ecr_ray.rec.features import pad_mentions, recency_weights

        ids, emotions, _ = pad_mentions(batch)
        mask = ids[0] >= 0
        entities, recency = torch.from_numpy(ids[0][mask]), torch.from_numpy(recency_weights(ids, self.cfg.recency_decay)[0][mask]).float()
        felt = torch.from_numpy(emotions[0][mask])
        out = {}

        def split(evidence: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
            return evidence / evidence.sum(0).clamp(min=1e-12) * score

        if self.counting:
            weight = recency * (1 + felt[:, [LIKED, NEGATIVE]] @ self.emotion_weights) if self.cfg.local_emotion else recency
            evidence = (weight[:, None] * self.tables["items"].index_select(0, entities).to_dense()[:, items]).clamp(min=0.0)
            out["co-occurrence"] = split(evidence, self.cooccurrence_weights[1] * torch.log1p(evidence.sum(0)))
        if self.global_scoring:
            totals = torch.from_numpy(self.neighbour_totals[entities.numpy()]).float()
            scale = torch.where(totals > 0.5, recency / totals.clamp(min=1.0), torch.zeros_like(recency))
            rows = self.tables["neighbours"].index_select(0, entities).to_dense()[:, self.item_entities[items]]
            evidence = scale[:, None] * rows / recency[totals > 0.5].sum().clamp(min=1e-12)
            out["emotion-related neighbours"] = split(evidence, self.global_weight * torch.log1p(len(self.item_entities) * evidence.sum(0)))
        return out

    def inputs(self, batch: dict, own: dict | None = None, channels: bool = True) -> dict:
        """Tensors for forward() from a numpy batch of examples (the collate step). `own`:
        conversation_id -> what that dialogue put into the tables (`own_contributions`), subtracted
        for its examples. `channels` False: without the co-occurrence counts (the learned score alone)."""
        from ecr_ray.rec.features import pad_mentions, recency_weights

        ids, emotions, by_seeker = pad_mentions(batch)
        mask, recency = ids >= 0, recency_weights(ids, self.cfg.recency_decay)
        out = {"entities": torch.from_numpy(ids), "emotions": torch.from_numpy(emotions), "by_seeker": torch.from_numpy(by_seeker),
               "mentioned_items": torch.from_numpy(np.where(mask, self.entity_item[np.maximum(ids, 0)], -1)),
               **self.context.features(batch)}
        owned = [own.get(int(c)) for c in batch["conversation_id"]] if own else [None] * len(ids)
        if self.counting and channels:
            weights = [recency, *([recency * emotions[..., LIKED], recency * emotions[..., NEGATIVE]] if self.cfg.local_emotion else [])]
            popularity, shared = self._item_counts(ids, weights, owned)
            out["popularity"] = torch.from_numpy(np.log1p(popularity).astype(np.float32))
            out["cooccurrence"] = torch.from_numpy(shared.astype(np.float32))
        if self.cfg.global_emotion:
            out.update(self._neighbours(ids, recency, owned))
        return out

    def _item_counts(self, ids: np.ndarray, weights: list[np.ndarray], owned: list) -> tuple[np.ndarray, np.ndarray]:
        """Training dialogues per item [B, items] and, for each per-entity weighting in `weights`, the
        weighted co-occurrence counts with the context [B, len(weights), items], the example's own
        dialogue left out: it added 1 to each of its items and to every pair of its entities and its
        items (an item is no evidence for itself)."""
        from ecr_ray.rec.cooccurrence import weighted_rows

        popularity = np.tile(self.tables["popularity"].astype(np.float64), (len(ids), 1))
        counts = np.stack([weighted_rows(self.tables["items"], ids, w).to_dense().numpy().astype(np.float64) for w in weights], 1)
        for b, own in enumerate(owned):
            if own and own[0]:
                items = np.asarray(own[0])
                popularity[b, items] -= 1
                mentioned = self.entity_item[np.maximum(ids[b], 0)]
                own_item = (ids[b] >= 0) & np.isin(mentioned, items)
                for k, w in enumerate(weights):
                    counts[b, k, items] -= w[b].sum()
                    np.add.at(counts[b, k], mentioned[own_item], w[b, own_item])
        return np.maximum(popularity, 0.0), np.maximum(counts, 0.0)

    def _neighbours(self, ids: np.ndarray, recency: np.ndarray, owned: list) -> dict:
        """The recency-weighted mean of P(. | entity) over the context's entities [B, entities] (sparse),
        the example's own dialogue left out, and its log-score over the items."""
        from ecr_ray.rec.cooccurrence import emotion_pairs, weighted_rows

        totals = np.where(ids >= 0, self.neighbour_totals[np.maximum(ids, 0)], 0.0)
        corrections = []
        for b, own in enumerate(owned):
            if own and own[1]:
                positions = {}  # an entity mentioned more than once counts at each of its positions
                for p, e in enumerate(ids[b]):
                    if e >= 0:
                        positions.setdefault(int(e), []).append(p)
                pairs = [(p, j, c) for (i, j), c in emotion_pairs([tuple(m) for m in own[1]]).items() for p in positions.get(i, ())]
                for p, _, c in pairs:
                    totals[b, p] -= c
                corrections += [(b, p, j, c) for p, j, c in pairs]
        scale = np.where(totals > 0.5, recency / np.maximum(totals, 1.0), 0.0)  # counts are whole numbers
        dist = weighted_rows(self.tables["neighbours"], ids, scale)
        if corrections:
            b, p, j, c = (np.asarray(x) for x in zip(*corrections, strict=True))
            dist = dist + torch.sparse_coo_tensor(torch.from_numpy(np.vstack([b, j])), torch.as_tensor(-scale[b, p] * c, dtype=torch.float32),
                                                  dist.shape, check_invariants=True)
        dist = dist.coalesce()
        norm = torch.as_tensor(np.where(totals > 0.5, recency, 0.0).sum(1), dtype=torch.float32).clamp(min=1e-12)
        values = dist.values().clamp(min=0.0) / norm[dist.indices()[0]]  # clamp: rounding of what was subtracted
        dist = torch.sparse_coo_tensor(dist.indices(), values, dist.shape, is_coalesced=True, check_invariants=False)
        items = dist.index_select(1, self.item_entities).to_dense()
        return {"neighbours": dist, "neighbour_items": torch.log1p(len(self.item_entities) * items)}


def grouped_logsumexp(x: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """logsumexp over the rows of `x` [R, N] that share a group (`group` [R]; every group has a row) -> [groups, N]."""
    with torch.no_grad():  # the shift that keeps exp finite; the result does not depend on it
        top = torch.full((groups, x.shape[1]), float("-inf"), dtype=x.dtype, device=x.device).index_reduce_(0, group, x, "amax")
    return top + torch.zeros_like(top).index_add(0, group, torch.exp(x - top[group])).log()


def feedback_weights(feedback: torch.Tensor, weights: FeedbackWeights) -> torch.Tensor:
    """m(feedback) per example from the rec config (the paper: like 2.0, dislike 1.0, not said 0.5)."""
    table = torch.zeros(max(FEEDBACK_LIKE, FEEDBACK_DISLIKE, FEEDBACK_NOT_SAID) + 1)
    table[FEEDBACK_LIKE], table[FEEDBACK_DISLIKE], table[FEEDBACK_NOT_SAID] = weights.like, weights.dislike, weights.not_said
    return table.to(feedback.device)[feedback.long()]


def rec_loss(logits: torch.Tensor, targets: torch.Tensor, feedback: torch.Tensor, weights: FeedbackWeights | None) -> torch.Tensor:
    """Cross-entropy over the items, each example weighted by m(feedback) when `weights` are given."""
    losses = nn.functional.cross_entropy(logits, targets, reduction="none")
    return (losses * feedback_weights(feedback, weights)).mean() if weights is not None else losses.mean()
