"""The sandbox benchmark generators: well-formed data in each benchmark's format, scorable by lm-eval's own
checkers, and never overlapping the world's training instructions."""

from __future__ import annotations

import json

import pytest

from cft_utils.config import load_config
from cft_utils.evaluation.metrics import process_results_gold_f1
from cft_utils.io import read_jsonl
from cft_utils.sandbox.bench import (
    CONSTRAINT_TO_IFEVAL,
    LA_BENCHMARKS,
    REFERENCE_GENERATOR,
    TA_TASKS,
    TrainingInstructions,
    build_bench,
    reference_output,
    untranslated_words,
)
from cft_utils.sandbox.world import SANDBOX_DATASETS, World


@pytest.fixture(scope="module")
def world():
    return World(load_config("smoke").sandbox.world_spec())


@pytest.fixture(scope="module")
def bench(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    manifest = build_bench(world, out)
    return {"manifest": manifest, "dir": out, "rows": {t: read_jsonl(f) for t, f in manifest["files"].items()}}


def _training_instructions(world) -> set[str]:
    """Independently of the module under test: every user prompt of every trainable set, every language."""
    out = set()
    for name in SANDBOX_DATASETS:
        try:
            recs = world.dataset(name)
        except ValueError:  # mOpenOrca is built from mopenorca_en by translation: covered below
            continue
        for r in recs:
            u = next(m["content"] for m in r["prompt"] if m["role"] == "user")
            out.add(u)
            out.update(world.translate(u, lang) for lang in world.other_languages)
    return out


def test_every_task_has_items_and_the_manifest_is_complete(bench, world):
    m = bench["manifest"]
    langs = world.other_languages
    want = set(TA_TASKS) | {f"{p}_{lang}" for p in LA_BENCHMARKS.values() for lang in langs}
    assert set(m["files"]) == want
    assert all(m["counts"][t] == len(bench["rows"][t]) > 0 for t in want)
    assert m["untranslated_template_words"] == [] == untranslated_words(world)
    assert m["world_id"] == world.spec.world_id()


def test_no_item_overlaps_training_data(bench, world):
    train = _training_instructions(world)
    rows = bench["rows"]
    prompts = [r["prompt"] for r in rows["sb_ifeval"]] + [r["instruction"] for r in rows["sb_alpacaeval"]]
    prompts += [r["prompt"] for t, rs in rows.items() if t.startswith(("sb_xquad", "sb_mlqa", "sb_xlsum")) for r in rs]
    prompts += [r["question"] for r in rows["sb_mmlu"]] + [r["query"] for r in rows["sb_hellaswag"]]
    assert not [p for p in prompts if p in train]
    assert not [p for p in prompts if any(t.startswith(p) for t in train)]
    # IFEval-like items are built from held-out (test split) instructions
    test_ids = {r["id"] for fam in "ABC" for r in world.test_set(fam, "en")}
    assert {r["source_id"] for r in rows["sb_ifeval"]} <= test_ids
    assert {r["id"] for r in rows["sb_alpacaeval"]} <= test_ids


def test_the_overlap_detector_catches_exact_and_prefix_matches(world):
    t = TrainingInstructions(world)
    some = next(iter(t.texts))
    assert t.overlaps(some) and t.overlaps(some[: len(some) // 2])
    assert not t.overlaps("a sentence no generator writes .")


def test_ifeval_rows_are_in_ifeval_format_and_lm_eval_scores_them(bench):
    from lm_eval.tasks.ifeval.utils import process_results

    from cft_utils.evaluation.ifeval_offline import prepare_ifeval

    prepare_ifeval()
    rows = bench["rows"]["sb_ifeval"]
    assert [r["key"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert set(r["instruction_id_list"]) <= set(CONSTRAINT_TO_IFEVAL.values())
        assert len(r["kwargs"]) == len(r["instruction_id_list"]) >= 1
    row = next(r for r in rows if "startend:end_checker" in r["instruction_id_list"])
    word = row["kwargs"][row["instruction_id_list"].index("startend:end_checker")]["end_phrase"]
    good = f'"the answer {word}"'
    assert process_results(row, [good])["prompt_level_strict_acc"] is True
    assert process_results(row, ["the answer"])["prompt_level_strict_acc"] is False
    quoted = next(r for r in rows if r["instruction_id_list"] == ["startend:quotation"])
    assert process_results(quoted, ['"fox , cat ."'])["prompt_level_strict_acc"] is True
    assert process_results(quoted, ["fox , cat ."])["prompt_level_strict_acc"] is False


def test_alpacaeval_rows_and_the_fixed_reference_system(bench):
    rows = bench["rows"]["sb_alpacaeval"]
    assert {r["dataset"] for r in rows} == {"family_A", "family_B", "family_C"}
    for r in rows:
        assert r["generator"] == REFERENCE_GENERATOR
        assert r["output"] == reference_output(r["gold"], r["id"])
    full = [r for r in rows if r["output"] == r["gold"]]
    assert 0 < len(full) < len(rows)  # about half complete, half cut
    assert reference_output("a b c d", "x") in ("a b c d", "a b")
    assert process_results_gold_f1({"gold": "the fox ."}, ["the fox ."]) == {"gold_f1": 1.0}
    with pytest.raises(KeyError, match="no 'gold'"):
        process_results_gold_f1({"id": "q"}, ["x"])


def test_mmlu_and_hellaswag_rows_have_one_true_option(bench, world):
    for r in bench["rows"]["sb_mmlu"]:
        assert len(r["choices"]) == len(set(r["choices"])) == 4
        name = r["question"].split("the ")[1].split(" ")[0]
        fact = world.facts[name]
        truth = {"colour": fact.colour, "place": fact.place, "size": str(fact.size)}[r["subject"]]
        assert r["choices"][r["answer"]].split()[-2] == truth
        assert sum(c.split()[-2] == truth for c in r["choices"]) == 1
    for r in bench["rows"]["sb_hellaswag"]:
        assert len(set(r["choices"])) == 4 and 0 <= r["label"] < 4
        assert r["choices"][r["label"]] not in r["query"]


def test_qa_and_summary_rows_are_in_the_language_and_the_answer_is_in_the_context(bench, world):
    # English words that the language translates (the world's thing names are shared by all languages)
    english = {w for w, t in world.lexicon[world.other_languages[0]].items() if t != w} - {"a"}
    assert len(english) > 50
    for task, rows in bench["rows"].items():
        if not task.startswith(("sb_xquad", "sb_mlqa", "sb_xlsum")):
            continue
        lang = task.rsplit("_", 1)[1]
        for r in rows:
            assert r["language"] == lang
            assert not set(r["prompt"].split()) & english, f"{task}: English words left in {r['prompt']!r}"
            if "answers" in r:
                a, s = r["answers"]["text"][0], r["answers"]["answer_start"][0]
                assert r["context"][s:s + len(a)] == a and r["context"] in r["prompt"]
            else:
                assert r["text"] in r["prompt"] and r["summary"].strip()
    # XQuAD-like items are parallel: the same ids in every language; MLQA-like ones are drawn per language
    langs = world.other_languages
    ids = [{r["id"].rsplit("-", 1)[0] for r in bench["rows"][f"sb_xquad_{lang}"]} for lang in langs]
    assert all(x == ids[0] for x in ids)
    q = [[r["question"] for r in bench["rows"][f"sb_mlqa_{lang}"]] for lang in langs]
    assert q[0] != [world.translate(world.translate(x, "en"), langs[0]) for x in q[1]]


def test_build_is_cached_and_deterministic(bench, world, tmp_path):
    f = bench["dir"] / "manifest.json"
    mtime = f.stat().st_mtime_ns
    again = build_bench(world, bench["dir"])
    assert f.stat().st_mtime_ns == mtime and again == bench["manifest"]
    other = build_bench(world, tmp_path)
    for task, path in other["files"].items():
        assert read_jsonl(path) == bench["rows"][task], task
    assert json.loads(f.read_text())["version"] >= 1
