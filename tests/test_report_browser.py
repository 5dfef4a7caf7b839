"""The reports in a real browser (headless Chromium over its DevTools protocol): the site's index and each
notebook report load with no console error, every image loads (natural width > 0), and no report has a stderr
block. Built from a synthetic notebook run through ``reproduce`` (about 20 s, no training).

Skipped, with the install command, where Chromium is missing: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic_report import synthetic_notebook

from cft_utils.report.browser import INSTALL_HINT, Chromium, check_site, find_chromium

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(find_chromium() is None, reason=f"needs Chromium: {INSTALL_HINT}")]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from cft_utils.report.site import write_site
    from cft_utils.reproduce import execute_notebook

    src = tmp_path_factory.mktemp("src")
    figs, results = tmp_path_factory.mktemp("figures"), tmp_path_factory.mktemp("results")
    reports = tmp_path_factory.mktemp("reports") / "smoke"
    for name in ("01_synthetic.ipynb", "02_synthetic.ipynb"):
        execute_notebook(str(synthetic_notebook(src / name)), "smoke", reports, progress=False,
                         parameters={"figdir": str(figs)})
    pd.DataFrame({"claim": ["Phase 2 forgets"], "verdict": ["inconclusive"]}).to_csv(results / "claims.csv",
                                                                                    index=False)
    write_site(reports, "smoke", figures=figs, results=results)
    return reports


def test_every_page_loads_cleanly(site):
    with Chromium() as browser:
        pages = check_site(site, browser)
    assert set(pages) == {"index.html", "01_synthetic.html", "02_synthetic.html"}
    for name, page in pages.items():
        assert page.problems() == [], (name, page.problems())
        assert page.images, f"{name} shows no image"
    assert any(u.endswith("01_synthetic.html") or u.endswith("02_synthetic.html") for u in pages["index.html"].links)


def test_the_check_sees_what_it_must(tmp_path):
    """A broken image, a script error and a stderr block are each reported."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="missing.png"><script>undefinedFunction()</script>'
                    '<div data-mime-type="application/vnd.jupyter.stderr">noise</div></body></html>')
    with Chromium() as browser:
        found = browser.check(page.as_uri())
    problems = " | ".join(found.problems())
    assert "missing.png" in problems and "undefinedFunction" in problems and "1 stderr block" in problems
