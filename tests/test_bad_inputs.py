"""The bad-input catalogue (docs/bad_inputs.md) and the tests match one to one.

Every row names a test node id that exists; every test marked ``@pytest.mark.bad_input`` is a row, under the same
id. The marked tests are found by collecting (not running) the test files that use the marker, in a subprocess with
the small plugin ``tests/bad_input_collector.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cft_utils.paths import PROJECT_ROOT

CATALOGUE = PROJECT_ROOT / "docs" / "bad_inputs.md"
TESTS = Path(__file__).parent
ROW = re.compile(r"^\|\s*`(?P<id>[^`]+)`\s*\|(?P<input>.*?)\|(?P<seen>.*)\|\s*`(?P<node>tests/[^`]+)`\s*\|\s*$")


def catalogue_rows(text: str) -> list[dict]:
    """The table's rows: id, bad input, what the user sees, test node id."""
    return [m.groupdict() for line in text.splitlines() if (m := ROW.match(line))]


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> dict[str, str]:
    """Catalogue id -> node id of every collected test marked ``bad_input``."""
    out = tmp_path_factory.mktemp("bad-inputs") / "marked.jsonl"
    files = sorted(str(f.relative_to(PROJECT_ROOT)) for f in TESTS.glob("test_*.py")
                   if "bad_input" in f.read_text(encoding="utf-8") and f.name != Path(__file__).name)
    env = {**os.environ, "CFT_BAD_INPUT_OUT": str(out), "PYTHONPATH": os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "bad_input_collector",
                           "-p", "no:cacheprovider", "-o", "addopts=", *files], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"two marked tests share a catalogue id: {sorted(i for i in ids if ids.count(i) > 1)}"
    return {r["id"]: r["node"] for r in rows}


def test_the_catalogue_is_a_table_of_at_least_forty_kinds():
    rows = catalogue_rows(CATALOGUE.read_text(encoding="utf-8"))
    assert len(rows) >= 40
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id is listed twice"
    nodes = [r["node"] for r in rows]
    assert len(nodes) == len(set(nodes)), "a test proves two rows"
    assert all(r["input"].strip() and r["seen"].strip() for r in rows)


def test_every_listed_test_exists_and_every_marked_test_is_listed(marked):
    rows = {r["id"]: r["node"] for r in catalogue_rows(CATALOGUE.read_text(encoding="utf-8"))}
    missing_tests = {i: n for i, n in rows.items() if marked.get(i) != n and n not in marked.values()}
    assert not missing_tests, f"rows whose test does not exist or is not marked bad_input: {missing_tests}"
    unlisted = {i: n for i, n in marked.items() if i not in rows}
    assert not unlisted, f"tests marked bad_input that docs/bad_inputs.md does not list: {unlisted}"
    wrong = {i: (rows[i], marked[i]) for i in rows if i in marked and rows[i] != marked[i]}
    assert not wrong, f"rows naming another test than the one marked with their id: {wrong}"


def test_catalogue_rows_parse():
    text = "| `a-b` | x | y | `tests/test_x.py::test_y[c]` |\n| id | bad | seen | test |\n"
    assert catalogue_rows(text) == [{"id": "a-b", "input": " x ", "seen": " y ", "node": "tests/test_x.py::test_y[c]"}]
