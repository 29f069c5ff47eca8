"""Fitting the hybrid's weights for ranking.

Cross-entropy moves a few count weights away from what ranks well: it buys the target's likelihood
with popularity, at the cost of the top 50. So before the model trains, each channel weight is set by
coordinate ascent over a grid, on `rec.early_stop_metric` (by default the mean of recall@1, @10
and @50) of training examples (their own dialogue left out of the counts), on the channels
alone; they stay frozen. The co-occurrence weight stays 1: it sets the scale the others are measured in.
After training, the learned score's weight and, beside it, the channel weights again (`fit_mix`) are
fitted the same way on the held-out training dialogues (stacking: on the training examples the learned
score has seen its answers); the channels fitted alone stay in the model's record, the system the
learned part is measured against.
"""
from __future__ import annotations

import numpy as np

from ecr_ray.config import RecConfig
from ecr_ray.rec.features import row_batches
from ecr_ray.rec.model import LIKED, NEGATIVE

SWEEPS = 2
# name -> (parameter, index or None for a scalar, values tried); only the parameters a model has are fitted
GRIDS = {
    "popularity": ("cooccurrence_weights", 0, (0.0, 0.001, 0.01, 0.03, 0.1, 0.3)),
    "liked entity's evidence": ("emotion_weights", 0, (-0.5, 0.0, 0.5, 1.0, 2.0)),
    "negative entity's evidence": ("emotion_weights", 1, (-1.0, -0.5, 0.0, 0.5, 1.0)),
    "copy, seeker": ("copy_weights", 0, (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)),
    "copy, recommender": ("copy_weights", 1, (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)),
    "copy, liked": ("copy_gate", LIKED, (-4.0, -2.0, 0.0, 2.0, 4.0)),
    "copy, negative": ("copy_gate", NEGATIVE, (-4.0, -2.0, 0.0, 2.0, 4.0)),
    "emotion-related neighbours": ("global_weight", None, (0.0, 0.1, 0.3, 1.0)),
}


# With `rec.entity_stance` "negative" is the stance model's P(disliked) of a movie the user named: its evidence is
# weighted 1 + w·P(disliked) with w below -1, so a disliked movie's neighbours go down, never up; the fit says how far.
DISLIKED_GRID = (-3.0, -2.0, -1.5)


def grid_of(model, name: str) -> tuple:
    """The values tried for a channel weight of this model."""
    if name == "negative entity's evidence" and model.cfg.entity_stance:
        return DISLIKED_GRID
    return GRIDS[name][2]


def _slot(param, index):
    """The fitted value inside a parameter: the scalar itself, or one element of a vector."""
    return param if index is None else param[index]


def fitted_parameters(model) -> list[str]:
    """The parameters `fit_channels` sets on this model (frozen afterwards)."""
    return sorted({attr for attr, _, _ in GRIDS.values() if hasattr(model, attr)})


MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)  # the learned score's weight beside the channels


def _channel_knobs(model) -> list[tuple]:
    """(name, parameter, index, grid) of every channel weight this model has."""
    return [(name, getattr(model, attr), index, grid_of(model, name)) for name, (attr, index, _) in GRIDS.items() if hasattr(model, attr)]


def _ascend(knobs: list[tuple], metric) -> tuple[float, float]:
    """Coordinate ascent over the knobs' grids on `metric()`, in place, `SWEEPS` times, from each knob's grid value
    nearest to where it is; (metric before, after)."""
    for _, param, index, values in knobs:
        _slot(param, index).fill_(min(values, key=lambda v: abs(v - _slot(param, index).item())))
    start = best = metric()
    for _ in range(SWEEPS):
        for _, param, index, grid in knobs:
            keep = _slot(param, index).item()
            for value in grid:
                _slot(param, index).fill_(value)
                score = metric()
                if score > best:
                    best, keep = score, value
            _slot(param, index).fill_(keep)
    return start, best


def _metric(scores: list, items: list[list[int]], feedback: list[int], rcfg: RecConfig) -> float:
    """`rcfg.early_stop_metric` of batches of item scores."""
    from ecr_ray.rec.metrics import rec_metrics, selection_metric, target_ranks

    ranked = [target_ranks(s, i) for s, i in zip(scores, items, strict=True)]
    ranks, probs = (np.concatenate(part) for part in zip(*ranked, strict=True))
    return selection_metric(rec_metrics(ranks, probs, feedback, rcfg.auc_batch_size), rcfg.early_stop_metric)


def fit_channels(model, rows: list[dict], own: dict, rcfg: RecConfig) -> dict:
    """Set the model's channel weights on (a seeded sample of `rec.channel_fit_examples` of) `rows`,
    in place; returns {"weights": {name: value}, "metric": its name, before and after, "examples"}."""
    import torch

    order = np.random.default_rng(rcfg.train.seed).permutation(len(rows))[: rcfg.channel_fit_examples]
    sample = [rows[i] for i in sorted(order)]
    knobs = _channel_knobs(model)
    model.eval()
    with torch.no_grad():
        batches = [(model.inputs(batch, own), batch["item"]) for batch in row_batches(sample, 256)]
        start, best = _ascend(knobs, lambda: _metric([model.channels(x) for x, _ in batches], [i for _, i in batches],
                                                     [r["feedback"] for r in sample], rcfg))
    weights = {name: round(_slot(param, index).item(), 6) for name, param, index, _ in knobs}
    return {"weights": weights, "metric": {"name": rcfg.early_stop_metric, "before": start, "after": best}, "examples": len(sample)}


def apply_channels(model, weights: dict) -> None:
    """Set fitted weights (from `fit_channels`) on a freshly built model and freeze what was fitted."""
    import torch

    with torch.no_grad():
        for name, value in weights.items():
            attr, index, _ = GRIDS[name]
            _slot(getattr(model, attr), index).fill_(value)
    for attr in fitted_parameters(model):
        getattr(model, attr).requires_grad_(False)


def fit_mix(model, rows: list[dict], own: dict, rcfg: RecConfig) -> dict:
    """Set the trained hybrid's `learned_weight`, then its channel weights again beside it, on `rows` (held-out
    training dialogues), in place; returns {"weight", "channels": the refitted weights, "metric": its name,
    "curve": {weight: metric} with those channels}. A weight of 0: the learned part adds nothing."""
    import torch

    model.eval()
    with torch.no_grad():
        embeds = model.kg()
        batches = [(x := model.inputs(batch, own), model(x, embeds, channels=False), batch["item"]) for batch in row_batches(rows, rcfg.eval_batch_size)]
        feedback = [r["feedback"] for r in rows]
        metric = lambda: _metric([model.learned_weight * learned + model.channels(x) for x, learned, _ in batches],  # noqa: E731
                                 [items for *_, items in batches], feedback, rcfg)
        model.learned_weight.fill_(0.0)  # from the channels alone
        _ascend([("learned score", model.learned_weight, None, MIX_GRID), *_channel_knobs(model)], metric)
        best, curve = min(MIX_GRID, key=lambda w: abs(w - model.learned_weight.item())), {}  # the grid's value, not its float32
        for w in MIX_GRID:
            model.learned_weight.fill_(w)
            curve[w] = metric()
        model.learned_weight.fill_(best)
    return {"weight": best, "channels": {name: round(_slot(param, index).item(), 6) for name, param, index, _ in _channel_knobs(model)},
            "metric": rcfg.early_stop_metric, "curve": curve}
