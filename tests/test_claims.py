"""Claims 1, 2, 5, 6 from item scores with known effects, and the ordering claims (3, 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cft_utils.analysis.claims import COLUMNS, ability_claims, ordering_claim, verdict_summary


def _items(rng, cells, seeds=(1, 2, 3), n=300):
    """P1/P2 (and mitigation) item scores for each cell: {(p1, p2): {(checkpoint, strategy, method): (ta, la)}}."""
    rows = []
    for (p1, p2), ckpts in cells.items():
        for (ckpt, strategy, method), (ta, la) in ckpts.items():
            for s in seeds:
                for suite, p, benches in (("ta", ta, ("IFEval", "MMLU")), ("la", la, ("MLQA",))):
                    for b in benches:
                        vals = rng.random(n) < p
                        for i, v in enumerate(vals):
                            rows.append({"model": "m", "phase1_data": p1, "phase2_data": p2, "strategy": strategy,
                                         "method": method, "checkpoint": ckpt, "seed": s, "suite": suite,
                                         "benchmark": b, "language": "xx" if suite == "la" else "en",
                                         "item": f"{b}-{i}", "value": float(v)})
    return pd.DataFrame(rows)


def test_ability_claims_follow_the_effects():
    rng = np.random.default_rng(0)
    items = _items(rng, {
        ("alpaca", "multialpaca"): {("P1", "none", None): (0.6, 0.2), ("P2", "none", None): (0.6, 0.5)},
        ("Instruct", "multialpaca"): {("P1", "none", None): (0.7, 0.2), ("P2", "none", None): (0.45, 0.5),
                                      ("P2", "GR_5", "GR"): (0.6, 0.5), ("P2", "LoRA", "LoRA"): (0.7, 0.2)}})
    similar = {("alpaca", "multialpaca"): True, ("Instruct", "multialpaca"): False}
    claims = ability_claims(items, similar, margin_ta=0.1, margin_la=0.1, mitigation_methods=["GR", "LF_H1"],
                            n_replicates=300)
    assert list(claims.columns) == COLUMNS
    v = {(r.claim, r.cell, r.measure): r.verdict for r in claims.itertuples()}
    assert v[(1, "m: alpaca -> multialpaca", "ΔTA_avg (P2 − P1)")] == "holds"
    assert v[(2, "m: Instruct -> multialpaca", "ΔTA_avg (P2 − P1)")] == "holds"
    assert v[(6, "m: alpaca -> multialpaca", "ΔLA_avg (P2 − P1)")] == "holds"
    assert v[(5, "m: Instruct -> multialpaca", "ΔTA_avg (GR_5 − unmitigated)")] == "holds"
    assert v[(5, "m: Instruct -> multialpaca", "ΔLA_avg (GR_5 − unmitigated)")] == "holds"
    assert not any("LoRA" in m for (_, _, m) in v)  # claim 5 is about GR and LF only
    row = claims[(claims.claim == 2)].iloc[0]
    assert row.ci_low < row.estimate < row.ci_high < 0 and row.n_seeds == 3 and row.n_items == 600
    assert abs(row.estimate - (-0.25)) < 0.05
    summary = verdict_summary(claims)
    assert set(summary.claim) == {1, 2, 5, 6}


def test_a_null_effect_is_inconclusive_not_a_failure():
    rng = np.random.default_rng(1)
    items = _items(rng, {("Instruct", "mopenorca"): {("P1", "none", None): (0.5, 0.3),
                                                      ("P2", "none", None): (0.5, 0.3)}}, n=80)
    claims = ability_claims(items, {("Instruct", "mopenorca"): False}, margin_ta=0.03, margin_la=0.03,
                            mitigation_methods=[], n_replicates=300)
    assert set(claims.verdict) == {"inconclusive"}


def test_unknown_similarity_decides_neither_claim_1_nor_2():
    rng = np.random.default_rng(2)
    items = _items(rng, {("a", "b"): {("P1", "none", None): (0.5, 0.3), ("P2", "none", None): (0.2, 0.6)}}, n=50)
    claims = ability_claims(items, {}, margin_ta=0.03, margin_la=0.03, mitigation_methods=[], n_replicates=200)
    assert set(claims.claim) == {6}


def test_ordering_claims_use_per_seed_differences():
    row = ordering_claim(3, "MPD", "MPD(dissimilar) − MPD(similar)", [1.0, 1.1, 0.9], [2.0, 2.2, 1.9])
    assert row["verdict"] == "holds" and row["n_seeds"] == 3 and row["ci_low"] > 0
    row = ordering_claim(4, "drift", "x", [1.0, 2.0, 1.5], [1.2, 1.5, 1.9])
    assert row["verdict"] == "inconclusive"
    row = ordering_claim(4, "drift", "x", [1.0], [2.0])
    assert row["verdict"] == "inconclusive" and row["n_seeds"] == 1  # one seed: no interval


def test_des_mpd_and_drift_claims():
    from cft_utils.analysis.claims import des_claims, drift_claims, mpd_claims

    des = pd.DataFrame([{"a": "alpaca", "b": "multialpaca", "des": 0.95, "ci_lo": 0.93, "ci_hi": 0.97},
                        {"a": "alpaca", "b": "mopenorca", "des": 0.5, "ci_lo": 0.45, "ci_hi": 0.55}])
    rows = des_claims(des, [(("alpaca", "multialpaca"), ("alpaca", "mopenorca"))])
    assert rows.iloc[0].verdict == "holds" and rows.iloc[0].ci_low == pytest.approx(0.93 - 0.55)
    orderings = pd.DataFrame([{"model": "m", "seed": s, "closer_pair": "a–x", "farther_pair": "I–x",
                               "closer": c, "farther": f} for s, c, f in ((1, 1.0, 2.0), (2, 1.1, 2.1), (3, 0.9, 1.8))])
    assert mpd_claims(orderings).iloc[0].verdict == "holds"
    summary = pd.DataFrame([{"model": "m", "seed": s, "pair": p, "mean_spectral": v, "mean_frobenius": v,
                             "mean_one_minus_cka": v, "separation": v}
                            for s, sim, dis in ((1, 1.0, 3.0), (2, 1.2, 2.9), (3, 0.8, 3.2))
                            for p, v in (("similar", sim), ("dissimilar", dis))])
    d = drift_claims(summary)
    assert len(d) == 4 and set(d.verdict) == {"holds"} and set(d.n_seeds) == {3}
