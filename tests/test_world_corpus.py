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
    explicit = replace(SMALL, reading_counterfactual_share=None, n_copy_documents=None, n_reading_documents=None,
                       n_dialogue_documents=None)
    assert explicit.world_id() == SMALL.world_id()
    assert World(explicit).corpus() == World(SMALL).corpus()
    assert World(explicit).dialogues() == []
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


def test_dialogues_answer_in_the_language_they_are_asked_in_and_agree_with_the_facts():
    spec = replace(SMALL, n_dialogue_documents=400)
    world = World(spec)
    dialogues = world.dialogues()
    assert len(dialogues) == 400 and dialogues == World(spec).dialogues()  # seeded
    assert World(spec).corpus() == World(SMALL).corpus()  # an addition: the corpus itself is unchanged
    assert spec.world_id() != SMALL.world_id()
    english = 0
    for user, assistant in dialogues:
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        if user["content"].split()[0] in ("text", "what", "where"):  # English
            english += 1
            q = re.search(r"(?:what colour is the (\w+)|where is the (\w+) found) \?$", user["content"])
            name = q.group(1) or q.group(2)
            fact = world.facts[name]
            value = fact.colour if q.group(1) else fact.place
            assert value in assistant["content"].split()  # the world's fact, in English
        else:  # another language: no English function word in the answer
            assert not set(assistant["content"].split()) & {"the", "is", "found", "in"}
    assert 0.35 < english / len(dialogues) < 0.65  # english_share 0.5


def test_a_dialogue_renders_as_its_two_turns_in_the_chat_format(tiny_tokenizer):
    """Pre-training adds each dialogue through the tokenizer's chat template (build.pretrain_base_model), so the base
    model sees the turns exactly as fine-tuning and evaluation present them."""
    world = World(replace(SMALL, n_dialogue_documents=3))
    texts = [tiny_tokenizer.apply_chat_template(d, tokenize=False) for d in world.dialogues()]
    for d, t in zip(world.dialogues(), texts, strict=True):
        assert t == f"<|user|>{d[0]['content']}<|end|><|assistant|>{d[1]['content']}<|end|>"
