"""A pytest plugin for tests/test_bad_inputs.py: at collection, write every test marked ``bad_input`` as a JSON line
``{"id": <catalogue id>, "node": <node id>}`` to ``$CFT_BAD_INPUT_OUT`` (and deselect everything).

The catalogue id of a test is the marker's argument; for a parametrized test, each case is a row of its own: its
id is the case id, after the marker's argument and a dash when the marker has one.
"""

from __future__ import annotations

import json
import os


def catalogue_id(item) -> str | None:
    """The catalogue id of a collected test item (None when it is not marked ``bad_input``)."""
    mark = item.get_closest_marker("bad_input")
    if mark is None:
        return None
    prefix = mark.args[0] if mark.args else ""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return prefix or item.name
    return f"{prefix}-{callspec.id}" if prefix else callspec.id


def pytest_collection_modifyitems(session, config, items):
    rows = [{"id": cid, "node": item.nodeid} for item in items if (cid := catalogue_id(item)) is not None]
    with open(os.environ["CFT_BAD_INPUT_OUT"], "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    config.hook.pytest_deselected(items=list(items))
    items[:] = []
