"""The shipped paper-profile lm-eval tasks: they load offline against local files and score right.

The fixtures are our own records in the real formats: XQuAD's SQuAD v1.1 JSON
(tests/fixtures/xquad/xquad.<lang>.json) and XL-Sum's JSONL (id, url, title, summary, text).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cft_utils.evaluation.tasks.manager import (
    GROUPS,
    MLQA_LANGUAGES,
    MLQA_TASKS,
    PAPER_TASKS_DIR,
    XLSUM_LANGUAGES,
    XLSUM_TASKS,
    XQUAD_LANGUAGES,
    XQUAD_TASKS,
    shipped_task_yamls,
    squad_to_records,
    task_manager,
    write_local_task_dir,
)

FIX = Path(__file__).parent / "fixtures"
XQUAD_FIX = {lang: FIX / "xquad" / f"xquad.{lang}.json" for lang in ("ar", "de", "zh")}
XLSUM_FIX = {cfg: FIX / "xlsum" / f"{cfg}_test.jsonl" for cfg in ("arabic", "hindi", "japanese")}
MLQA_FIX = FIX / "mlqa" / "test-context-de-question-de.json"  # MLQA's release layout (SQuAD v1.1 JSON)


def all_local_data() -> dict[str, Path]:
    """Every shipped task pointed at a fixture (a language without its own fixture borrows one)."""
    data = {}
    for lang in XQUAD_LANGUAGES:
        data[f"cft_xquad_{lang}"] = XQUAD_FIX.get(lang, XQUAD_FIX["de"])
    for cfg in XLSUM_LANGUAGES:
        data[f"cft_xlsum_{cfg}"] = XLSUM_FIX.get(cfg, XLSUM_FIX["japanese"])
    for lang in MLQA_LANGUAGES:
        data[f"cft_mlqa_{lang}"] = MLQA_FIX
    return data


@pytest.fixture(scope="module")
def tm_all(tmp_path_factory):
    return task_manager(
        local_data=all_local_data(), workdir=tmp_path_factory.mktemp("tasks"), include_defaults=False
    )


def test_shipped_files_match_the_declared_tasks():
    names = set()
    for path in shipped_task_yamls():
        # lm-eval's `!function` tag: read it as a plain string for this static check.
        loader = type("L", (yaml.SafeLoader,), {})
        loader.add_constructor("!function", lambda lo, node: lo.construct_scalar(node))
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506
        names.add(cfg.get("group") or cfg["task"])
    assert names == set(XQUAD_TASKS) | set(XLSUM_TASKS) | set(MLQA_TASKS) | set(GROUPS)
    assert len(XQUAD_TASKS) == 11 and len(XLSUM_TASKS) == 6 and len(MLQA_TASKS) == 6


def test_hub_sources_of_the_real_profile():
    from lm_eval.tasks._yaml_loader import load_yaml

    for lang in XQUAD_LANGUAGES:
        cfg = load_yaml(PAPER_TASKS_DIR / f"cft_xquad_{lang}.yaml", resolve_func=False)
        assert (cfg["dataset_path"], cfg["dataset_name"], cfg["validation_split"]) == (
            "google/xquad",
            f"xquad.{lang}",
            "validation",
        )
        assert cfg["num_fewshot"] == 0 and cfg["output_type"] == "generate_until"
    for lang_cfg in XLSUM_LANGUAGES:
        cfg = load_yaml(PAPER_TASKS_DIR / f"cft_xlsum_{lang_cfg}.yaml", resolve_func=False)
        assert cfg["dataset_kwargs"]["data_files"]["test"] == (
            f"hf://datasets/csebuetnlp/xlsum@refs/convert/parquet/{lang_cfg}/test/*.parquet"
        )


def test_every_shipped_yaml_loads_offline_with_local_data(tm_all):
    for name in [*XQUAD_TASKS, *XLSUM_TASKS, *MLQA_TASKS]:
        task = tm_all.load(name)["tasks"][name]
        docs = list(task.eval_docs)
        assert docs, name
        prompt = task.doc_to_text(docs[0])
        key = "text" if name.startswith("cft_xlsum") else "context"
        assert docs[0][key] in prompt, name  # the template renders the document, not a literal word
        assert task.config.process_results is not None
    for group, members in GROUPS.items():
        loaded = tm_all.load(group)
        assert set(loaded["groups"]) == {group}
        assert set(loaded["tasks"]) == set(members)


def test_squad_to_records_flattens_xquad_json(tmp_path):
    rows = squad_to_records(XQUAD_FIX["de"])
    assert [r["id"] for r in rows] == ["cft-q1", "cft-q2", "cft-q3"]
    assert rows[1]["answers"] == {"text": ["1850", "1850 gebaut"], "answer_start": [80, 80]}
    assert rows[1]["context"][80:84] == "1850"
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x", "question": "q"}]}]}]})
    )
    with pytest.raises(KeyError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\] lacks \['answers'\]"):
        squad_to_records(bad)


def test_local_data_errors_name_the_problem(tmp_path):
    with pytest.raises(KeyError, match="unknown task 'cft_xquad_xx'"):
        write_local_task_dir(tmp_path, {"cft_xquad_xx": XQUAD_FIX["de"]})
    with pytest.raises(FileNotFoundError, match="cft_xquad_de"):
        write_local_task_dir(tmp_path, {"cft_xquad_de": tmp_path / "missing.json"})


class OracleLM:
    """Answers each generation request with the gold answer of the document in its prompt."""

    def __new__(cls, lookup):
        from lm_eval.api.model import LM

        class _Oracle(LM):
            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for req in requests:
                    context = req.args[0]
                    hits = [ans for key, ans in lookup if key in context]
                    assert len(hits) == 1, context[:200]
                    out.append(hits[0])
                return out

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return _Oracle()


def test_perfect_answers_score_one_through_lm_eval(tm_all):
    import lm_eval

    # Keys: each question (unique in its prompt) and each article text.
    keyed = {}
    for path in XQUAD_FIX.values():
        for r in squad_to_records(path):
            keyed[r["question"]] = r["answers"]["text"][-1]
    for path in XLSUM_FIX.values():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            keyed[r["text"]] = r["summary"]
    lm = OracleLM(list(keyed.items()))
    res = lm_eval.simple_evaluate(
        model=lm, tasks=["cft_xquad", "cft_xlsum"], task_manager=tm_all, log_samples=False
    )
    assert res["results"]["cft_xquad_zh"]["f1,none"] == 1.0
    assert res["results"]["cft_xlsum_hindi"]["rougeL,none"] == 1.0
    assert res["groups"]["cft_xquad"]["f1,none"] == 1.0
    assert res["groups"]["cft_xquad"]["exact_match,none"] == 1.0
    assert res["groups"]["cft_xlsum"]["rougeL,none"] == 1.0
    assert res["results"]["cft_xquad_de"]["sample_len"] == 3


def test_tiny_model_end_to_end(tiny_model_dir, tm_all):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_model_dir()
    lm = HFLM(
        pretrained=AutoModelForCausalLM.from_pretrained(d),
        tokenizer=AutoTokenizer.from_pretrained(d),
        batch_size=4,
        max_length=256,
    )
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=["cft_xquad_zh", "cft_xlsum_hindi"],
        task_manager=tm_all,
        limit=2,
        gen_kwargs="max_gen_toks=4",
        log_samples=True,
    )
    for task, metrics in {
        "cft_xquad_zh": ("exact_match", "f1"),
        "cft_xlsum_hindi": ("rouge1", "rouge2", "rougeL"),
    }.items():
        r = res["results"][task]
        for m in metrics:
            assert 0.0 <= r[f"{m},none"] <= 1.0, (task, m)
        assert len(res["samples"][task]) == 2
    sample = res["samples"]["cft_xlsum_hindi"][0]
    assert "Summarize the article above in one sentence in Hindi." in sample["arguments"][0][0]


def test_override_stub_content(tmp_path):
    out = write_local_task_dir(tmp_path, {"cft_xquad_de": {"validation": XQUAD_FIX["de"]}})
    stub = yaml.safe_load((out / "cft_xquad_de.yaml").read_text(encoding="utf-8"))
    assert stub["include"] == str(PAPER_TASKS_DIR / "cft_xquad_de.yaml")
    assert stub["dataset_path"] == "json" and stub["dataset_name"] is None
    converted = Path(stub["dataset_kwargs"]["data_files"]["validation"])
    assert converted.is_absolute() and converted.suffix == ".jsonl"
    assert [json.loads(x)["id"] for x in converted.read_text().splitlines()] == ["cft-q1", "cft-q2", "cft-q3"]
