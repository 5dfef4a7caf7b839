"""Intervals for differences between checkpoints, over test items and training seeds, and verdicts from them.

The design: every checkpoint of one grid cell is scored on the same test items, and (for trained checkpoints) once
per training seed. Items and seeds are *crossed*, not nested: seed 2 sees the same items as seed 1. A difference
such as ΔTA = TA(P2) − TA(P1) is therefore uncertain in two ways: which items happened to be in the test set, and
which seeds happened to be trained. :func:`crossed_bootstrap` resamples both at once — seeds with replacement, and
items with replacement within each benchmark — and applies the *same* resampling to every checkpoint it compares
(a paired design: the item that is easy for P1 is easy for P2), then takes percentile intervals. With one seed it
reduces to the paired item bootstrap. Resampling both factors of a crossed design is slightly conservative (it
counts the seed-by-item interaction twice); tests/test_intervals.py checks the coverage on synthetic data with a
known truth. The method is described for readers in data/README.md ("Intervals and verdicts").

A measure over several benchmarks (TA_avg) is the mean of the benchmarks' means, as in the paper's tables; each
benchmark's items are resampled on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_REPLICATES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % (by default) percentile interval and what it rests on."""

    estimate: float
    low: float
    high: float
    n_seeds: int
    n_items: int
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


Scores = Mapping[str, Mapping[str, np.ndarray]]  # checkpoint -> benchmark -> array (seeds, items)


def _as_2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[None, :] if a.ndim == 1 else a


def check_scores(scores: Scores) -> tuple[list[str], dict[str, int], int]:
    """Validate a scores mapping: every checkpoint has the same benchmarks and, per benchmark, the same items;
    seed counts agree or are 1 (a model that exists once, like an off-the-shelf Instruct model, is the same in
    every seed). Returns (benchmarks, items per benchmark, seeds)."""
    names = list(scores)
    if not names:
        raise ValueError("no checkpoints to compare")
    benches = list(scores[names[0]])
    n_seeds = 1
    n_items = {}
    for n in names:
        if list(scores[n]) != benches:
            raise ValueError(f"checkpoint {n!r} has benchmarks {list(scores[n])}, expected {benches}")
        for b in benches:
            a = _as_2d(scores[n][b])
            if np.isnan(a).any():
                raise ValueError(f"checkpoint {n!r}, benchmark {b!r}: missing item scores (NaN)")
            if a.shape[1] == 0:
                raise ValueError(f"checkpoint {n!r}, benchmark {b!r}: no item scores")
            n_items.setdefault(b, a.shape[1])
            if a.shape[1] != n_items[b]:
                raise ValueError(f"benchmark {b!r}: {n!r} has {a.shape[1]} items, others {n_items[b]}")
            if a.shape[0] != 1:
                if n_seeds not in (1, a.shape[0]):
                    raise ValueError(f"benchmark {b!r}: {n!r} has {a.shape[0]} seeds, others {n_seeds}")
                n_seeds = a.shape[0]
    return benches, n_items, n_seeds


def crossed_bootstrap(scores: Scores, statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                      n_replicates: int = DEFAULT_REPLICATES, seed: int = 0, level: float = 0.95) -> Interval:
    """Estimate ``statistic`` of the checkpoints' mean scores and its percentile interval.

    ``scores[checkpoint][benchmark]`` is an array (seeds, items) of item scores (one row when the checkpoint exists
    once). ``statistic`` receives ``{checkpoint: means}`` — each the mean over benchmarks of the (weighted) mean
    over seeds and items, as an array over replicates — and returns an array (e.g. ``m["P2"] - m["P1"]``). The
    point estimate is the statistic of the plain means.
    """
    benches, n_items, n_seeds = check_scores(scores)
    rng = np.random.default_rng(seed)
    # Resampling as weights: counts of each seed / item in each replicate (the same for every checkpoint: paired).
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_replicates).astype(float)
    item_w = {b: rng.multinomial(n_items[b], np.full(n_items[b], 1 / n_items[b]), size=n_replicates).astype(float)
              for b in benches}

    def means(weights_s, weights_i) -> dict[str, np.ndarray]:
        out = {}
        for name, per_bench in scores.items():
            total = 0.0
            for b in benches:
                a = _as_2d(per_bench[b])
                a = np.broadcast_to(a, (n_seeds, a.shape[1]))
                ws, wi = weights_s, weights_i[b]
                total = total + np.einsum("rs,si,ri->r", ws, a, wi) / (ws.sum(1) * wi.sum(1))
            out[name] = total / len(benches)
        return out

    point = statistic(means(np.ones((1, n_seeds)), {b: np.ones((1, n_items[b])) for b in benches}))
    reps = np.asarray(statistic(means(seed_w, item_w)), dtype=float)
    reps = reps[np.isfinite(reps)]
    alpha = (1 - level) / 2
    lo, hi = (np.quantile(reps, [alpha, 1 - alpha]) if reps.size else (np.nan, np.nan))
    return Interval(float(np.asarray(point).ravel()[0]), float(lo), float(hi), n_seeds, sum(n_items.values()), level)


def difference(scores: Scores, a: str, b: str, **kw) -> Interval:
    """mean(a) − mean(b), paired over items and seeds."""
    return crossed_bootstrap(scores, lambda m: m[a] - m[b], **kw)


def share_recovered(scores: Scores, strategy: str, unmitigated: str = "none", phase1: str = "P1", **kw) -> Interval:
    """The share of Phase 2's loss that a strategy recovers: (S − none) / (P1 − none). Replicates whose loss is
    not positive are left out (the share is undefined there); the interval is NaN when none is left."""
    def stat(m):
        loss = m[phase1] - m[unmitigated]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(loss > 0, (m[strategy] - m[unmitigated]) / loss, np.nan)
    return crossed_bootstrap(scores, stat, **kw)


# ----------------------------------------------------------------------------------------------------- verdicts

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


def verdict_change(iv: Interval, direction: str) -> str:
    """A claimed change (``direction`` "increase" or "decrease"): holds when the interval excludes zero on the
    claimed side, fails when it excludes zero on the other side, else inconclusive."""
    if not np.isfinite(iv.low) or not np.isfinite(iv.high):
        return INCONCLUSIVE
    sign = 1 if direction == "increase" else -1
    if sign * iv.low > 0 and sign * iv.high > 0:
        return HOLDS
    if sign * iv.low < 0 and sign * iv.high < 0:
        return FAILS
    return INCONCLUSIVE


def verdict_kept(iv: Interval, margin: float) -> str:
    """A claim that something is *kept* (non-inferiority with ``margin``): holds when the whole interval lies
    above −margin, fails when it lies below −margin, else inconclusive."""
    if not np.isfinite(iv.low) or not np.isfinite(iv.high):
        return INCONCLUSIVE
    if iv.low > -margin:
        return HOLDS
    if iv.high < -margin:
        return FAILS
    return INCONCLUSIVE


# ------------------------------------------------------------------------------------- what more data would buy


@dataclass(frozen=True)
class Components:
    """Variance components of one benchmark's paired differences ``d[seed, item]`` (two-way crossed random
    effects, estimated from the ANOVA mean squares and clipped at 0): ``seed`` (how much a seed's mean moves),
    ``item`` (how much an item's mean moves) and ``residual`` (seed-by-item interaction and noise)."""

    seed: float
    item: float
    residual: float
    n_seeds: int
    n_items: int

    def variance_of_mean(self, n_seeds: int, n_items: float) -> float:
        """Variance of the mean difference with ``n_seeds`` seeds and ``n_items`` items."""
        return self.seed / n_seeds + self.item / n_items + self.residual / (n_seeds * n_items)


def variance_components(d) -> Components:
    """:class:`Components` of a (seeds, items) array of paired differences (one seed: the seed component is 0 and
    the item component holds everything, as one seed cannot tell them apart)."""
    d = _as_2d(d)
    s, i = d.shape
    if i < 2:
        raise ValueError(f"variance components need at least 2 items, got {i}")
    grand = d.mean()
    if s == 1:
        return Components(0.0, float(d.var(ddof=1)), 0.0, 1, i)
    row, col = d.mean(1), d.mean(0)
    ms_seed = i * ((row - grand) ** 2).sum() / (s - 1)
    ms_item = s * ((col - grand) ** 2).sum() / (i - 1)
    ms_res = ((d - row[:, None] - col[None, :] + grand) ** 2).sum() / ((s - 1) * (i - 1))
    return Components(max(0.0, (ms_seed - ms_res) / i), max(0.0, (ms_item - ms_res) / s), float(ms_res), s, i)


def projected_half_width(components: Mapping[str, Components], n_seeds: int, item_factor: float = 1.0,
                         level: float = 0.95, fixed_items: Collection[str] = ()) -> float:
    """Normal-approximation half-width of the mean over benchmarks of the mean differences, with ``n_seeds``
    seeds and ``item_factor`` times each benchmark's items (what a bigger test set or more seeds would give), except
    the benchmarks in ``fixed_items``, whose item count cannot grow (they keep theirs)."""
    from scipy import stats

    if not components:
        return float("nan")
    var = sum(c.variance_of_mean(n_seeds, c.n_items * (1.0 if b in fixed_items else item_factor))
              for b, c in components.items())
    return float(stats.norm.ppf(0.5 + level / 2) * np.sqrt(var) / len(components))


def difference_components(scores: Scores, a: str, b: str) -> dict[str, Components]:
    """Per benchmark, the :class:`Components` of ``a − b`` (paired over seeds and items; a checkpoint that exists
    once is the same in every seed). Benchmarks with fewer than 2 items are left out (no item variance)."""
    benches, n_items, n_seeds = check_scores(scores)
    out = {}
    for bench in benches:
        if n_items[bench] < 2:
            continue
        xa = np.broadcast_to(_as_2d(scores[a][bench]), (n_seeds, _as_2d(scores[a][bench]).shape[1]))
        xb = np.broadcast_to(_as_2d(scores[b][bench]), (n_seeds, _as_2d(scores[b][bench]).shape[1]))
        out[bench] = variance_components(xa - xb)
    return out
