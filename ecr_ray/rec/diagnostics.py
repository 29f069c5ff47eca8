"""Why an emotion part helps or not: whether the utterance emotions say anything about the seeker's stance
towards the movie they name (the data), and how far the trained parts move the user representation (the
model). Read beside the ablations: a part that does not help either reads an uninformative signal or
learned to stay small."""
from __future__ import annotations

import numpy as np

from ecr_ray.config import RecConfig
from ecr_ray.data.redial import FEEDBACK_DISLIKE, FEEDBACK_LIKE, SEEKER
from ecr_ray.emotion.labels import LABELS
from ecr_ray.rec.features import kept_emotions, row_batches


def emotion_signal(dialogues: list[dict], probs: dict, rcfg: RecConfig) -> dict:
    """Seeker utterances that name exactly one movie the seeker's questionnaire says they liked or disliked:
    how well the classifier's P(like) and P(negative) of the utterance separate the two (AUC; 0.5: no
    signal), and how often the kept labels (β, n_f) include "like" for each (ECR gives every entity of the
    utterance those labels)."""
    from ecr_ray.rec.metrics import auc

    like, negative = LABELS.index("like"), LABELS.index("negative")
    by_stance = {FEEDBACK_LIKE: [], FEEDBACK_DISLIKE: []}
    for d in dialogues:
        stance = {m["movie_id"]: m["feedback"] for m in d["movies"]}
        for t, u in enumerate(d["utterances"]):
            named = set(u["movie_ids"])
            p = probs.get((d["conversation_id"], t))
            if u["role"] == SEEKER and len(named) == 1 and p is not None and stance.get(next(iter(named))) in by_stance:
                by_stance[stance[next(iter(named))]].append(p)
    liked, disliked = (np.asarray(by_stance[s], dtype=np.float64).reshape(-1, len(LABELS)) for s in (FEEDBACK_LIKE, FEEDBACK_DISLIKE))
    kept_like = lambda rows: float(np.mean([kept_emotions(p, rcfg.beta, rcfg.max_emotions)[like] > 0 for p in rows])) if len(rows) else None  # noqa: E731
    return {"utterances": {"liked": len(liked), "disliked": len(disliked)},
            "auc of P(like), liked vs disliked": auc(liked[:, like], disliked[:, like]),
            "auc of P(negative), disliked vs liked": auc(disliked[:, negative], liked[:, negative]),
            "kept 'like' when liked": kept_like(liked), "kept 'like' when disliked": kept_like(disliked)}


def part_effects(model, rows: list[dict], rcfg: RecConfig) -> dict:
    """On example rows, through the trained model (no dropout): the share of mentioned entities the user
    reacted to; for local emotion, the fusion's change of such an entity's state relative to the state
    (near 0: the fusion learned to leave the states alone); for global emotion, the neighbours' weight and
    their term relative to the attention-pooled entities."""
    import torch

    model.eval()
    felt_share, local, neighbour = [], [], []
    with torch.no_grad():
        embeds = model.kg()
        for batch in row_batches(rows, rcfg.eval_batch_size):
            x = model.inputs(batch, channels=False)
            mask = x["entities"] >= 0
            felt = (x["emotions"].sum(-1) > 0) & mask
            felt_share.append(felt[mask].float())
            raw = embeds[x["entities"].clamp(min=0)]
            states = model.entity_states(embeds, x["entities"], x["emotions"])
            if rcfg.local_emotion and felt.any():
                local.append(((states - raw).norm(dim=-1) / raw.norm(dim=-1).clamp(min=1e-12))[felt])
            if rcfg.global_emotion:
                pooled = model.pooled(states, mask)
                term = model.neighbour_weight * torch.sparse.mm(x["neighbours"], embeds)
                has = mask.any(1)
                neighbour.append((term.norm(dim=-1) / pooled.norm(dim=-1).clamp(min=1e-12))[has])
    mean = lambda parts: float(torch.cat(parts).mean()) if parts else None  # noqa: E731
    return {"entities reacted to": mean(felt_share),
            "local fusion: state change / state": mean(local) if rcfg.local_emotion else None,
            "neighbour weight": model.neighbour_weight.item() if rcfg.global_emotion else None,
            "neighbour term / pooled entities": mean(neighbour) if rcfg.global_emotion else None}
