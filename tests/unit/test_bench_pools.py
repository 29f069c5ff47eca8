"""bench/pools.py's arithmetic: start-up apart from the steady rate, and whole batches of cycled rows."""
import importlib.util
from pathlib import Path

import pytest

from ecr_ray.config import ActorPool

SPEC = importlib.util.spec_from_file_location("pools", Path(__file__).resolve().parents[2] / "bench" / "pools.py")
pools = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pools)


def test_steady_rate_leaves_out_the_warm_up():
    # first batch out after 5 s (start-up); two actors: the rate counts from the second batch on
    marks = [(5.0, 10), (5.5, 10), (6.5, 10), (7.5, 10), (8.5, 30)]
    got = pools.rate(0.0, marks, warm=2)
    assert got["startup_s"] == 5.0
    assert got["steady_per_s"] == pytest.approx(50 / 3.0)
    assert pools.rate(0.0, marks, warm=1)["steady_per_s"] == pytest.approx(60 / 3.5)


def test_cycled_rows_are_whole_batches_from_the_start_again():
    pool = ActorPool(actors=2, batch_size=3)
    assert pools.cycled(list("abcde"), pool, None) == list("abcde" * 10)[:48]
    assert pools.cycled(list("abcde"), pool, 1) == list("abc")


def test_actor_threads_follow_its_cpus():
    assert [ActorPool(cpus=c).threads for c in (0.25, 0.5, 1.0, 1.5, 2.0)] == [1, 1, 1, 2, 2]
