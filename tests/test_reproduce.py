"""``make reproduce`` machinery on synthetic notebooks (no training): progress lines, overrides (a dict, or the
JSON string papermill's ``-p`` passes), library logs kept out of the executed notebook, a failed notebook kept
with its error, the exit status, and the report site's index.
"""

from __future__ import annotations

import io
import json
import os
import stat

import nbformat
import pytest
from synthetic_report import stderr_outputs, synthetic_notebook

from cft_utils import reproduce
from cft_utils.reproduce import NotebookFailed, Progress, cell_headings, execute_notebook


def test_headings_follow_the_markdown():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("1"), nbformat.v4.new_markdown_cell("# Title\ntext\n## Phase **1** runs"),
        nbformat.v4.new_code_cell("2"), nbformat.v4.new_markdown_cell("no heading"),
        nbformat.v4.new_code_cell("3")])
    assert cell_headings(nb) == ["", "Phase 1 runs", "Phase 1 runs", "Phase 1 runs", "Phase 1 runs"]


def test_progress_prints_a_line_per_code_cell_and_echoes_run_status():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Training"), nbformat.v4.new_code_cell("a"),
        nbformat.v4.new_code_cell("b"), nbformat.v4.new_markdown_cell("## Tables"), nbformat.v4.new_code_cell("c")])
    out = io.StringIO()
    p = Progress("01_x", nb, stream=out, live=False)
    p.start()
    p.cell_start(0)  # markdown: no line
    p.cell_start(1)
    p.write("step 1\n[executor] 1/2 phase1/C: ran in 3 s (elapsed 3 s)\nrun phase1/A: trained in 12 s")
    p.write(" (loss 1.2)\nrun phase1/B: reused\n")
    p.cell_start(4)
    p.stop()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[reproduce] 01_x  cell 1/3  0:00") and lines[0].endswith("Training")
    assert lines[1].endswith("[executor] 1/2 phase1/C: ran in 3 s (elapsed 3 s)")
    assert lines[2].endswith("run phase1/A: trained in 12 s (loss 1.2)")
    assert lines[3].endswith("run phase1/B: reused")
    assert "cell 3/3" in lines[4] and lines[4].endswith("Tables")
    assert not any("step 1" in ln for ln in lines)


def test_a_live_line_redraws_in_place():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a")])
    out = io.StringIO()
    p = Progress("01_x", nb, stream=out, live=True, interval=0.01)
    p.start()
    p.cell_start(0)
    import time

    time.sleep(0.05)
    p.stop()
    assert out.getvalue().count("\r") >= 3 and "cell 1/1" in out.getvalue()


def test_select_and_output_name():
    assert reproduce.select(["01", "02"]) == reproduce.NOTEBOOKS[:2]
    assert reproduce.select(None) == reproduce.NOTEBOOKS
    with pytest.raises(ValueError, match="no notebook starts with"):
        reproduce.select(["99"])
    assert reproduce.output_name("smoke", {}) == "smoke"
    a = reproduce.output_name("smoke", {"mitigation.seed": 1})
    assert a.startswith("smoke-") and a != reproduce.output_name("smoke", {"mitigation.seed": 2})


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The synthetic notebook run once through execute_notebook, overrides given as papermill's JSON string."""
    src = synthetic_notebook(tmp_path_factory.mktemp("src") / "01_synthetic.ipynb")
    out = tmp_path_factory.mktemp("reports")
    figdir = tmp_path_factory.mktemp("figures")
    terminal = out.parent / "terminal.txt"
    old, saved_fd2 = os.umask(0o022), os.dup(2)
    # As under `make reproduce`: ipykernel watches file descriptor 2 only outside pytest, and the kernel's
    # original stderr (here a file standing for the terminal) must stay clean.
    test_name = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        with open(terminal, "w") as f:
            os.dup2(f.fileno(), 2)
        path = execute_notebook(str(src), "smoke", out, progress=False,
                                parameters={"overrides": '{"mitigation.seed": 3}', "figdir": str(figdir)})
    finally:
        os.dup2(saved_fd2, 2)
        os.close(saved_fd2)
        os.umask(old)
        if test_name is not None:
            os.environ["PYTEST_CURRENT_TEST"] = test_name
    return {"path": path, "out": out, "figdir": figdir, "nb": nbformat.read(path, as_version=4),
            "terminal": terminal.read_text()}


@pytest.mark.slow
def test_library_logs_go_to_the_log_file_not_the_notebook(executed):
    nb, out = executed["nb"], executed["out"]
    assert stderr_outputs(nb) == []
    log = (out / "logs" / "01_synthetic.log").read_text()
    for text in ("a library warning", "a transformers log line", "to stderr", "fd-level stderr",
                 "subprocess stderr"):
        assert text in log, text
        assert text not in executed["terminal"], text
    assert log.count("subprocess stderr") == 1
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "library logs and progress bars: " in text and "01_synthetic.log" in text
    assert "run phase2/x: reused" in text  # stdout stays in the report


@pytest.mark.slow
def test_a_json_string_of_overrides_reaches_the_config(executed):
    text = json.dumps([c.get("outputs", []) for c in executed["nb"].cells])
    assert "OUTPUT_NAME smoke-" in text and '{\\"mitigation.seed\\": 3}' in text


@pytest.mark.slow
def test_figures_are_shown_tables_formatted_and_files_readable(executed):
    nb = executed["nb"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("0.307" in o.get("data", {}).get("text/plain", "") for o in outputs)
    html = executed["path"].with_suffix(".html").read_text(encoding="utf-8")
    assert "cdnjs" not in html and "data:image/png;base64" in html  # offline: nothing fetched
    for p in [executed["path"], executed["path"].with_suffix(".html"), executed["figdir"] / "fig1_synthetic.png"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@pytest.mark.slow
def test_a_failing_notebook_keeps_its_partial_copy_and_html(tmp_path):
    src = synthetic_notebook(tmp_path / "02_fails.ipynb", fail=True)
    out = tmp_path / "reports"
    with pytest.raises(NotebookFailed, match="synthetic failure") as e:
        execute_notebook(str(src), "smoke", out, progress=False, parameters={"figdir": str(tmp_path)})
    nb = nbformat.read(e.value.path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[-2].outputs[0]["output_type"] == "error" and code[-1].execution_count is None
    html = (out / "02_fails.html").read_text(encoding="utf-8")
    assert "synthetic failure" in html and "An Exception was encountered" in html
    assert not list(out.glob(".*running*"))


@pytest.mark.slow
def test_main_exits_non_zero_and_skips_the_rest(tmp_path, monkeypatch, capsys):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    synthetic_notebook(nbdir / "01_fails.ipynb", fail=True)
    synthetic_notebook(nbdir / "02_later.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOKS_DIR", nbdir)
    monkeypatch.setattr(reproduce, "NOTEBOOKS", ["01_fails.ipynb", "02_later.ipynb"])
    status = reproduce.main(["--profile", "smoke", "--out", str(tmp_path / "r"), "--no-site"])
    printed = capsys.readouterr().out
    assert status == 1 and "FAILED" in printed and "skipped: 02_later.ipynb" in printed
    assert (tmp_path / "r" / "01_fails.html").exists() and not (tmp_path / "r" / "02_later.ipynb").exists()


def test_the_log_goes_under_results_without_reproduce(monkeypatch):
    from cft_utils import notebook
    from cft_utils.config import load_config
    from cft_utils.paths import PROJECT_ROOT

    cfg = load_config("smoke", {"mitigation.seed": 5})
    monkeypatch.delenv(notebook.LOG_FILE_ENV, raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", "/x/notebooks/07_generative_replay.ipynb")
    assert notebook.log_path(cfg) == PROJECT_ROOT / "results" / cfg.output_name / "logs" / "07_generative_replay.log"
    monkeypatch.setenv(notebook.LOG_FILE_ENV, "/tmp/elsewhere.log")
    assert str(notebook.log_path(cfg)) == "/tmp/elsewhere.log"
    assert notebook.route_logs(cfg) is None  # not in a kernel: a test keeps its stderr


def test_routing_catches_python_logging_and_file_descriptor_2(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "x.log"
    code = (
        "import logging, os, subprocess, sys, warnings\n"
        "h = logging.StreamHandler(); logging.getLogger('lm-eval').addHandler(h)\n"
        "from cft_utils.notebook import route_logs\n"
        f"route_logs(path={str(log)!r}, force=True)\n"
        "warnings.warn('w1'); logging.getLogger('lm-eval').warning('l1'); print('p1', file=sys.stderr)\n"
        "os.write(2, b'fd1\\n')\n"
        "subprocess.run([sys.executable, '-c', 'import sys; sys.stderr.write(\"sub1\\\\n\")'])\n"
        "print('stdout stays')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and r.stdout == "stdout stays\n"
    text = log.read_text()
    for s in ("w1", "l1", "p1", "fd1", "sub1"):
        assert s in text, s


def test_timing_records_what_cft_home_held_at_the_start(tmp_path, monkeypatch):
    from cft_utils.report.findings import describe_start
    from cft_utils.reproduce import home_at_start, write_timing

    monkeypatch.setenv("CFT_HOME", str(tmp_path / "home"))
    start = home_at_start("smoke", {})
    assert start == {"base_model_built": False, "runs_done": 0}
    assert describe_start(start).startswith("from scratch")
    (tmp_path / "home" / "runs" / "p1-x").mkdir(parents=True)
    (tmp_path / "home" / "runs" / "p1-y").mkdir()
    (tmp_path / "home" / "runs" / "p1-x" / "DONE").write_text("{}")  # a finished run; p1-y is not
    assert home_at_start("smoke", {})["runs_done"] == 1
    assert describe_start({"base_model_built": True, "runs_done": 0}) == "with the base model already built and no run done"
    assert describe_start({"base_model_built": True, "runs_done": 3}) == "with 3 finished run(s) already in CFT_HOME"
    assert describe_start(None) is None
    t = json.loads(write_timing(tmp_path, [], 60.0, 100.0, complete=True, start=start).read_text())
    assert t["home_at_start"] == start and t["cpu_over_wall"] == 1.67
