"""The crossed (items x seeds) paired bootstrap on synthetic data whose truth is known, and the verdict rules."""

from __future__ import annotations

import numpy as np
import pytest

from cft_utils.analysis.intervals import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Interval,
    crossed_bootstrap,
    difference,
    share_recovered,
    verdict_change,
    verdict_kept,
)


def _simulate(rng, true_delta, n_seeds=4, n_items=150, item_sd=0.3, seed_sd=0.05, noise_sd=0.2):
    """P1/P2 item scores: shared item difficulty (paired), a seed effect on P2 only, item-level noise."""
    item = rng.normal(0, item_sd, n_items)
    p1 = 0.5 + item + rng.normal(0, noise_sd, (n_seeds, n_items))
    seed_effect = rng.normal(0, seed_sd, (n_seeds, 1))
    p2 = 0.5 + true_delta + item + seed_effect + rng.normal(0, noise_sd, (n_seeds, n_items))
    return {"P1": {"b": p1}, "P2": {"b": p2}}


def test_interval_covers_the_true_difference_at_about_the_stated_rate():
    """Over 150 synthetic studies the 95 % interval of ΔTA contains the true Δ (the population difference of
    the data-generating process, averaged over seeds and items) in 88-100 % of them."""
    rng = np.random.default_rng(0)
    true_delta, hits = -0.05, 0
    n = 150
    for k in range(n):
        iv = difference(_simulate(rng, true_delta), "P2", "P1", n_replicates=400, seed=k)
        hits += iv.low <= true_delta <= iv.high
    assert 0.88 <= hits / n <= 1.0, hits / n


def test_interval_narrows_with_more_items_and_widens_with_seed_spread():
    rng = np.random.default_rng(1)
    small = difference(_simulate(rng, 0.0, n_items=50), "P2", "P1", n_replicates=500)
    large = difference(_simulate(rng, 0.0, n_items=800), "P2", "P1", n_replicates=500)
    assert (large.high - large.low) < 0.6 * (small.high - small.low)
    calm = difference(_simulate(rng, 0.0, seed_sd=0.0), "P2", "P1", n_replicates=500)
    wild = difference(_simulate(rng, 0.0, seed_sd=0.2), "P2", "P1", n_replicates=500)
    assert (wild.high - wild.low) > 1.5 * (calm.high - calm.low)


def test_pairing_uses_the_same_items_for_both_checkpoints():
    """P2 = P1 + 0.1 on every item: a paired interval is exactly [0.1, 0.1] however variable the items are."""
    rng = np.random.default_rng(2)
    p1 = rng.normal(0, 1, (3, 200))
    iv = difference({"P1": {"b": p1}, "P2": {"b": p1 + 0.1}}, "P2", "P1", n_replicates=300)
    assert iv.estimate == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.n_seeds == 3 and iv.n_items == 200


def test_a_model_that_exists_once_is_the_same_in_every_seed():
    p1 = np.array([1.0, 0.0, 1.0, 1.0])  # one row: an off-the-shelf model
    p2 = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    iv = difference({"P1": {"b": p1}, "P2": {"b": p2}}, "P2", "P1", n_replicates=200)
    assert iv.estimate == pytest.approx(0.5 - 0.75) and iv.n_seeds == 2


def test_average_over_benchmarks_is_the_mean_of_benchmark_means():
    s = {"P1": {"a": np.zeros((1, 10)), "b": np.zeros((1, 1000))},
         "P2": {"a": np.ones((1, 10)), "b": np.zeros((1, 1000))}}
    assert difference(s, "P2", "P1", n_replicates=50).estimate == pytest.approx(0.5)


def test_share_recovered_and_bad_input():
    s = {"P1": {"b": np.full((2, 5), 0.8)}, "none": {"b": np.full((2, 5), 0.4)}, "GR": {"b": np.full((2, 5), 0.6)}}
    iv = share_recovered(s, "GR", n_replicates=50)
    assert iv.estimate == pytest.approx(0.5) and iv.low == pytest.approx(0.5)
    with pytest.raises(ValueError, match="missing item scores"):
        crossed_bootstrap({"P1": {"b": np.array([[np.nan, 1.0]])}}, lambda m: m["P1"])
    with pytest.raises(ValueError, match="items"):
        difference({"P1": {"b": np.zeros((1, 3))}, "P2": {"b": np.zeros((1, 4))}}, "P2", "P1")


@pytest.mark.parametrize("low,high,direction,expected", [
    (-0.2, -0.05, "decrease", HOLDS), (0.01, 0.2, "decrease", FAILS), (-0.1, 0.1, "decrease", INCONCLUSIVE),
    (0.01, 0.2, "increase", HOLDS), (-0.2, -0.01, "increase", FAILS)])
def test_verdict_for_a_claimed_change(low, high, direction, expected):
    assert verdict_change(Interval(0.0, low, high, 3, 100), direction) == expected


@pytest.mark.parametrize("low,high,expected", [(-0.01, 0.05, HOLDS), (-0.2, -0.05, FAILS), (-0.05, 0.01, INCONCLUSIVE)])
def test_verdict_for_a_claim_that_something_is_kept(low, high, expected):
    assert verdict_kept(Interval(0.0, low, high, 3, 100), margin=0.03) == expected
