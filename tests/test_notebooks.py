"""Notebook conventions (committed clean, one `parameters` cell, intro first, provenance last, calls only)
and papermill execution of notebooks 01-02 in the smoke profile.

The executed notebooks use the session's shared smoke CFT_HOME (see test_train.py): whichever of the two
files runs first trains the smoke runs, the other finds them done.
"""

from __future__ import annotations

import json
import re
import time

import nbformat
import pytest

from cft_utils.paths import NOTEBOOKS_DIR, PROJECT_ROOT
from cft_utils.reproduce import NOTEBOOKS, execute_notebook

SHARED_HOME = "cft-home-smoke"  # the same folder as test_train.shared_smoke_home
ALL = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))


def test_every_notebook_is_in_the_pipeline_in_order():
    assert ALL == sorted(NOTEBOOKS) and NOTEBOOKS == sorted(NOTEBOOKS)
    assert NOTEBOOKS[:2] == ["01_phase1_sft.ipynb", "02_phase2_sft.ipynb"]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_clean_and_follows_the_conventions(name):
    raw = json.loads((NOTEBOOKS_DIR / name).read_text(encoding="utf-8"))
    nb = nbformat.reads(json.dumps(raw), as_version=4)
    nbformat.validate(nb)
    from cft_utils.setup_env import KERNEL_NAME

    assert nb.metadata.kernelspec.name == KERNEL_NAME
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert c.outputs == [] and c.execution_count is None, f"{name}: committed with outputs"
    # intro first: purpose, inputs, outputs and time per profile
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    for word in ("Purpose", "Inputs", "Outputs", "Time", "smoke", "sandbox", "paper"):
        assert word in first.source, f"{name}: the intro cell does not mention {word!r}"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: {len(params)} cells tagged 'parameters'"
    assert params[0].cell_type == "code"
    assert re.search(r'^profile\s*=\s*"sandbox"', params[0].source, flags=re.M)
    # narrative and calls only: logic lives in cft_utils, never in a notebook
    for c in code:
        assert not re.search(r"^\s*(def|class)\s", c.source, flags=re.M), f"{name}: defines a function/class"
    assert "provenance(" in code[-1].source, f"{name}: the last code cell is not the provenance cell"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Notebooks 01 then 02 executed with papermill (smoke profile) into a temporary folder."""
    home = tmp_path_factory.getbasetemp() / SHARED_HOME
    home.mkdir(exist_ok=True)
    out = tmp_path_factory.mktemp("reports")
    t0 = time.time() - 2  # file-system timestamps may be coarse
    seconds = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFT_HOME", str(home))  # the kernel inherits it
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in ("01_phase1_sft.ipynb", "02_phase2_sft.ipynb"):
            t = time.time()
            execute_notebook(name, "smoke", out)
            seconds[name] = time.time() - t
    return {"out": out, "t0": t0, "home": home, "seconds": seconds}


def _check_executed(path, t0):
    assert path.exists() and path.stat().st_mtime >= t0
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    injected = [c for c in code if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'profile = "smoke"' in injected[0].source
    assert all(c.execution_count is not None for c in code), "a cell was not executed"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(1 for c in code if c.outputs) >= 3
    assert "git_commit" in json.dumps(code[-1].outputs)  # the provenance cell printed its record
    html = path.with_suffix(".html")
    assert html.exists() and html.stat().st_size > 10_000 and "<html" in html.read_text(encoding="utf-8")[:2000]
    return nb


def _fresh(rel: str, t0: float):
    p = PROJECT_ROOT / rel
    assert p.exists() and p.stat().st_mtime >= t0 and p.stat().st_size > 0, f"{rel} not written by this run"
    return p


@pytest.mark.slow
def test_notebook_01_executes_in_smoke(executed):
    import pandas as pd

    _check_executed(executed["out"] / "01_phase1_sft.ipynb", executed["t0"])
    for stem in ("figures/smoke/fig_phase1_loss", "figures/smoke/fig_sandbox_pretraining"):
        _fresh(stem + ".png", executed["t0"])
        _fresh(stem + ".pdf", executed["t0"])
    table = pd.read_csv(_fresh("results/smoke/phase1_runs.csv", executed["t0"]))
    assert len(table) == 3 and table["done"].all()


@pytest.mark.slow
def test_notebook_02_executes_in_smoke(executed):
    import pandas as pd

    _check_executed(executed["out"] / "02_phase2_sft.ipynb", executed["t0"])
    for stem in ("figures/smoke/fig_phase2_loss", "figures/smoke/fig_sandbox_probe"):
        _fresh(stem + ".png", executed["t0"])
        _fresh(stem + ".pdf", executed["t0"])
    table = pd.read_csv(_fresh("results/smoke/phase2_runs.csv", executed["t0"]))
    assert len(table) == 4 and table["done"].all()
    probe = pd.read_csv(_fresh("results/smoke/sandbox_probe.csv", executed["t0"]))
    assert set(probe["checkpoint"]) == {"P1", "P2"} and probe["exact_match"].between(0, 1).all()
    # the notebooks trained (or found) every run of the smoke plan in the CFT_HOME they were given
    from cft_utils.config import load_config
    from cft_utils.plan import plan_runs

    for run in plan_runs(load_config("smoke")).all():
        assert (executed["home"] / "runs" / run.run_id / "DONE").exists(), run.name
