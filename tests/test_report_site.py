"""The report site (reports/<name>/index.html): every table and figure by its paper name, in the paper's order,
copied beside the page, linked relatively to the notebook report that made it; claims, commit, overrides."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone

import nbformat
import pandas as pd

from cft_utils.report.site import paper_key, paper_label, write_site


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path)
    plt.close(fig)


def _executed(path, source: str, start: float, end: float, failed: bool = False):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
    nb.metadata["papermill"] = {"start_time": iso(start), "end_time": iso(end), "duration": end - start,
                                "exception": failed}
    nbformat.write(nb, path)
    path.with_suffix(".html").write_text("<html></html>")


def test_paper_order_and_labels():
    stems = ["fig_phase1_loss", "figC4_mitigations", "tableA1", "table10", "fig1_tsne", "table2", "tableC6",
             "table1", "fig2_covariance"]
    assert sorted(stems, key=paper_key) == ["table1", "table2", "table10", "tableA1", "tableC6", "fig1_tsne",
                                            "fig2_covariance", "figC4_mitigations", "fig_phase1_loss"]
    assert paper_label("figC4_mitigations") == "Figure C4" and paper_label("tableA1") == "Table A1"
    assert paper_label("fig_phase1_loss") is None


def test_index_links_every_file_relatively_and_names_its_notebook(tmp_path):
    figs, results, reports = tmp_path / "figures", tmp_path / "results", tmp_path / "reports" / "smoke-abc"
    for d in (figs, results, reports):
        d.mkdir(parents=True)
    t0 = time.time()
    # notebook 01 ran in [t0-100, t0-50] and wrote fig1_tsne then; notebook 03 names table1 in a saving line
    _executed(reports / "01_phase1_sft.ipynb", "x = 1", t0 - 100, t0 - 50)
    _executed(reports / "03_task_ability.ipynb", 'save_table(t, figdir / "table1", caption="c")', t0 - 40, t0 - 30,
              failed=True)
    _png(figs / "fig1_tsne.png")
    (figs / "fig1_tsne.pdf").write_bytes(b"%PDF-1.4\n")
    os.utime(figs / "fig1_tsne.png", (t0 - 70, t0 - 70))
    os.utime(figs / "fig1_tsne.pdf", (t0 - 70, t0 - 70))
    pd.DataFrame({"model": ["A", "B"], "IFEval": [0.306667, 0.23]}).to_csv(figs / "table1.csv", index=False)
    (figs / "table1.md").write_text("Table 1: task ability\n\n| model | IFEval |\n")
    (figs / "table1.tex").write_text("\\begin{tabular}\n")
    _png(figs / "fig_phase1_loss.png")
    pd.DataFrame({"claim": ["forgetting"], "estimate": [0.1], "verdict": ["holds"]}).to_csv(
        results / "claims.csv", index=False)
    (reports / "logs").mkdir()
    (reports / "logs" / "01_phase1_sft.log").write_text("warnings\n")

    index = write_site(reports, "smoke", overrides={"mitigation.seed": 1}, figures=figs, results=results)
    html = index.read_text(encoding="utf-8")
    links = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert links and not [u for u in links if u.startswith(("/", "http:", "https:", "file:"))]
    for u in links:
        assert (reports / u).exists(), u
    for f in figs.iterdir():
        assert f"figures/{f.name}" in links, f.name
    assert html.index("Table 1") < html.index("Figure 1") < html.index("fig_phase1_loss")
    assert "Table 1: task ability" in html and "0.307" in html and "0.230" in html
    item = lambda stem: html[html.index(f'id="{stem}"'):].split('<div class="item"')[0]  # noqa: E731
    assert "made by 01_phase1_sft" in item("fig1_tsne")  # by the execution window
    assert "made by 03_task_ability" in item("table1")  # by the saving line
    assert 'class="holds"' in html and "Claims and verdicts" in html
    assert "mitigation.seed" in html and "smoke-abc" in html and "failed" in html
    assert "logs/01_phase1_sft.log" in links
    assert "<script" not in html


def test_no_figures_yet(tmp_path):
    index = write_site(tmp_path / "r", "smoke", figures=tmp_path / "none", results=tmp_path / "none")
    html = index.read_text(encoding="utf-8")
    assert "None written yet" in html and "No executed notebooks" in html and "Claims" not in html
