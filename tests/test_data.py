"""Loaders on local files in the real formats (Alpaca, MultiAlpaca, OpenOrca jsonl/parquet/CSV, mOpenOrca's
save_to_disk build, common-schema JSONL), filtering, seeded subsampling and malformed input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from cft_utils.config import load_config
from cft_utils.data.loaders import load_records
from cft_utils.data.schema import DataError, validate_record
from cft_utils.paths import PROJECT_ROOT

FIXTURES = Path(__file__).parent / "fixtures"
REAL_SAMPLES = PROJECT_ROOT.parent / "shared" / "data" / "real-samples"  # optional; absent on CI


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """A loader that fell back to the hub would try to connect: make that an immediate failure."""
    def refuse(*a, **k):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_cfg(tmp_path: Path, datasets: dict, seed: int = 0, name: str = "data.yaml"):
    """A small parameter file in ``tmp_path`` whose datasets point at local files."""
    first = next(iter(datasets))
    raw = {"profile": "datatest", "seed": seed, "models": [{"name": "m", "base": "org/base"}],
           "datasets": datasets, "grid": {"models": ["m"], "phase1": [first], "phase2": []},
           "training": {"global_batch_size": 2, "per_device_batch_size": 2, "gradient_accumulation_steps": 1}}
    f = tmp_path / name
    f.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return load_config(f)


def load(tmp_path, key="d", seed=0, **spec):
    return load_records(make_cfg(tmp_path, {key: spec}, seed=seed), key)


def user_text(rec):
    return rec["prompt"][-1]["content"]


# --------------------------------------------------------------------------------------------- loaders


def test_alpaca_json_array(tmp_path):
    rows = json.loads((FIXTURES / "alpaca_sample.json").read_text())
    recs = load(tmp_path, source="alpaca", path=str(FIXTURES / "alpaca_sample.json"))
    assert len(recs) == len(rows) == 3
    for rec, row in zip(recs, rows, strict=True):
        validate_record(rec, "test")
        assert rec["language"] == "en" and rec["dataset"] == "d" and rec["counterpart_id"] is None
        assert [m["role"] for m in rec["prompt"]] == ["user"]
        assert rec["completion"] == [{"role": "assistant", "content": row["output"]}]
        expected = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
        assert user_text(rec) == expected
    assert user_text(recs[1]).endswith("\n\n7, 2, 9, 4")  # the input follows the instruction
    assert len({r["id"] for r in recs}) == 3


def test_multialpaca_folder_per_language_with_null_inputs(tmp_path):
    recs = load(tmp_path, source="multialpaca", path=str(FIXTURES / "multialpaca"), languages=["es", "ja"])
    assert [r["language"] for r in recs] == ["es", "es", "ja", "ja"]
    raw = [json.loads(x) for lang in ("es", "ja") for x in (FIXTURES / "multialpaca" / f"{lang}.jsonl").open()]
    assert any(r["input"] is None for r in raw)  # the real format: input may be null
    for rec, row in zip(recs, raw, strict=True):
        validate_record(rec, "test")
        assert user_text(rec) == (f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"])
        assert rec["completion"][0]["content"] == row["output"]
    assert user_text(recs[3]) == "次の単語を英語に翻訳してください。\n\n猫"
    assert len({r["id"] for r in recs}) == 4


def test_multialpaca_language_selection(tmp_path):
    recs = load(tmp_path, source="multialpaca", path=str(FIXTURES / "multialpaca"), languages=["ja"])
    assert len(recs) == 2 and {r["language"] for r in recs} == {"ja"}


def _openorca_rows():
    return [json.loads(x) for x in (FIXTURES / "openorca_sample.jsonl").open()]


def _check_openorca(recs):
    rows = _openorca_rows()
    assert [r["id"] for r in recs] == [r["id"] for r in rows] == ["niv.101", "flan.202"]
    for rec, row in zip(recs, rows, strict=True):
        validate_record(rec, "test")
        assert rec["language"] == "en"
        assert user_text(rec) == row["question"] and rec["completion"][0]["content"] == row["response"]
    assert recs[0]["prompt"][0] == {"role": "system", "content": _openorca_rows()[0]["system_prompt"]}
    assert [m["role"] for m in recs[1]["prompt"]] == ["user"]  # empty system prompt: no system message


def test_openorca_jsonl(tmp_path):
    _check_openorca(load(tmp_path, source="openorca", path=str(FIXTURES / "openorca_sample.jsonl")))


def test_openorca_parquet_matches_jsonl(tmp_path):
    import pandas as pd

    pq = tmp_path / "openorca.parquet"
    pd.DataFrame(_openorca_rows()).to_parquet(pq)
    from_pq = load(tmp_path, source="openorca", path=str(pq))
    _check_openorca(from_pq)
    assert from_pq == load(tmp_path, source="openorca", path=str(FIXTURES / "openorca_sample.jsonl"))


@pytest.fixture(scope="module")
def mopenorca_build(tmp_path_factory):
    """A real mOpenOrca-format build (translation.build.build_translated_dataset -> datasets.save_to_disk)."""
    from cft_utils.data.translation.build import build_translated_dataset
    from cft_utils.data.translation.translators import SandboxTranslator

    english = [{"id": f"orca-{i}", "dataset": "openorca", "language": "en", "counterpart_id": None,
                "prompt": [{"role": "system", "content": "Answer briefly."},
                           {"role": "user", "content": f"Is the cat number {i} black?"}],
                "completion": [{"role": "assistant", "content": "Yes, the cat is black."}]} for i in range(4)]
    lex = {"fr": {"cat": "chat", "black": "noir", "yes": "oui"}, "de": {"cat": "Katze", "black": "schwarz"}}
    out = tmp_path_factory.mktemp("mopenorca")
    build = build_translated_dataset(english, ["fr", "de"], SandboxTranslator(lex), out, progress=False,
                                     langid=False, dataset_name="mopenorca")
    assert (out / "dataset" / "dataset_info.json").exists()
    return build.dataset_dir


def test_mopenorca_save_to_disk_folder(tmp_path, mopenorca_build):
    recs = load(tmp_path, source="mopenorca", path=str(mopenorca_build))
    assert len(recs) == 8 and {r["language"] for r in recs} == {"fr", "de"}
    for r in recs:
        validate_record(r, "test")
        assert r["counterpart_id"] == r["id"].rsplit("-", 1)[0] and r["counterpart_id"].startswith("orca-")
        assert r["prompt"][0]["role"] == "system"
    fr = next(r for r in recs if r["language"] == "fr")
    assert "chat" in user_text(fr) and fr["completion"][0]["content"] == "Oui, the chat is noir."
    only_de = load(tmp_path, source="mopenorca", path=str(mopenorca_build), languages=["de"])
    assert len(only_de) == 4 and {r["language"] for r in only_de} == {"de"}


def test_common_schema_jsonl_and_language_filter(tmp_path):
    recs = load(tmp_path, source="jsonl", path=str(FIXTURES / "common_sample.jsonl"))
    assert [(r["id"], r["language"], r["counterpart_id"]) for r in recs] == [
        ("x-1-fr", "fr", "x-1-en"), ("x-2-de", "de", "x-2-en")]
    assert [m["role"] for m in recs[1]["prompt"]] == ["system", "user"]
    de = load(tmp_path, source="jsonl", path=str(FIXTURES / "common_sample.jsonl"), languages=["de"])
    assert [r["id"] for r in de] == ["x-2-de"]


def test_relative_path_is_resolved_from_the_parameter_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.jsonl").write_text((FIXTURES / "common_sample.jsonl").read_text())
    assert len(load(tmp_path, source="jsonl", path="./d/c.jsonl")) == 2


@pytest.mark.bad_input("relative-path-without-dot-slash")
def test_relative_path_without_dot_slash_is_read_locally_not_from_the_hub(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "c.jsonl").write_text((FIXTURES / "common_sample.jsonl").read_text())
    assert len(load(tmp_path, source="jsonl", path="d/c.jsonl")) == 2  # the network is refused in this module
    (tmp_path / "orca").mkdir()
    (tmp_path / "orca" / "o.jsonl").write_text((FIXTURES / "openorca_sample.jsonl").read_text())
    _check_openorca(load(tmp_path, source="openorca", path="orca/o.jsonl"))
    # A missing file that looks like a path is a clear error naming the resolved path, not a hub lookup.
    with pytest.raises(DataError) as e:
        load(tmp_path, source="openorca", path="orca/missing.parquet")
    assert str(tmp_path / "orca" / "missing.parquet") in str(e.value) and "no such file" in str(e.value)


def test_csv_files_read_like_their_json_counterparts(tmp_path):
    import pandas as pd

    rows = json.loads((FIXTURES / "alpaca_sample.json").read_text())
    pd.DataFrame(rows).to_csv(tmp_path / "alpaca.csv", index=False)
    from_csv = load(tmp_path, source="alpaca", path=str(tmp_path / "alpaca.csv"))
    assert from_csv == load(tmp_path, source="alpaca", path=str(FIXTURES / "alpaca_sample.json"))
    orca = _openorca_rows()
    pd.DataFrame(orca).to_csv(tmp_path / "orca.csv", index=False)
    _check_openorca(load(tmp_path, source="openorca", path=str(tmp_path / "orca.csv")))
    # Cells are text: a number-like answer keeps its zeros, an empty cell is an empty input (not NaN).
    (tmp_path / "n.csv").write_text('instruction,input,output\n"Pad 7, to 3 digits",,007\n', encoding="utf-8")
    [rec] = load(tmp_path, source="alpaca", path=str(tmp_path / "n.csv"))
    assert user_text(rec) == "Pad 7, to 3 digits" and rec["completion"][0]["content"] == "007"


def test_json_file_holding_one_object_per_line_is_read_as_jsonl(tmp_path):
    p = _write(tmp_path, "alpaca.json", _jsonl(ok_alpaca, {**ok_alpaca, "instruction": "Say bye."}))
    assert [user_text(r) for r in load(tmp_path, source="alpaca", path=str(p))] == ["Say hi.", "Say bye."]


@pytest.mark.bad_input("non-utf8")
@pytest.mark.parametrize("name", ["c.jsonl", "a.csv"], ids=["jsonl", "csv"])
def test_non_utf8_file_is_a_data_error_naming_the_file(tmp_path, name):
    p = tmp_path / name
    good = _jsonl(_common(0)) if name.endswith("jsonl") else "instruction,input,output\nhi,,there\n"
    p.write_bytes(good.encode() + "caf\u00e9 ,,x\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load(tmp_path, source="jsonl" if name.endswith("jsonl") else "alpaca", path=str(p))
    assert str(p) in str(e.value) and "not UTF-8" in str(e.value) and f"line {good.count(chr(10)) + 1}" in str(e.value)


def _common(i, lang="en"):
    return {"id": f"r{i:03d}", "dataset": "x", "language": lang, "counterpart_id": None,
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "completion": [{"role": "assistant", "content": f"answer {i}"}]}


def test_max_records_is_a_seeded_subsample(tmp_path):
    f = tmp_path / "many.jsonl"
    f.write_text("".join(json.dumps(_common(i)) + "\n" for i in range(60)))
    all_ids = [r["id"] for r in load(tmp_path, source="jsonl", path=str(f))]
    a = [r["id"] for r in load(tmp_path, seed=3, source="jsonl", path=str(f), max_records=12)]
    b = [r["id"] for r in load(tmp_path, seed=3, source="jsonl", path=str(f), max_records=12)]
    c = [r["id"] for r in load(tmp_path, seed=4, source="jsonl", path=str(f), max_records=12)]
    assert len(a) == 12 and a == b  # same seed -> same subset
    assert a != c  # another seed -> another subset (probability of a clash ~1e-13)
    assert set(a) <= set(all_ids) and a == sorted(a)  # a subset, in file order
    assert len(load(tmp_path, source="jsonl", path=str(f), max_records=500)) == 60  # more than there is: all


def test_fixtures_are_self_contained():
    """The suite must pass on a fresh clone: fixtures are plain files in the repo, and no test reads the
    shared real samples except the optional, skip-guarded one below."""
    for p in FIXTURES.rglob("*"):
        assert not p.is_symlink(), p
    for t in Path(__file__).parent.glob("*.py"):
        text = t.read_text(encoding="utf-8")
        if t.name != Path(__file__).name:
            for needle in ("real-samples", "shared/data"):
                assert needle not in text, f"{t.name} reads the shared real samples"


@pytest.mark.skipif(not (REAL_SAMPLES / "multialpaca").is_dir(), reason="shared real samples not present")
def test_loaders_on_real_samples_when_present(tmp_path):
    langs = sorted(p.stem for p in (REAL_SAMPLES / "multialpaca").glob("*.jsonl"))
    recs = load(tmp_path, key="multialpaca", source="multialpaca", path=str(REAL_SAMPLES / "multialpaca"),
                languages=langs, max_records=200)
    assert len(recs) == 200 and {r["language"] for r in recs} <= set(langs)
    if (REAL_SAMPLES / "alpaca" / "alpaca_5000.json").exists():
        al = load(tmp_path, key="alpaca", source="alpaca", path=str(REAL_SAMPLES / "alpaca" / "alpaca_5000.json"),
                  max_records=100)
        assert len(al) == 100 and all(r["language"] == "en" for r in al)


# --------------------------------------------------------------------------------------------- bad input


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def _jsonl(*rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


ok_alpaca = {"instruction": "Say hi.", "input": "", "output": "hi"}
ok_orca = {"id": "o1", "system_prompt": "", "question": "Q?", "response": "A."}

# (case id, file name, file text, dataset spec (path filled in), substrings the error must contain)
BAD_DATA = [
    ("malformed-jsonl-line", "c.jsonl", _jsonl(_common(0), '{"id": "r1", "language": '),
     {"source": "jsonl"}, ["record 1 (line 2)", "not valid JSON"]),
    ("alpaca-missing-field", "a.json", json.dumps([ok_alpaca, {"instruction": "x", "input": ""}]),
     {"source": "alpaca"}, ["record 1", "missing field 'output'"]),
    ("alpaca-wrong-type", "a.json", json.dumps([{"instruction": "x", "input": "", "output": 3}]),
     {"source": "alpaca"}, ["record 0", "'output' must be a string, got int"]),
    ("alpaca-not-an-array", "a.json", json.dumps({"instruction": "x"}),
     {"source": "alpaca"}, ["expected a JSON array"]),
    ("alpaca-invalid-json", "a.json", "[{\"instruction\": ", {"source": "alpaca"}, ["not valid JSON"]),
    ("unsupported-file-type", "a.txt", "instruction,input,output\n", {"source": "alpaca"},
     ["unsupported file type '.txt'"]),
    ("alpaca-row-is-a-json-string", "a.json", json.dumps([ok_alpaca, "Say hi."]),
     {"source": "alpaca"}, ["record 1", "is a JSON string, expected an object"]),
    ("jsonl-row-is-a-json-list", "o.jsonl", _jsonl(ok_orca, '["o2", "Q?"]'),
     {"source": "openorca"}, ["record 1 (line 2)", "is a JSON array, expected an object"]),
    ("csv-missing-column", "a.csv", "instruction,output\nSay hi.,hi\n", {"source": "alpaca"},
     ["record 0", "missing field 'input'"]),
    ("csv-empty-output", "o.csv", "id,system_prompt,question,response\no1,,Q?,\n", {"source": "openorca"},
     ["record 0", "field 'response' is empty"]),
    ("openorca-empty-response", "o.jsonl", _jsonl(ok_orca, {**ok_orca, "id": "o2", "response": "  "}),
     {"source": "openorca"}, ["record 1", "field 'response' is empty"]),
    ("openorca-empty-question", "o.jsonl", _jsonl({**ok_orca, "question": ""}),
     {"source": "openorca"}, ["record 0", "field 'question' is empty"]),
    ("common-bad-role", "c.jsonl", _jsonl({**_common(0), "prompt": [{"role": "bot", "content": "x"}]}),
     {"source": "jsonl"}, ["record 0", "prompt[0]"]),
    ("common-missing-completion", "c.jsonl", _jsonl({k: v for k, v in _common(0).items() if k != "completion"}),
     {"source": "jsonl"}, ["record 0", "missing key 'completion'"]),
    ("common-empty-response", "c.jsonl",
     _jsonl(_common(0), {**_common(1), "completion": [{"role": "assistant", "content": " "}]}),
     {"source": "jsonl"}, ["record 1", "empty assistant response"]),
    ("common-last-message-not-user", "c.jsonl",
     _jsonl({**_common(0), "prompt": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}),
     {"source": "jsonl"}, ["record 0", "last prompt message"]),
    ("common-not-an-object", "c.jsonl", _jsonl("[1, 2]"), {"source": "jsonl"}, ["record 0", "expected an object"]),
    ("common-bad-counterpart", "c.jsonl", _jsonl({**_common(0), "counterpart_id": 5}),
     {"source": "jsonl"}, ["record 0", "counterpart_id"]),
    ("multialpaca-missing-language", "ma/es.jsonl", _jsonl(ok_alpaca),
     {"source": "multialpaca", "languages": ["fr"]}, ["no file fr.jsonl", "'fr'"]),
]


@pytest.mark.bad_input()  # each case is a row of docs/bad_inputs.md
@pytest.mark.parametrize("case_id,name,text,spec,needles", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_malformed_data_names_file_and_record(tmp_path, case_id, name, text, spec, needles):
    p = _write(tmp_path, name, text)
    path = p.parent if spec["source"] == "multialpaca" else p
    with pytest.raises(DataError) as e:
        load(tmp_path, **spec, path=str(path))
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in error message:\n{msg}"


@pytest.mark.bad_input("duplicate-record-id")
def test_duplicate_ids_are_rejected(tmp_path):
    p = _write(tmp_path, "o.jsonl", _jsonl(ok_orca, {**ok_orca, "question": "Other?"}))
    cfg = make_cfg(tmp_path, {"orca": {"source": "openorca", "path": str(p)}})
    with pytest.raises(DataError) as e:
        load_records(cfg, "orca")
    assert cfg.source_file in str(e.value) and "'orca'" in str(e.value) and "duplicate record id 'o1'" in str(e.value)


@pytest.mark.bad_input("dataset-empty-after-language-filter")
def test_empty_after_language_filter(tmp_path):
    cfg = make_cfg(tmp_path, {"c": {"source": "jsonl", "path": str(FIXTURES / "common_sample.jsonl"),
                                    "languages": ["sw"]}})
    with pytest.raises(DataError, match=r"dataset 'c' is empty after filtering"):
        load_records(cfg, "c")


@pytest.mark.bad_input("dataset-key-unknown")
def test_unknown_dataset_key(tmp_path):
    cfg = make_cfg(tmp_path, {"c": {"source": "jsonl", "path": str(FIXTURES / "common_sample.jsonl")}})
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        load_records(cfg, "nope")


@pytest.mark.bad_input("mopenorca-not-built")
def test_unbuilt_mopenorca_is_a_clear_error_not_a_hub_lookup(tmp_path):
    cfg = make_cfg(tmp_path, {"mo": {"source": "mopenorca", "path": "./not_built"}})
    with pytest.raises(DataError) as e:
        load_records(cfg, "mo")
    assert str(tmp_path / "not_built") in str(e.value) and "'mo'" in str(e.value)


def test_world_is_generated_once_per_spec_and_callers_get_fresh_records():
    """``world_for`` shares one generated world per spec within a process (the loaders, the executor's workers and
    the notebooks ask for it many times); a different spec is a different world; records are new on each call."""
    from dataclasses import replace

    from cft_utils.sandbox.world import WorldSpec, world_for

    spec = WorldSpec(n_phase1=40, n_phase2_per_language=8, n_instruct=40, n_test_per_language=5)
    w = world_for(spec)
    assert world_for(replace(spec)) is w  # an equal spec (another object) gets the same world
    assert world_for(replace(spec, seed=spec.seed + 1)) is not w
    a, b = w.dataset("alpaca"), w.dataset("alpaca")
    assert a == b and a[0] is not b[0]
    a[0]["prompt"][0]["content"] = "changed by a caller"
    assert w.dataset("alpaca")[0]["prompt"][0]["content"] != "changed by a caller"


def test_in_notebook_is_false_in_a_script_without_importing_ipython():
    import subprocess
    import sys

    code = "import sys; from cft_utils.outputs import in_notebook; print(in_notebook(), 'IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_sandbox_datasets_are_read_from_the_world_dump_once_it_is_complete(tmp_path, monkeypatch):
    """Every training process loads its sandbox dataset; once the world is dumped (``world.json`` written last)
    the loaders read the dump instead of generating the records again, and get the same records."""
    from cft_utils.config import load_config
    from cft_utils.sandbox import world as world_mod
    from cft_utils.sandbox.build import dump_world, sandbox_paths

    monkeypatch.setenv("CFT_HOME", str(tmp_path))
    cfg = load_config("smoke")
    generated = {k: load_records(cfg, k) for k in ("alpaca", "multialpaca", "openorca")}
    wd = sandbox_paths(cfg)["world"]
    dump_world(world_mod.world_for(cfg.sandbox.world_spec()), wd)
    assert (wd / "world.json").exists() and (wd / "data" / "alpaca.jsonl").exists()

    def no_generation(self, name):
        raise AssertionError(f"generated {name} although the world is dumped")

    monkeypatch.setattr(world_mod.World, "dataset", no_generation)
    for k, recs in generated.items():
        assert load_records(cfg, k) == recs
    (wd / "world.json").unlink()  # an incomplete dump is not read
    with pytest.raises(AssertionError, match="generated alpaca"):
        load_records(cfg, "alpaca")
