"""The reading probe (cft_utils.sandbox.probe): counterfactual passages that separate reading from recall, scored
without a model on synthetic answers, and run end to end on a random tiny model."""

from __future__ import annotations

import pytest

from cft_utils.sandbox.probe import (
    copy_items,
    reading_items,
    reading_probe,
    reading_summary,
    score_copy,
    score_reading,
)
from cft_utils.sandbox.world import WorldSpec, world_for


@pytest.fixture(scope="module")
def world():
    return world_for(WorldSpec(n_phase1=40, n_phase2_per_language=8, n_instruct=40, n_test_per_language=5))


def test_items_contradict_the_world_and_are_the_same_in_every_language(world):
    items = reading_items(world, n=30)
    assert len(items) == 30 and all(it["passage"] != it["fact"] for it in items)
    for it in items:  # the passage states the value it asks about, and the fact is the world's
        question = it["text"].split("question :")[1].split()
        name = question[question.index("the") + 1]
        assert it["fact"] in (world.facts[name].place, world.facts[name].colour)
        assert f"the {name} " in it["text"] and it["passage"] in it["text"]
    assert {("where" in it["text"]) for it in items} == {True, False}  # both the MLQA-like and the XQuAD-like form
    assert reading_items(world, n=30) == items  # seeded
    assert copy_items(world, n=5) == copy_items(world, n=5)


def test_scores_tell_reading_from_recall_and_answer_language(world):
    items = reading_items(world, n=10)
    lang = world.other_languages[0]
    tr = lambda s: world.translate(s, lang)  # noqa: E731
    readers = [f'"{tr(it["passage"])}"' for it in items]  # quotes are not part of the answer
    recallers = [tr(it["fact"]) + " ." for it in items]
    english = [it["fact"] for it in items]  # the fact, but in English: neither reading nor recall in this language
    assert score_reading(world, lang, items, readers) == {"read": 1.0, "recalled": 0.0, "english": 0.0, "n": 10}
    assert score_reading(world, lang, items, recallers)["recalled"] == 1.0
    s = score_reading(world, lang, items, english)
    assert (s["read"], s["recalled"], s["english"]) == (0.0, 0.0, 1.0)
    half = readers[:5] + recallers[5:]
    assert score_reading(world, lang, items, half)["read"] == 0.5
    copies = copy_items(world, n=4)
    good = [tr(c["passage"]) + " . the list" for c in copies]
    assert score_copy(world, lang, copies, good)["read"] == 1.0
    assert score_copy(world, lang, copies, [tr(copies[0]["passage"])] * 4)["read"] == 0.25


def test_probe_runs_on_a_model_and_the_summary_is_made_of_its_numbers(world, tiny_model_dir):
    import pandas as pd

    rows = reading_probe(tiny_model_dir(), world, ("en", world.other_languages[0]), n=4)
    assert {(r["probe"], r["format"]) for r in rows} == {("reading", "chat"), ("reading", "plain"), ("copy", "plain")}
    assert all(0 <= r["read"] <= 1 and r["n"] == 4 for r in rows)
    table = pd.DataFrame([{"model_kind": k, "seed": s, **r} for k, s in (("base", None), ("alpaca", 1)) for r in rows])
    table.loc[(table.model_kind == "alpaca") & (table.language == "en") & (table.probe == "reading"), "recalled"] = 0.5
    table.loc[table.model_kind == "alpaca", "read"] = 0.0
    text = reading_summary(table)
    assert "Phase 1 on alpaca (1 seed(s))" in text and "from memory (English: 50% of answers" in text
    table.loc[table.model_kind == "alpaca", "read"] = 0.6
    assert "from memory" not in reading_summary(table)
