"""Intervals over dialogues: a conversation's turns are not independent, so resampling moves them together."""
from __future__ import annotations

import numpy as np


def dialogue_intervals(stat, dialogues: list, intervals, level: float = 0.95) -> dict[str, list[float]]:
    """A `level` interval of each value of `stat(indices) -> {name: value}`, resampling whole dialogues
    (`dialogues`: each row's) with replacement: one dialogue's rows move together."""
    if not intervals.samples or not dialogues:
        return {}
    _, inverse = np.unique(np.asarray(dialogues), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(intervals.seed)
    draws: dict[str, list[float]] = {}
    for _ in range(intervals.samples):
        for name, value in stat(np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])).items():
            if value is not None:
                draws.setdefault(name, []).append(value)
    return {k: [float(np.quantile(v, (1 - level) / 2)), float(np.quantile(v, (1 + level) / 2))] for k, v in draws.items()}
