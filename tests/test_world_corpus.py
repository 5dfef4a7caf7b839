"""The sandbox world's pre-training corpus: reading passages (factual or counterfactual) and the extra copy and
reading documents that give the base model an in-context copy to read with."""

from __future__ import annotations

import re
from dataclasses import replace

from cft_utils.sandbox.world import World, WorldSpec

SMALL = WorldSpec(n_phase1=40, n_phase2_per_language=8, n_instruct=40, n_test_per_language=5, n_corpus_documents=700,
                  english_share=0.5)
PASSAGE = re.compile(r"^text : (.*) question : (?:what colour is the (\w+)|where is the (\w+) found) \? answer : (\w+) \.$")


def _english_passages(docs):
    return [m for d in docs if (m := PASSAGE.match(d))]


def test_new_parameters_left_unset_change_neither_the_world_id_nor_the_corpus():
    explicit = replace(SMALL, reading_counterfactual_share=None, n_copy_documents=None, n_reading_documents=None)
    assert explicit.world_id() == SMALL.world_id()
    assert World(explicit).corpus() == World(SMALL).corpus()
    assert replace(SMALL, n_copy_documents=10).world_id() != SMALL.world_id()


def test_reading_passages_state_facts_by_default_and_contradict_them_when_counterfactual():
    def facts_kept(spec):
        world = World(spec)
        kept = []
        for m in _english_passages(world.corpus()):
            name, answer = m.group(2) or m.group(3), m.group(4)
            fact = world.facts[name].colour if m.group(2) else world.facts[name].place
            assert f"the {name} is {answer} ." in m.group(1) or f"the {name} is found in the {answer} ." in m.group(1)
            kept.append(answer == fact)
        return kept

    factual = facts_kept(SMALL)
    assert factual and all(factual)
    counter = facts_kept(replace(SMALL, reading_counterfactual_share=1.0))
    assert len(counter) == len(factual) and sum(counter) < 0.4 * len(counter)  # random values: some agree by chance


def test_extra_copy_and_reading_documents():
    spec = replace(SMALL, n_copy_documents=300, n_reading_documents=200, reading_counterfactual_share=1.0)
    world = World(spec)
    docs = world.corpus()
    base = len(World(SMALL).corpus())
    assert len(docs) == base + 500
    copies, reading = docs[base:base + 300], docs[base + 300:]
    english = [d for d in copies if d.startswith("the list is :")]
    assert 0.35 < len(english) / len(copies) < 0.65  # english_share 0.5
    for d in english:
        first, second = re.match(r"the list is : (.*) \. again : (.*) \.$", d).groups()
        assert first == second and 3 <= len(first.split(" , ")) <= 8
    assert len(_english_passages(reading)) > 50
    assert World(spec).corpus() == docs  # seeded
