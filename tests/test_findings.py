"""The README's findings section is generated from the committed claims snapshot, never typed by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cft_utils.analysis.claims import COLUMNS
from cft_utils.report import findings


def test_readme_findings_equal_the_generator_output_for_the_committed_snapshot():
    text = findings.README.read_text(encoding="utf-8")
    section = findings.readme_section(text)
    name = findings.snapshot_name(section)
    claims, meta = findings.read_snapshot(name)
    assert section == findings.render(claims, meta, findings.read_robustness(name))
    assert len(claims) and set(claims["verdict"]) <= {"holds", "fails", "inconclusive"}


def test_render_states_every_claim_with_its_interval_and_verdict():
    claims = pd.DataFrame([
        {"claim": 2, "cell": "m: Instruct -> x", "measure": "ΔTA_avg (P2 − P1)", "estimate": -0.1, "ci_low": -0.13,
         "ci_high": -0.07, "n_seeds": 3, "n_items": 900, "verdict": "holds"},
        {"claim": 6, "cell": "m: a -> x", "measure": "ΔLA_avg (P2 − P1)", "estimate": 0.01, "ci_low": float("nan"),
         "ci_high": float("nan"), "n_seeds": 1, "n_items": 0, "verdict": "inconclusive"}], columns=COLUMNS)
    meta = {"output_name": "x", "commit": "abc", "seeds": [1, 2, 3], "machine": "m", "date": "d"}
    out = findings.render(claims, meta)
    assert "-0.100 [-0.130, -0.070], 3 seed(s): holds" in out
    assert "+0.010 (no interval), 1 seed(s): inconclusive" in out
    assert "Claim 1:" in out and "Not assessed" in out  # a claim without rows says so
    assert "half-width" in out and "0.030" in out


def test_write_readme_needs_the_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# x\nno markers\n")
    with pytest.raises(ValueError, match="no findings markers"):
        findings.write_readme("sandbox", readme)


def test_render_reports_the_robustness_comparison_and_every_changed_verdict():
    from cft_utils.report import robustness

    base = pd.DataFrame([{"claim": c, "cell": cell, "measure": "m", "estimate": 0.0, "ci_low": -0.1, "ci_high": 0.1,
                          "n_seeds": 3, "n_items": 100, "verdict": v}
                         for c, cell, v in [(1, "a", "holds"), (2, "b", "holds"), (5, "c", "holds")]], columns=COLUMNS)
    variant = base[base.claim < 5].assign(verdict=["holds", "inconclusive"])
    table = robustness.compare_tables(base, {"sandbox.english_share=0.8": variant})
    meta = {"output_name": "x", "commit": "abc", "seeds": [1, 2, 3], "machine": "m", "date": "d"}
    out = findings.render(base, meta, table)
    assert "`sandbox.english_share=0.8`" in out and "1 of 2 compared claims rows keep their verdict" in out
    assert "verdict changed: claim 2, b, m: default: holds, sandbox.english_share=0.8: inconclusive" in out
    assert "claims 5) not compared" in out
    assert "was not run for this snapshot" in findings.render(base, meta, None)  # said, not left out silently
    assert "was not run for this snapshot" not in out


def test_render_shows_what_the_instrument_sees_and_names_benchmarks_at_the_floor():
    table = pd.DataFrame([
        {"phase1_data": "a", "phase2_data": "x", "checkpoint": "P1", "IFEval": 0.4, "MLQA": 0.0, "XLSum": 0.05,
         "English answers in English": 1.0},
        {"phase1_data": "a", "phase2_data": "x", "checkpoint": "P2", "IFEval": 0.3, "MLQA": 0.1,
         "XLSum": float("nan"), "English answers in English": 0.6}])
    out = "\n".join(findings.render_instrument(table))
    assert "| a | x | P2 | 0.300 | 0.100 | missing | 0.600 |" in out
    assert "At the floor before Phase 2" in out and ": MLQA." in out
    assert findings.render_instrument(pd.DataFrame()) == []


def test_a_new_snapshot_says_whether_it_reproduced_the_one_it_replaces(tmp_path):
    claims = pd.DataFrame([{"claim": 1, "cell": "a", "measure": "m", "estimate": -0.05, "ci_low": -0.08,
                            "ci_high": -0.02, "n_seeds": 3, "n_items": 100, "verdict": "fails"}], columns=COLUMNS)
    out, new = tmp_path / "snap", tmp_path / "claims_new.csv"
    out.mkdir()
    claims.to_csv(out / "claims.csv", index=False)
    (out / "meta.json").write_text(json.dumps({"commit": "aaa", "date": "d1", "machine": "x86_64, 2 cores"}))
    assert findings.previous_run(tmp_path / "nothing", new) is None  # a first snapshot compares with nothing
    claims.to_csv(new, index=False)
    prev = findings.previous_run(out, new)
    assert prev == {"commit": "aaa", "date": "d1", "machine": "x86_64, 2 cores", "claims_identical": True}
    text = "\n".join(findings.render_previous(prev, {"commit": "bbb", "machine": "x86_64, 2 cores"}))
    assert "commit `bbb`" in text and "commit `aaa`, d1" in text and "byte-identical" in text
    claims.assign(verdict="inconclusive").to_csv(new, index=False)
    prev = findings.previous_run(out, new)
    assert not prev["claims_identical"] and prev["n_verdicts_changed"] == 1 and prev["n_rows"] == 1
    assert "1 of 1 claims rows have another verdict" in "\n".join(findings.render_previous(prev, {"commit": "c"}))
