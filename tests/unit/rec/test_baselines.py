"""The training-free baselines and the dialogue bootstrap, on constructed data (no Ray)."""
import numpy as np
import pytest

from ecr_ray.rec.baselines import BASELINES, baseline_scores, item_popularity
from ecr_ray.rec.cooccurrence import item_cooccurrence
from ecr_ray.rec.metrics import bootstrap_intervals

ITEMS = {100: 0, 101: 1, 102: 2}  # KG entity id of an item -> its position
GENRE, ACTOR, UNSEEN = 7, 8, 9


def _dialogue(*utterances):
    return {"utterances": [{"entities": list(u)} for u in utterances]}


TRAIN = [_dialogue([GENRE], [100]), _dialogue([ACTOR, 101], [101]), _dialogue([GENRE, ACTOR], [100, 102])]


def test_cooccurrence_counts_dialogues_and_never_an_item_with_itself():
    counts = item_cooccurrence(TRAIN, ITEMS, num_entities=103).to_dense()
    assert counts[GENRE].tolist() == [2, 0, 1] and counts[ACTOR].tolist() == [1, 1, 1]
    assert counts[100].tolist() == [0, 0, 1] and counts[101].tolist() == [0, 0, 0]  # 101 is repeated in its dialogue: once, and not with itself
    assert item_popularity([{"item": 0}, {"item": 0}, {"item": 2}], 3).tolist() == [2, 0, 1]


def test_scores_weigh_the_latest_entity_most_and_copy_adds_its_bonus():
    cooc, pop = item_cooccurrence(TRAIN, ITEMS, num_entities=103), np.array([0.0, 5.0, 1.0])
    rows = [{"entities": [GENRE, ACTOR]}, {"entities": []}, {"entities": [UNSEEN]}, {"entities": [ACTOR, 102]}]
    score = {kind: baseline_scores(kind, rows, pop, cooc, ITEMS, decay=0.5, copy_bonus=3.0) for kind in BASELINES}
    assert score["popularity"][0].argsort()[::-1].tolist() == [1, 2, 0]
    c = score["co-occurrence"]
    # GENRE (older, weight 0.5) -> item 0 x2, item 2 x1; ACTOR (latest, weight 1) -> one each
    assert c[0] == pytest.approx(np.log1p([2 * 0.5 + 1, 1, 0.5 + 1]) + 1e-3 * (np.log1p(pop) - 1e-9 * np.arange(3)))
    assert c[1].tolist() == c[2].tolist() == score["co-occurrence + copy"][2].tolist()  # no entity = an unseen one: popularity alone
    assert c[1].argmax() == 1
    copy = score["co-occurrence + copy"]
    assert copy[3] - c[3] == pytest.approx([0, 0, 3.0]) and copy[0].tolist() == c[0].tolist()  # only mentioned items gain
    with pytest.raises(ValueError, match="unknown baseline 'random'"):
        baseline_scores("random", rows, pop, cooc, ITEMS, 0.5, 3.0)


def test_bootstrap_resamples_whole_dialogues():
    ranks, probs, feedback = np.array([0, 0, 0, 99]), np.full(4, 0.5), np.ones(4, int)
    one = bootstrap_intervals(ranks, probs, feedback, [1, 1, 1, 2], 64, samples=500, seed=0)
    # dialogue 1 (three hits) and 2 (one miss) move whole: a resample is all 1, all 2 (recall 0) or both (0.75)
    assert one["recall@1"] == [0.0, 1.0]  # resampling single examples would almost never draw four misses
    assert one == bootstrap_intervals(ranks, probs, feedback, [1, 1, 1, 2], 64, samples=500, seed=0)
    # paired: a model that hits everywhere minus this one differs only on dialogue 2's miss
    diff = bootstrap_intervals(np.zeros(4, int), probs, feedback, [1, 1, 1, 2], 64, samples=500, seed=0, minus=(ranks, probs))
    assert diff["recall@1"] == [0.0, 1.0] and diff["recall@50"] == [0.0, 1.0] and diff["recall@10"][0] >= 0
    many = bootstrap_intervals(np.tile([0, 99], 50), np.full(100, 0.5), np.ones(100, int), np.arange(100), 64, samples=500, seed=1)
    lo, hi = many["recall@1"]
    assert 0.35 < lo < 0.5 < hi < 0.65
    hits = bootstrap_intervals(np.zeros(10), np.full(10, 0.5), np.ones(10, int), np.arange(10), 64, samples=50, seed=0)
    assert hits["recall@10"] == [1.0, 1.0] and "auc" not in hits  # no disliked target: no AUC to bound
    assert bootstrap_intervals([], [], [], [], 64, samples=50, seed=0) == {}
