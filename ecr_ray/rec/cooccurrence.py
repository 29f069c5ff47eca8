"""What the training dialogues say about entities, counted once (plain functions, no Ray): the
tables behind the recommender's channels, and its node initialisation (built by training, from the
dialogues it trains on: never from the held-out ones that select its epoch).

items       C[e, i]: training dialogues in which entity e and item i both occur (any speaker, e != i)
popularity  training dialogues in which each item occurs
neighbours  K[i, j]: the paper's global emotion-aware neighbours, as counts: every ordered pair of
            mentions in a dialogue (earlier i -> later j, per occurrence) whose kept emotion labels
            overlap; the model reads P(j | i) = K[i, j] / sum_j K[i, j]

`ppmi_svd`: an entity table from an SVD of the positive PMI of entities sharing a dialogue.

A training example's own dialogue is in these counts; `own_contributions` gives what the model
subtracts for it, so that no example sees its own answer.
"""
from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable

import numpy as np

from ecr_ray.config import RecConfig
from ecr_ray.rec.features import emotion_turn, feeling, kept_emotions


def dialogue_entities(dialogue: dict) -> set[int]:
    return {e for u in dialogue["utterances"] for e in u["entities"]}


def emotional_mentions(dialogue: dict, probs: dict[tuple[int, int], list[float]], rcfg: RecConfig) -> list[tuple[int, int]]:
    """(entity, bit set of the user's kept emotion labels towards it) per mention, in dialogue order;
    mentions the user has no emotion towards are left out (they relate to nothing)."""
    utterances = dialogue["utterances"]
    roles = [u["role"] for u in utterances]
    mentions = []
    for t, utterance in enumerate(utterances):
        et = emotion_turn(t, roles, len(utterances))
        for e in utterance["entities"]:
            p = feeling(probs, dialogue["conversation_id"], et, int(e)) if et is not None else None
            bits = sum(1 << i for i, v in enumerate(kept_emotions(p, rcfg.beta, rcfg.max_emotions)) if v) if p is not None else 0
            if bits:
                mentions.append((int(e), bits))
    return mentions


def emotion_pairs(mentions: list[tuple[int, int]]) -> Counter:
    """Directed (earlier, later) entity pairs of one dialogue's mentions whose emotions overlap."""
    pairs = Counter()
    for a, (i, bits_i) in enumerate(mentions):
        for j, bits_j in mentions[a + 1:]:
            if i != j and bits_i & bits_j:
                pairs[i, j] += 1
    return pairs


def sparse(counts: Counter, shape: tuple[int, int]):
    """A torch sparse COO matrix of {(row, column): value}."""
    import torch

    keys = torch.tensor(list(counts.keys()), dtype=torch.long).reshape(-1, 2)
    return torch.sparse_coo_tensor(keys.T, torch.tensor(list(counts.values()), dtype=torch.float32), shape,
                                   check_invariants=True).coalesce()


def weighted_rows(table, ids: np.ndarray, weights: np.ndarray):
    """sum_p weights[b, p] * table[ids[b, p]] for every row b (ids padded with -1): sparse [B, columns]."""
    import torch

    rows, cols = np.nonzero(ids >= 0)
    mix = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([rows, ids[rows, cols]])),
                                  torch.as_tensor(weights[rows, cols], dtype=torch.float32), (len(ids), table.shape[0]),
                                  check_invariants=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # used inside sparse @ sparse
        return torch.sparse.mm(mix, table)


def item_cooccurrence(dialogues: Iterable[dict], item_index: dict[int, int], num_entities: int):
    """C [entities, items]: training dialogues holding both (an item is no evidence for itself)."""
    counts = Counter()
    for dialogue in dialogues:
        entities = dialogue_entities(dialogue)
        items = {item_index[e] for e in entities if e in item_index}
        counts.update((e, i) for e in entities for i in items if item_index.get(e) != i)
    return sparse(counts, (num_entities, len(item_index)))


def ppmi_svd(dialogues: Iterable[Iterable[int]], num_entities: int, dim: int, seed: int) -> np.ndarray:
    """Entity table [entities, dim] from each dialogue's entities: rows of U sqrt(S) of the positive PMI
    of entities sharing a dialogue, scaled to the random initialisation's norm; entities never seen keep
    a random row."""
    import torch

    counts = Counter()
    for entities in dialogues:
        entities = sorted(set(entities))
        counts.update((i, j) for i in entities for j in entities if i != j)
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((num_entities, dim)).astype(np.float32) * dim**-0.5
    if len(counts) <= dim:
        return table
    m = sparse(counts, (num_entities, num_entities))
    (i, j), n = m.indices(), m.values().double()
    totals = torch.zeros(num_entities, dtype=torch.float64).index_add_(0, i, n)
    pmi = torch.log(n * n.sum() / (totals[i] * totals[j]))
    keep = pmi > 0
    ppmi = torch.sparse_coo_tensor(m.indices()[:, keep], pmi[keep].float(), m.shape, check_invariants=True).coalesce()
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(ppmi, q=dim, niter=4)
    vectors = (u * s.sqrt()).numpy()
    seen = np.zeros(num_entities, dtype=bool)
    seen[ppmi.indices()[0].numpy()] = True
    table[seen] = vectors[seen] / max(float(np.linalg.norm(vectors[seen], axis=1).mean()), 1e-8)  # random rows' norm: about 1
    return table


def cooccurrence_tables(dialogues: list[dict], probs: dict[tuple[int, int], list[float]], kg, item_index: dict[int, int],
                        rcfg: RecConfig) -> tuple[dict, dict]:
    """(tables, stats) of training dialogues, for `build_recommender` (meta["tables"])."""
    pairs = Counter()
    for dialogue in dialogues:
        pairs.update(emotion_pairs(emotional_mentions(dialogue, probs, rcfg)))
    popularity = np.zeros(len(item_index), dtype=np.float32)
    for dialogue in dialogues:
        popularity[[item_index[e] for e in dialogue_entities(dialogue) if e in item_index]] += 1
    tables = {"items": item_cooccurrence(dialogues, item_index, kg.num_entities), "popularity": popularity,
              "neighbours": sparse(pairs, (kg.num_entities, kg.num_entities))}
    stats = {"dialogues": len(dialogues), "item_pairs": int(tables["items"].values().numel()), "emotion_pairs": len(pairs),
             "entities_with_neighbours": int(tables["neighbours"].indices()[0].unique().numel())}
    return tables, stats


def own_contributions(dialogues: Iterable[dict], probs: dict[tuple[int, int], list[float]], item_index: dict[int, int],
                      rcfg: RecConfig) -> dict[int, tuple[list[int], list[tuple[int, int]]]]:
    """conversation_id -> what a counted dialogue put into the tables: its items and its emotional
    mentions. The model subtracts them for the dialogue's own examples (`ECRRecommender.inputs`)."""
    return {d["conversation_id"]: (sorted({item_index[e] for e in dialogue_entities(d) if e in item_index}),
                                   emotional_mentions(d, probs, rcfg)) for d in dialogues}
