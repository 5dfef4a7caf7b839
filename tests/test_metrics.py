"""SQuAD EM/F1 and Unicode ROUGE on hand-computed cases, including Arabic, Hindi, Chinese, Japanese."""

from __future__ import annotations

import re

import pytest

from cft_utils.evaluation import metrics as M


@pytest.mark.parametrize(
    "text, expected",
    [
        ("北京是中国的首都。", ["北", "京", "是", "中", "国", "的", "首", "都"]),
        # Mixed segmentation: Latin/digit runs stay words inside Chinese text.
        ("2008年北京Olympics", ["2008", "年", "北", "京", "olympics"]),
        # Devanagari vowel signs and viramas stay inside the word.
        ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),
        ("مرحبا، بالعالم؟", ["مرحبا", "بالعالم"]),
        ("Ελληνικά КОШКА", ["ελληνικά", "кошка"]),
        ("東京タワー", ["東", "京", "タ", "ワ", "ー"]),
        ("ภาษา", ["ภ", "า", "ษ", "า"]),
    ],
)
def test_tokenize_keeps_every_script(text, expected):
    assert M.tokenize(text) == expected


def test_python_re_word_class_would_split_hindi():
    # The reason for the `regex` module: `re`'s \w does not match combining marks.
    assert re.findall(r"\w+", "नमस्ते") != ["नमस्ते"]
    assert M.tokenize("नमस्ते") == ["नमस्ते"]


def test_normalize_answer_strips_unicode_punctuation_and_english_articles():
    assert M.normalize_answer("«Der Rhein»!", "de") == "der rhein"
    assert M.normalize_answer("The Eiffel Tower.", "en") == "eiffel tower"
    # Articles are English-only: "the" in other languages' answers is kept.
    assert M.normalize_answer("The Eiffel Tower.", "fr") == "the eiffel tower"
    assert M.normalize_answer("“一千二百”名居民。") == "一 千 二 百 名 居 民"


def test_em_f1_english_articles():
    assert M.squad_scores("the Eiffel Tower", ["Eiffel Tower"], "en") == {"exact_match": 1.0, "f1": 1.0}
    s = M.squad_scores("the Eiffel Tower", ["Eiffel Tower"], None)
    assert s["exact_match"] == 0.0
    assert s["f1"] == pytest.approx(0.8)  # P=2/3, R=1


def test_f1_arabic():
    # pred 2 tokens, gold 4 tokens, 2 shared: P=1, R=1/2, F1=2/3
    s = M.squad_scores("برج إيفل", ["برج إيفل في باريس"])
    assert s == {"exact_match": 0.0, "f1": pytest.approx(2 / 3)}
    assert M.squad_scores("برج إيفل.", ["برج إيفل"])["exact_match"] == 1.0


def test_f1_hindi():
    # pred: भारत की राजधानी (3); gold: नई दिल्ली भारत की राजधानी है (6); shared 3 -> P=1, R=.5
    assert M.token_f1("भारत की राजधानी", "नई दिल्ली भारत की राजधानी है") == pytest.approx(2 / 3)


def test_f1_chinese_is_character_level():
    # Whitespace tokens would make this 0 (one token each); characters give P=1, R=1/2.
    assert M.token_f1("北京", "中国北京") == pytest.approx(2 / 3)
    assert M.squad_scores("1850年。", ["1850年"])["exact_match"] == 1.0


def test_max_over_gold_answers_and_edge_cases():
    s = M.squad_scores("1850", ["im Jahr 1850", "1850"])
    assert s == {"exact_match": 1.0, "f1": 1.0}
    assert M.token_f1("", "Paris") == 0.0
    assert M.token_f1("...", "!!!") == 1.0  # both normalise to nothing
    with pytest.raises(ValueError, match="at least one gold"):
        M.squad_scores("x", [])


def test_process_results_qa_accepts_hub_and_squad_answer_layouts():
    hub = {"id": "q1", "answers": {"text": ["1200", "1200 Einwohner"], "answer_start": [0, 0]}}
    squad = {"id": "q1", "answers": [{"text": "1200", "answer_start": 0}]}
    assert M.process_results_qa(hub, [" 1200 Einwohner\n"]) == {"exact_match": 1.0, "f1": 1.0}
    assert M.process_results_qa(squad, ["1200"])["exact_match"] == 1.0
    assert M.process_results_qa_en({"answers": ["Tower"]}, ["the tower"])["exact_match"] == 1.0
    with pytest.raises(KeyError, match="'q9'"):
        M.process_results_qa({"id": "q9", "question": "?"}, ["x"])


# --------------------------------------------------------------------------- ROUGE

PERFECT = {
    "ar": "افتتاح حديقة عامة جديدة في وسط المدينة.",
    "hi": "दिल्ली में भारी बारिश से सड़कों पर पानी भर गया।",
    "zh": "测试村的教堂建于1850年。",
    "ja": "東京で新しい図書館が開館した。",
    "ru": "Кошка видит собаку.",
}


@pytest.mark.parametrize("lang", sorted(PERFECT))
def test_perfect_summary_scores_one(lang):
    assert M.rouge_scores(PERFECT[lang], PERFECT[lang]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


@pytest.mark.parametrize("lang", ["ar", "hi", "ru"])
def test_default_rouge_score_tokenizer_is_the_bug(lang):
    from rouge_score.rouge_scorer import RougeScorer

    default = RougeScorer(["rouge1", "rougeL"]).score(PERFECT[lang], PERFECT[lang])
    assert default["rouge1"].fmeasure == 0.0 and default["rougeL"].fmeasure == 0.0
    assert M.rouge_scores(PERFECT[lang], PERFECT[lang])["rougeL"] == 1.0


def test_rouge_hindi_hand_computed():
    # ref: दिल्ली में भारी बारिश (4), pred: दिल्ली में बारिश (3)
    s = M.rouge_scores("दिल्ली में बारिश", "दिल्ली में भारी बारिश")
    assert s["rouge1"] == pytest.approx(6 / 7)  # P=1, R=3/4
    assert s["rouge2"] == pytest.approx(0.4)  # 1 shared bigram: P=1/2, R=1/3
    assert s["rougeL"] == pytest.approx(6 / 7)  # LCS 3


def test_rouge_chinese_hand_computed_character_level():
    # ref 猫坐在垫子上 (6 chars), pred 猫在垫子上 (5 chars)
    s = M.rouge_scores("猫在垫子上", "猫坐在垫子上")
    assert s["rouge1"] == pytest.approx(10 / 11)
    assert s["rouge2"] == pytest.approx(2 / 3)  # 3 shared bigrams: P=3/4, R=3/5
    assert s["rougeL"] == pytest.approx(10 / 11)


def test_rouge_english_matches_rouge_score_default():
    from rouge_score.rouge_scorer import RougeScorer

    ref, pred = "the cat sat on the mat today", "a cat sat on a mat"
    default = RougeScorer(list(M.ROUGE_TYPES)).score(ref, pred)
    ours = M.rouge_scores(pred, ref)
    for t in M.ROUGE_TYPES:
        assert ours[t] == pytest.approx(default[t].fmeasure)


def test_rouge_max_over_references_and_errors():
    assert M.rouge_scores("東京", ["大阪", "東京"])["rouge1"] == 1.0
    assert M.rouge_scores("", "東京")["rouge1"] == 0.0  # saying nothing is a real 0
    with pytest.raises(ValueError, match="no tokens"):
        M.rouge_scores("x", "...")
    with pytest.raises(ValueError, match="'d7'"):
        M.process_results_summary({"id": "d7", "summary": "。"}, ["x"])
    with pytest.raises(KeyError, match="'d8'"):
        M.process_results_summary({"id": "d8", "text": "x"}, ["x"])


def test_process_results_summary():
    doc = {"id": "d1", "summary": PERFECT["hi"]}
    assert M.process_results_summary(doc, [PERFECT["hi"] + "\n"]) == {
        "rouge1": 1.0,
        "rouge2": 1.0,
        "rougeL": 1.0,
    }
