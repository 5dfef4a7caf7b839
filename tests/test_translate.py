"""Selective translation (cft_utils.data.translation): protected spans, segmentation, backends, resumable builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cft_utils.data.schema import validate_record
from cft_utils.data.translation.build import build_translated_dataset, load_translated_dataset, sample_records
from cft_utils.data.translation.pipeline import translate_texts
from cft_utils.data.translation.segment import split_for_translation
from cft_utils.data.translation.spans import SpanRestoreError, check_placeholders, protect, restore
from cft_utils.data.translation.translators import (
    NLLB_CODES,
    OpenAICompatibleTranslator,
    SandboxTranslator,
    TransformersTranslator,
    Translator,
    choose_placeholder_style,
)
from cft_utils.languages import MULTIALPACA_LANGUAGES

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class EveryOtherWord(Translator):
    """Changes every other whitespace-separated word (placeholders included only if ``hit_placeholders``)."""

    name, version = "every-other-word", "1"

    def __init__(self, style="bracket"):
        self.placeholder_style = style
        self.calls: list[list[str]] = []

    def translate_batch(self, texts, src_lang, tgt_lang):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            words = t.split(" ")
            out.append(" ".join(w[::-1].upper() if i % 2 == 0 and "⟦" not in w and "__P" not in w else w
                                for i, w in enumerate(words)))
        return out


# (text, protected substrings that must come back verbatim, kinds expected)
HAND_CASES = [
    ("Run this:\n```python\ndef add(a, b):\n    return a + b\n```\nand report what it prints.",
     ["```python\ndef add(a, b):\n    return a + b\n```"], {"code_block"}),
    ("Call `numpy.mean(x, axis=0)` on the array and then `len(x)` for the size.",
     ["`numpy.mean(x, axis=0)`", "`len(x)`"], {"inline_code"}),
    ("Solve $x^2 + 2x + 1 = 0$ for x, then show $$\\int_0^1 x\\,dx = \\frac{1}{2}$$ and \\(a+b\\) too.",
     ["$x^2 + 2x + 1 = 0$", "$$\\int_0^1 x\\,dx = \\frac{1}{2}$$", "\\(a+b\\)"], {"inline_math", "display_math"}),
    ("The matrix \\[A = \\begin{pmatrix} 1 & 0 \\end{pmatrix}\\] is given here.",
     ["\\[A = \\begin{pmatrix} 1 & 0 \\end{pmatrix}\\]"], {"display_math"}),
    ("Read https://en.wikipedia.org/wiki/Python_(programming_language). Also see www.example.com today.",
     ["https://en.wikipedia.org/wiki/Python_(programming_language)", "www.example.com"], {"url"}),
    ('Return the object {"name": "Alice", "tags": ["a", "b"], "age": 30} and the list [1, 2, 3] please.',
     ['{"name": "Alice", "tags": ["a", "b"], "age": 30}', "[1, 2, 3]"], {"json"}),
    ("Write to jane.doe+news@mail.example.co.uk before Friday, please.",
     ["jane.doe+news@mail.example.co.uk"], {"email"}),
    ("Dear {customer_name}, your order {{order_id}} ships; log %s and %(user)s and ${HOME} now.",
     ["{customer_name}", "{{order_id}}", "%s", "%(user)s", "${HOME}"], {"template"}),
    ("Wrap the title in <h1 class=\"big\">Title</h1> and add <br/> after it.",
     ['<h1 class="big">', "</h1>", "<br/>"], {"markup"}),
    ("The box weighs 12.5 kg, runs at 3 GHz, costs $40 and is 20% lighter than 2 lb of sugar.",
     ["12.5 kg", "3 GHz", "$40", "20%", "2 lb"], {"number_unit"}),
]


@pytest.mark.parametrize("text,keep,kinds", HAND_CASES, ids=[c[2].copy().pop() for c in HAND_CASES])
@pytest.mark.parametrize("style", ["bracket", "underscore"])
def test_protected_spans_survive_every_other_word_translator(text, keep, kinds, style):
    masked, spans = protect(text, style)
    assert {s.kind for s in spans} >= kinds
    for k in keep:
        assert k in [s.text for s in spans]
        assert k not in masked
    [out] = translate_texts([text], EveryOtherWord(style), "en", "fr")
    assert out.error is None and out.n_spans == out.n_spans_ok == len(spans)
    for k in keep:
        assert out.text.count(k) == text.count(k)
    assert out.text != text  # prose did change


def test_dollar_amounts_are_not_math_and_percent_words_are_not_printf():
    masked, spans = protect("Pay $5 and $10 now, 50% off, 10% discount, the 1990s.")
    assert [(s.kind, s.text) for s in spans] == [
        ("number_unit", "$5"), ("number_unit", "$10"), ("number_unit", "50%"), ("number_unit", "10%")]
    assert "1990s" in masked


def test_text_that_already_contains_placeholders_round_trips():
    text = "Literal ⟦3⟧ and __P0__ and a ⟦ stray bracket."
    masked, spans = protect(text)
    assert {s.kind for s in spans} == {"placeholder"}
    assert restore(masked, spans) == text


@pytest.mark.parametrize("mangle,field,value", [
    (lambda m: m.replace("⟦1⟧", ""), "missing", [1]),
    (lambda m: m + " ⟦0⟧", "duplicated", [0]),
    (lambda m: m + " ⟦9⟧", "unknown", [9]),
    (lambda m: m.replace("⟦1⟧", "⟦ 1 ⟧"), "altered", ["⟦", "⟧"]),
])
def test_restore_flags_missing_duplicated_unknown_altered(mangle, field, value):
    masked, spans = protect("Use `a` and `b` here.")
    assert len(spans) == 2
    bad = mangle(masked)
    with pytest.raises(SpanRestoreError) as e:
        restore(bad, spans)
    assert getattr(e.value, field) == value
    assert check_placeholders(masked, spans) is None


class DropPlaceholder(EveryOtherWord):
    name, version = "drop", "1"

    def translate_batch(self, texts, src_lang, tgt_lang):
        return [t.replace("⟦1⟧", "") for t in super().translate_batch(texts, src_lang, tgt_lang)]


def _rec(i, user, answer, system=None, dataset="openorca"):
    prompt = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}]
    return {"id": f"r{i}", "dataset": dataset, "language": "en", "counterpart_id": None, "prompt": prompt,
            "completion": [{"role": "assistant", "content": answer}]}


LEXICON = {"xx": {"the": "ka", "cat": "katze", "sees": "vidi", "dog": "hundo", "a": "u"},
           "yy": {"the": "le", "cat": "chato", "sees": "voir", "dog": "chieno"}}


def test_sandbox_translator_word_by_word_keeps_case_punctuation_and_unknowns():
    tr = SandboxTranslator(LEXICON)
    out = tr.translate_batch(["The cat sees THE dog, quickly! ⟦0⟧ __P1__ 3 cats."], "en", "xx")
    assert out == ["Ka katze vidi KA hundo, quickly! ⟦0⟧ __P1__ 3 cats."]
    assert tr.version == SandboxTranslator(dict(LEXICON)).version != SandboxTranslator({"xx": {}}).version
    with pytest.raises(KeyError, match="zz"):
        tr.translate_batch(["cat"], "en", "zz")


def test_segmentation_respects_budget_and_preserves_structure():
    text = ("First sentence is short. Second sentence is a bit longer than the first one!\n\n"
            "- a list item here\n⟦0⟧\n\n" + "word " * 40 + "end.")
    pieces = split_for_translation(text, max_tokens=6, count_tokens=lambda s: len(s.split()))
    assert "".join(p for _, p in pieces) == text
    assert all(len(p.split()) <= 6 for tr, p in pieces if tr)
    assert (False, "⟦0⟧") in pieces and (False, "- ") in pieces
    # Cut at spaces, a placeholder that ends up alone is not sent either.
    tight = split_for_translation("Use ⟦0⟧ at ⟦1⟧ now.", max_tokens=1, count_tokens=lambda s: len(s.split()))
    assert [p for tr, p in tight if tr] == ["Use", "at", "now."]
    # Through a translator the paragraph breaks stay where they were, and the code-only line is not sent.
    tr = EveryOtherWord()
    tr.max_input_tokens = 6
    tr.count_tokens = lambda s: len(s.split())
    src = "Alpha beta gamma delta.\n\n```\ncode here\n```\n\nEpsilon zeta eta theta iota kappa lambda mu."
    [out] = translate_texts([src], tr, "en", "fr")
    assert out.text.split("\n\n")[1] == "```\ncode here\n```"
    assert out.text.count("\n\n") == 2
    sent = [p for call in tr.calls for p in call]
    assert all("⟦" not in p for p in sent) and all(len(p.split()) <= 6 for p in sent)


def test_validate_and_sample_records():
    recs = [_rec(i, f"q{i}", f"a{i}") for i in range(20)]
    a, b = sample_records(recs, 5, seed=1), sample_records(recs, 5, seed=1)
    assert a == b and len(a) == 5 and a != sample_records(recs, 5, seed=2)
    assert [r["id"] for r in a] == sorted((r["id"] for r in a), key=lambda x: int(x[1:]))
    with pytest.raises(ValueError, match="n=21"):
        sample_records(recs, 21)
    bad = _rec(3, "q", "a")
    bad["completion"] = [{"role": "user", "content": "x"}]
    with pytest.raises(ValueError, match=r"id='r3'.*completion\[0\]"):
        validate_record(bad, "record 3")


def _expected_ids(recs, langs):
    return sorted(f"{r['id']}-{lang}" for lang in langs for r in recs)


def test_build_sandbox_end_to_end_and_quality_report(tmp_path):
    recs = [_rec(0, "cat cat", "cat", system=""), _rec(1, "see `a` and `b`", "the dog"),
            _rec(2, "The cat sees the dog.", "A dog.", system="the dog")]
    tr = SandboxTranslator(LEXICON)
    res = build_translated_dataset(recs, ["xx", "yy"], tr, tmp_path, shard_size=2, progress=False)
    ds = load_translated_dataset(tmp_path)
    assert sorted(ds["id"]) == _expected_ids(recs, ["xx", "yy"]) and res.n_kept == 6 and res.n_rejected == 0
    row = ds.filter(lambda r: r["id"] == "r2-xx")[0]
    assert row["counterpart_id"] == "r2" and row["language"] == "xx" and row["dataset"] == "mopenorca"
    assert row["prompt"] == [{"role": "system", "content": "ka hundo"},
                             {"role": "user", "content": "Ka katze vidi ka hundo."}]
    assert row["completion"][0]["content"] == "U hundo."
    assert row["translator"] == tr.name and row["translator_version"] == tr.version
    # r0 -> "katze katze" + "katze" from "cat cat" + "cat": ratio 16/10.
    report = json.loads((tmp_path / "quality_report.json").read_text())
    xx = next(r for r in report["languages"] if r["language"] == "xx")
    assert xx["langid_status"] == "unsupported" and xx["langid_wrong"] is None
    assert xx["spans_total"] == 2 and xx["span_survival_rate"] == 1.0
    ratios = [16 / 10, len("see `a` and `b`" "ka hundo") / len("see `a` and `b`" "the dog"),
              len("ka hundo" "Ka katze vidi ka hundo." "U hundo.") / len("the dog" "The cat sees the dog." "A dog.")]
    assert xx["length_ratio_mean"] == pytest.approx(sum(ratios) / 3)
    csv_text = (tmp_path / "quality_report.csv").read_text()
    assert csv_text.splitlines()[0].startswith("language,n_input,n_kept")


def test_dropped_placeholder_rejects_record_and_is_counted(tmp_path):
    recs = [_rec(0, "cat cat", "cat"), _rec(1, "see `a` and `b`", "ok")]
    res = build_translated_dataset(recs, ["xx"], DropPlaceholder(), tmp_path, shard_size=10, progress=False)
    assert res.n_kept == 1 and res.n_rejected == 1
    assert load_translated_dataset(tmp_path)["id"] == ["r0-xx"]
    rej = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert rej == [{"id": "r1", "language": "xx",
                    "errors": [{"field": "prompt[0]", "missing": [1], "duplicated": [], "unknown": [],
                                "altered": []}]}]
    row = json.loads((tmp_path / "quality_report.json").read_text())["languages"][0]
    assert (row["n_rejected"], row["rejected_rate"], row["spans_total"], row["span_survival_rate"]) == (
        1, 0.5, 2, 0.5)


def test_empty_translation_of_a_non_empty_text_is_rejected():
    class Empty(EveryOtherWord):
        def translate_batch(self, texts, src_lang, tgt_lang):
            return ["" for _ in texts]

    out = translate_texts(["Hello there.", "", "```\ncode only\n```"], Empty(), "en", "fr")
    assert [o.error for o in out] == [{"empty_output": True}, None, None]
    assert [o.text for o in out[1:]] == ["", "```\ncode only\n```"]


def test_a_build_that_rejects_everything_still_saves_an_empty_dataset(tmp_path):
    res = build_translated_dataset([_rec(0, "see `a` and `b`", "x")], ["xx"], DropPlaceholder(), tmp_path,
                                   progress=False)
    assert (res.n_kept, res.n_rejected, len(load_translated_dataset(tmp_path))) == (0, 1, 0)
    row = json.loads((tmp_path / "quality_report.json").read_text())["languages"][0]
    assert row["length_ratio_mean"] is None and row["rejected_rate"] == 1.0


class FailAfter(SandboxTranslator):
    """Same name/version as the sandbox translator; raises after ``n`` batches (an interrupted build)."""

    def __init__(self, lexicon, n):
        super().__init__(lexicon)
        self.left = n
        self.batches = 0

    def translate_batch(self, texts, src_lang, tgt_lang):
        self.batches += 1
        if self.left == 0:
            raise RuntimeError("simulated crash")
        self.left -= 1
        return super().translate_batch(texts, src_lang, tgt_lang)


def test_interrupted_build_resumes_without_duplicates_or_drops(tmp_path):
    recs = [_rec(i, f"the cat {i} sees", f"dog {i}") for i in range(23)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        # batch_size 4 -> a shard of 5 records (10 texts) takes 3 batches; crash inside the 3rd shard
        build_translated_dataset(recs, ["xx", "yy"], FailAfter(LEXICON, 7), tmp_path, shard_size=5,
                                 batch_size=4, progress=False)
    assert len(list((tmp_path / "shards" / "xx").glob("*.meta.json"))) == 2
    resumed = FailAfter(LEXICON, 10_000)
    build_translated_dataset(recs, ["xx", "yy"], resumed, tmp_path, shard_size=5, batch_size=4, progress=False)
    ids = load_translated_dataset(tmp_path)["id"]
    assert len(ids) == len(set(ids)) and sorted(ids) == _expected_ids(recs, ["xx", "yy"])
    # left: xx shards 2-4 and yy shards 0-4; a full shard takes 3 batches, the last (3 records) 2
    assert resumed.batches == 3 * 6 + 2 * 2
    # A shard whose data was written but whose meta was not (killed in between) is redone, not trusted.
    data = tmp_path / "shards" / "yy" / "00001.jsonl"
    (tmp_path / "shards" / "yy" / "00001.meta.json").unlink()
    data.write_text('{"id": "garbage"}\n')
    build_translated_dataset(recs, ["xx", "yy"], SandboxTranslator(LEXICON), tmp_path, shard_size=5,
                             batch_size=4, progress=False)
    assert sorted(load_translated_dataset(tmp_path)["id"]) == _expected_ids(recs, ["xx", "yy"])
    # A different translator on the same folder is refused with a clear message.
    with pytest.raises(ValueError, match="translator_version"):
        build_translated_dataset(recs, ["xx"], SandboxTranslator({"xx": {}}), tmp_path, shard_size=5,
                                 progress=False)


CHILD = """
import sys, time
from cft_utils.data.translation.build import build_translated_dataset
from cft_utils.data.translation.translators import SandboxTranslator
class Slow(SandboxTranslator):
    def translate_batch(self, texts, s, t):
        time.sleep(0.15)
        return super().translate_batch(texts, s, t)
recs = [{{"id": f"r{{i}}", "dataset": "o", "prompt": [{{"role": "user", "content": f"the cat {{i}}"}}],
         "completion": [{{"role": "assistant", "content": "the dog"}}]}} for i in range(40)]
build_translated_dataset(recs, ["xx"], Slow({lexicon!r}), sys.argv[1], shard_size=4, batch_size=2, progress=False)
"""


def test_build_killed_with_sigkill_and_rerun(tmp_path):
    out = tmp_path / "build"
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(lexicon=LEXICON), str(out)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(out.glob("shards/xx/*.meta.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    n_done = len(list(out.glob("shards/xx/*.meta.json")))
    assert 2 <= n_done < 10 and not (out / "dataset").exists()
    recs = [{"id": f"r{i}", "dataset": "o", "prompt": [{"role": "user", "content": f"the cat {i}"}],
             "completion": [{"role": "assistant", "content": "the dog"}]} for i in range(40)]
    build_translated_dataset(recs, ["xx"], SandboxTranslator(LEXICON), out, shard_size=4, batch_size=2,
                             progress=False)
    ds = load_translated_dataset(out)
    assert sorted(ds["id"]) == sorted(f"r{i}-xx" for i in range(40))
    assert set(ds["completion"][0][0].values()) == {"assistant", "ka hundo"}


def test_langid_flags_outputs_in_the_wrong_language(tmp_path):
    class Fixed(Translator):
        name, version = "fixed", "1"

        def translate_batch(self, texts, src_lang, tgt_lang):
            table = {"one": "Le chat noir dort tranquillement sur le canapé du salon pendant que nous mangeons.",
                     "two": "The black cat sleeps quietly on the sofa in the living room while we eat."}
            return [table.get(t.split()[0], t) for t in texts]

    recs = [_rec(1, "one", "one"), _rec(2, "two", "two")]
    build_translated_dataset(recs, ["fr"], Fixed(), tmp_path, progress=False)
    rep = json.loads((tmp_path / "quality_report.json").read_text())
    row = rep["languages"][0]
    assert (row["langid_status"], row["langid_checked"], row["langid_wrong"], row["langid_wrong_rate"]) == (
        "ok", 2, 1, 0.5)
    assert rep["details"]["fr"]["langid_flagged"] == [{"id": "r2-fr", "detected": "en"}]
    build_translated_dataset(recs, ["fr"], Fixed(), tmp_path, progress=False, langid=False)
    row = json.loads((tmp_path / "quality_report.json").read_text())["languages"][0]
    assert row["langid_status"] == "skipped" and row["langid_wrong_rate"] is None


def test_push_to_hub_is_off_by_default_and_uses_env_token(tmp_path, monkeypatch):
    import datasets

    pushed = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, **kw: pushed.append((repo, kw)))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    build_translated_dataset([_rec(0, "cat", "dog")], ["xx"], SandboxTranslator(LEXICON), tmp_path / "a",
                             progress=False)
    assert pushed == []
    build_translated_dataset([_rec(0, "cat", "dog")], ["xx"], SandboxTranslator(LEXICON), tmp_path / "b",
                             progress=False, push_to_hub="me/mopenorca")
    assert pushed == [("me/mopenorca", {"token": "hf_secret", "private": True})]


# ----------------------------------------------------------------------------------- transformers backend


@pytest.fixture
def one_thread():
    """Tiny models run ~30x faster on one thread than on two busy cores (thread contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_transformers_causal_backend_end_to_end(tiny_model_dir, tmp_path, one_thread):
    tr = TransformersTranslator(tiny_model_dir("llama"), max_input_tokens=8, max_new_tokens=6, batch_size=3,
                                device="cpu")
    assert tr.code_scheme == "prompt" and tr.placeholder_style == "bracket" and not tr.split_lines
    assert tr.name.startswith("transformers:tiny-llama") and "rev=local-" in tr.version
    fed = []
    generate = tr._generate
    tr._generate = lambda texts, s, t: fed.append(list(texts)) or generate(texts, s, t)
    long = "the cat sees the dog . " * 6
    out = tr.translate_batch(["hello there", long, ""], "en", "fr")
    assert len(out) == 3 and all(isinstance(o, str) for o in out) and out[2] == ""
    pieces = [p for batch in fed for p in batch]
    assert len(pieces) >= 4 and all(tr.count_tokens(p) <= 8 for p in pieces)  # the long text was split
    assert all(len(batch) <= 3 for batch in fed) and "hello there" in pieces and "" not in pieces
    recs = [_rec(0, "the cat sees the dog", "hi there"), _rec(1, "use `x` now", "ok then")]
    res = build_translated_dataset(recs, ["fr", "de"], tr, tmp_path, shard_size=1, progress=False)
    assert res.n_kept + res.n_rejected == 4  # garbage output: kept or rejected, never lost
    assert len(load_translated_dataset(tmp_path)) == res.n_kept
    report = json.loads((tmp_path / "quality_report.json").read_text())
    assert {r["language"] for r in report["languages"]} == {"fr", "de"}


def _seq2seq_dir(tmp_path, kind, tiny_tokenizer):
    import copy

    from transformers import (
        M2M100Config,
        M2M100ForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = copy.deepcopy(tiny_tokenizer)
    codes = ["<2fr>", "<2de>"] if kind == "madlad" else ["eng_Latn", "fra_Latn"]
    tok.add_tokens(codes, special_tokens=True)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    if kind == "madlad":
        cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
                       pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
        model = T5ForConditionalGeneration(cfg)
    else:
        cfg = M2M100Config(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=pad, eos_token_id=eos,
                           bos_token_id=eos, decoder_start_token_id=eos)
        model = M2M100ForConditionalGeneration(cfg)
    d = tmp_path / f"tiny-{kind}"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_transformers_seq2seq_madlad_and_nllb_schemes(tmp_path, tiny_tokenizer, one_thread):
    tr = TransformersTranslator(_seq2seq_dir(tmp_path, "madlad", tiny_tokenizer), max_new_tokens=4,
                                device="cpu")
    assert tr.code_scheme == "madlad" and tr.split_lines
    assert tr._model_inputs(["hello"], "en", "fr") == ["<2fr> hello"]
    assert len(tr.translate_batch(["hello", "the cat sees"], "en", "fr")) == 2

    tr = TransformersTranslator(_seq2seq_dir(tmp_path, "nllb", tiny_tokenizer), max_new_tokens=4, device="cpu")
    assert tr.code_scheme == "nllb" and tr._code("fr") == "fra_Latn"
    seen = []
    generate = tr.model.generate

    def spy(**kw):
        out = generate(**kw)
        seen.append(out)
        return out

    tr.model.generate = spy
    [out] = translate_texts(["The cat sees `x`."], tr, "en", "fr")
    fra = tr.tokenizer.convert_tokens_to_ids("fra_Latn")
    assert seen and all(int(row[1]) == fra for o in seen for row in o)  # forced target-language token
    assert out.n_spans == 1
    with pytest.raises(KeyError, match="xx"):
        tr.translate_batch(["hi"], "en", "xx")


def test_placeholder_style_follows_what_the_tokenizer_can_spell(tiny_tokenizer):
    class AsciiOnly:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) if ord(c) < 128 else 0 for c in text]}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids if i)

    assert choose_placeholder_style(AsciiOnly()) == "underscore"
    assert choose_placeholder_style(tiny_tokenizer) == "bracket"


def test_language_code_tables_cover_multialpaca():
    assert set(MULTIALPACA_LANGUAGES) <= set(NLLB_CODES)
    assert NLLB_CODES["ar"] == "arb_Arab" and NLLB_CODES["ja"] == "jpn_Jpan"


# ----------------------------------------------------------------------------- OpenAI-compatible backend


class _StubHandler(BaseHTTPRequestHandler):
    seen: list = []
    fail_first = [True]

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail_first[0]:
            type(self).fail_first[0] = False
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        text = body["messages"][-1]["content"]
        reply = {"choices": [{"message": {"role": "assistant", "content": " FR " + text + " "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub_server():
    _StubHandler.seen = []
    _StubHandler.fail_first = [True]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_compatible_backend_against_local_stub(stub_server, tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-LEAK-123"
    monkeypatch.setenv("CFT_TRANSLATE_MODEL", "stub-model")
    monkeypatch.setenv("CFT_TRANSLATE_BASE_URL", stub_server)
    monkeypatch.setenv("CFT_TRANSLATE_API_KEY", secret)
    tr = OpenAICompatibleTranslator(timeout=5, max_workers=2)
    assert secret not in tr.name + tr.version + repr(tr)
    assert tr.translate_batch(["hello ⟦0⟧", "world"], "en", "fr") == ["FR hello ⟦0⟧", "FR world"]
    assert _StubHandler.seen[0]["auth"] == f"Bearer {secret}"  # the first call got a 503 and was retried
    assert {s["path"] for s in _StubHandler.seen} == {"/v1/chat/completions"}
    assert _StubHandler.seen[-1]["body"]["model"] == "stub-model"
    assert "French" in _StubHandler.seen[-1]["body"]["messages"][0]["content"]
    res = build_translated_dataset([_rec(0, "Run `ls -la` at https://x.org now.", "Done.")], ["fr"], tr,
                                   tmp_path, progress=False, langid=False)
    assert res.n_kept == 1
    row = load_translated_dataset(tmp_path)[0]
    assert row["prompt"][0]["content"] == "FR Run `ls -la` at https://x.org now."
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_openai_backend_gives_up_with_a_clear_error(monkeypatch):
    monkeypatch.delenv("CFT_TRANSLATE_MODEL", raising=False)
    with pytest.raises(ValueError, match="CFT_TRANSLATE_MODEL"):
        OpenAICompatibleTranslator()
    monkeypatch.setenv("CFT_TRANSLATE_API_KEY", "sk-XYZ")  # keys come from the environment only
    tr = OpenAICompatibleTranslator("m", base_url="http://127.0.0.1:9", timeout=1, max_retries=1)
    with pytest.raises(RuntimeError, match="after 2 attempts") as e:
        tr.translate_batch(["hi"], "en", "fr")
    assert "sk-XYZ" not in str(e.value)


class _RefusingHandler(_StubHandler):
    """Answers every request with HTTP 401 (a wrong key): not retried, reported with its status."""

    def do_POST(self):
        type(self).seen.append(self.path)
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b'{"error": "bad key"}')


def test_openai_backend_reports_a_refusal_at_once_without_the_key(monkeypatch):
    _RefusingHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("CFT_TRANSLATE_API_KEY", "sk-REFUSED-456")
        tr = OpenAICompatibleTranslator("m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", timeout=5,
                                        max_retries=3)
        with pytest.raises(RuntimeError, match="answered HTTP 401") as e:
            tr.translate_batch(["hi"], "en", "fr")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert _RefusingHandler.seen == ["/v1/chat/completions"]  # 4xx other than 408/409/429: no retry
    assert "sk-REFUSED-456" not in str(e.value)
