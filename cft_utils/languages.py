"""Language codes and names, in one place: ISO 639-1 codes of real languages, the sandbox's constructed languages
(ISO 639-2 reserves ``qaa``-``qtz`` for local use), and the paper's language sets.

Everything that names, validates or orders languages reads this module (bottom layer: it imports nothing).
"""

from __future__ import annotations

# Constructed languages of the sandbox world: syllable inventories and a script (cft_utils.sandbox.world).
SANDBOX_LANGUAGES: dict[str, dict] = {
    "qaa": {"name": "Valic", "script": "Latin", "onsets": "p t k m n s l r v b", "vowels": "a e i o u"},
    "qab": {"name": "Dorren", "script": "Latin", "onsets": "d g f z h j w c sk tr", "vowels": "a ä e ë o ö u"},
    "qac": {"name": "Kirav", "script": "Cyrillic", "onsets": "b v d z k l m n p r", "vowels": "a e i o u y"},
    "qad": {"name": "Thelan", "script": "Greek", "onsets": "th ph k l m n p r s t", "vowels": "a e i o y"},
    "qae": {"name": "Kanu", "script": "Katakana", "onsets": "k s t n h m y r w", "vowels": "a i u e o"},
}

# MultiAlpaca's eleven languages (one order everywhere: alphabetical).
MULTIALPACA_LANGUAGES = ("ar", "de", "es", "fr", "id", "ja", "ko", "pt", "ru", "th", "vi")

# Names of the real languages the paper and its benchmarks use (MultiAlpaca, MLQA, XQuAD, XL-Sum).
ISO_NAMES = {
    "en": "English", "ar": "Arabic", "de": "German", "es": "Spanish", "fr": "French", "id": "Indonesian",
    "ja": "Japanese", "ko": "Korean", "pt": "Portuguese", "ru": "Russian", "th": "Thai", "vi": "Vietnamese",
    "zh": "Chinese", "hi": "Hindi", "el": "Greek", "ro": "Romanian", "tr": "Turkish", "it": "Italian",
    "nl": "Dutch", "pl": "Polish", "sv": "Swedish", "uk": "Ukrainian", "bn": "Bengali", "sw": "Swahili",
}

LANGUAGE_NAMES: dict[str, str] = {**ISO_NAMES, **{k: v["name"] for k, v in SANDBOX_LANGUAGES.items()}}

# Every ISO 639-1 code (two letters, lower case): what a real language code must be.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en
eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv
ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st
su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())


# XL-Sum names its configurations by language name, and the paper's tables (data/paper_results.csv) follow it:
# these names are accepted where a benchmark's tasks are keyed by language, and mean the ISO code they map to.
XLSUM_NAMES = {
    "amharic": "am", "arabic": "ar", "azerbaijani": "az", "bengali": "bn", "burmese": "my",
    "chinese_simplified": "zh", "chinese_traditional": "zh", "english": "en", "french": "fr", "gujarati": "gu",
    "hausa": "ha", "hindi": "hi", "igbo": "ig", "indonesian": "id", "japanese": "ja", "kirundi": "rn", "korean": "ko",
    "kyrgyz": "ky", "marathi": "mr", "nepali": "ne", "oromo": "om", "pashto": "ps", "persian": "fa",
    "portuguese": "pt", "punjabi": "pa", "russian": "ru", "scottish_gaelic": "gd", "serbian_cyrillic": "sr",
    "serbian_latin": "sr", "sinhala": "si", "somali": "so", "spanish": "es", "swahili": "sw", "tamil": "ta",
    "telugu": "te", "thai": "th", "tigrinya": "ti", "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "uzbek": "uz",
    "vietnamese": "vi", "welsh": "cy", "yoruba": "yo",
}


def is_known_language(code: str, names: bool = False) -> bool:
    """True for an ISO 639-1 code (``de``) or one of the sandbox's constructed languages (``qaa``); with ``names``,
    also for XL-Sum's language names (``chinese_simplified``)."""
    return isinstance(code, str) and (code in ISO_639_1 or code in SANDBOX_LANGUAGES or (names and code in XLSUM_NAMES))


def check_languages(codes, where: str, names: bool = False) -> list[str]:
    """Raise ValueError naming ``where`` for codes that are neither ISO 639-1 nor sandbox languages (nor, with
    ``names``, XL-Sum language names)."""
    bad = [c for c in codes if not is_known_language(c, names)]
    if bad:
        raise ValueError(f"{where}: unknown language code(s) {bad}: use ISO 639-1 codes (e.g. 'de', 'ja'; lower "
                         f"case) or the sandbox's {sorted(SANDBOX_LANGUAGES)}")
    return list(codes)


def language_name(code: str) -> str:
    """The language's name, or the code itself when it has none here."""
    return LANGUAGE_NAMES.get(code, code)
