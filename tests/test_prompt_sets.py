"""Prompt sets of the geometry notebook: MT-Bench (real file format), Flores (hub code, faked hub), sandbox sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cft_utils.analysis import prompt_sets as ps

FIXTURE = Path(__file__).parent / "fixtures" / "mt_bench" / "question.jsonl"


def test_mt_bench_first_turns_in_file_order():
    recs = ps.load_mt_bench(FIXTURE)
    rows = [json.loads(x) for x in FIXTURE.read_text().splitlines()]
    assert [r["id"] for r in recs] == [f"mt_bench-{r['question_id']}" for r in rows]
    assert [r["prompt"] for r in recs] == [[{"role": "user", "content": r["turns"][0]}] for r in rows]
    assert {r["language"] for r in recs} == {"en"} and recs[2]["category"] == "reasoning"
    second = ps.load_mt_bench(FIXTURE.parent, turn=1)  # a folder holding question.jsonl works too
    assert second[0]["prompt"][0]["content"] == rows[0]["turns"][1]
    assert [r["id"] for r in ps.load_mt_bench(FIXTURE, categories=["math", "coding"])] == [
        "mt_bench-111", "mt_bench-121"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question_id": 1, "category": "x"}', r"bad\.jsonl:2: missing key 'turns'"),
        ('{"question_id": 1, "category": "x", "turns": "hi"}', r":2: 'turns' must be a list"),
        ('{"question_id": 1, "category": "x", "turns": [""]}', r":2: question 1 has no non-empty turn 0"),
        ('{"question_id": 7, "category": "x", "turns": ["a"]}', r":2: duplicate question_id 7 \(first on line 1\)"),
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ],
)
def test_mt_bench_errors_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question_id": 7, "category": "x", "turns": ["ok"]}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        ps.load_mt_bench(f)


def test_mt_bench_sources(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ps.load_mt_bench(tmp_path / "missing.jsonl")
    calls = []

    def fake_download(repo_id, filename, repo_type=None, revision=None):
        calls.append((repo_id, filename, repo_type, revision))
        return str(FIXTURE)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    assert len(ps.load_mt_bench(ps.MT_BENCH_HUB)) == 6
    ps.load_mt_bench("hf://spaces/lmsys/mt-bench@abc123/data/mt_bench/question.jsonl")
    assert calls == [("HuggingFaceH4/mt_bench_prompts", "raw/question.jsonl", "dataset", None),
                     ("lmsys/mt-bench", "data/mt_bench/question.jsonl", "space", "abc123")]


def test_flores_pairs_by_id_and_subsamples(monkeypatch):
    import datasets

    data = {  # ids deliberately out of order and not all shared
        "eng_Latn": [{"id": i, "text": f"sentence {i}"} for i in (3, 1, 2, 4, 5)],
        "deu_Latn": [{"id": i, "text": f"Satz {i}"} for i in (1, 2, 3, 5)],
        "jpn_Jpan": [{"id": i, "sentence": f"文 {i}"} for i in (5, 3, 2, 1)],  # facebook/flores names it 'sentence'
    }
    seen = []

    def fake_load(source, config, split=None, revision=None):
        seen.append((source, config, split))
        return datasets.Dataset.from_list(data[config])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    recs = ps.load_flores_parallel(["en", "de", "ja"], n=None)
    assert seen == [(ps.FLORES_HUB, c, "dev") for c in ("eng_Latn", "deu_Latn", "jpn_Jpan")]
    assert [r["id"] for r in recs[:4]] == ["flores-1-en", "flores-2-en", "flores-3-en", "flores-5-en"]
    de = [r for r in recs if r["language"] == "de"]
    assert [r["prompt"] for r in de] == ["Satz 1", "Satz 2", "Satz 3", "Satz 5"]
    assert de[0]["counterpart_id"] == "flores-1-en" and recs[0]["counterpart_id"] is None
    assert [r["prompt"] for r in recs if r["language"] == "ja"][0] == "文 1"
    two = ps.load_flores_parallel(["en", "de"], n=2, seed=3)
    assert two == ps.load_flores_parallel(["en", "de"], n=2, seed=3) and len(two) == 4
    assert [r["id"].split("-")[1] for r in two[:2]] == [r["id"].split("-")[1] for r in two[2:]]
    data["deu_Latn"] = [{"id": 1, "content": "x"}]
    with pytest.raises(ValueError, match=r"deu_Latn/dev.*'id' and 'text'"):
        ps.load_flores_parallel(["en", "de"])
    with pytest.raises(KeyError, match="no Flores code"):
        ps.flores_config("xx")
    assert ps.flores_config("kor_Hang") == "kor_Hang" and ps.flores_config("ar") == "arb_Arab"


def test_as_text_prompts_flattens_messages():
    recs = [{"id": "a", "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
            {"id": "b", "prompt": "plain"}]
    assert [r["prompt"] for r in ps.as_text_prompts(recs)] == ["be brief\nhi", "plain"]
    assert recs[0]["prompt"][0]["content"] == "be brief"  # input untouched
    with pytest.raises(ValueError, match=r"record 0 \(id='c'\)"):
        ps.as_text_prompts([{"id": "c", "prompt": [{"role": "user"}]}])


def test_sandbox_sets_from_the_smoke_world():
    from cft_utils.config import load_config

    cfg = load_config("smoke")
    prompts = ps.geometry_prompts(cfg)
    n = cfg.sandbox.n_test_per_language
    assert len(prompts) == 3 * n and {r["family"] for r in prompts} == {"A", "B", "C"}
    assert all(isinstance(r["prompt"], str) and "completion" not in r for r in prompts)
    chat = ps.geometry_prompts(cfg, chat=True)
    assert chat[0]["prompt"][-1] == {"role": "user", "content": prompts[0]["prompt"].split("\n")[-1]}
    par = ps.parallel_sentences(cfg, n_per_language=6)
    langs = cfg.sandbox.languages
    assert [r["language"] for r in par] == [lang for lang in langs for _ in range(6)]
    by_lang = {lang: [r for r in par if r["language"] == lang] for lang in langs}
    # Parallel: the same test items in every language, pointing back to the English one.
    assert [r["counterpart_id"] for r in by_lang["qaa"]] == [r["id"] for r in by_lang["en"]]
    assert by_lang["qaa"][0]["prompt"] != by_lang["en"][0]["prompt"]
