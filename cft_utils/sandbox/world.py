"""The sandbox: a seeded, offline, multilingual world in which the paper's experiment runs on a CPU.

Design (why it looks like this)
-------------------------------
* **Languages.** English plus constructed languages (ISO 639 private-use codes ``qaa``...``qae``), each a
  *relexification* of the world's closed English vocabulary: every English word has one generated word per
  language, in its own script (Latin, Latin with diacritics, Cyrillic, Greek, Katakana), except the names of
  the world's things, which all languages share like proper nouns (``shared_concept_names``). Relexification gives
  exact parallel text and an exact word-by-word translator (the sandbox backend of the mOpenOrca builder),
  while the scripts make the tokenizer treat the languages as really different. Real languages would need
  hand-made lexicons and grammars and would still not be parallel.
* **Concepts.** A shared inventory of things (animals, fruit, vegetables, tools, vehicles, furniture) with
  seeded facts (colour, place, size). Facts are stated in the pre-training corpus in every language, so
  knowledge exists before any instruction tuning (the MMLU-like analogue tests it).
* **Task families** mirror the paper's datasets:
  - family ``A`` (Alpaca-like seed tasks: short direct answers over lists, facts and a context),
  - family ``B`` (OpenOrca-like: a system prompt and step-by-step answers ending in "so the answer is ..."),
  - family ``C`` (general chat tasks only the off-the-shelf "Instruct" mixture covers).
  Alpaca = A in English; MultiAlpaca = A in the other languages (similar tasks); OpenOrca = B in English;
  mOpenOrca = B translated into the other languages (through ``cft_utils.data.translation``);
  Instruct = an English mixture of B, C and a little A (dissimilar to MultiAlpaca).
* **What makes similarity protective.** The pre-training corpus holds parallel and code-switched sentences and
  dictionary lines, so translations share representations; task templates are word-for-word parallel and
  answers copy from the input or use shared digits, so a task learnt in any language is the same computation.
  Phase 2 on the same family rehearses that computation; Phase 2 on another family trains a different one
  and overwrites the English behaviour.
* **Counterparts.** Every non-English record keeps ``counterpart_id``, the id of its English original, which
  generative and English replay need.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..languages import LANGUAGE_NAMES, SANDBOX_LANGUAGES

# ----------------------------------------------------------------------------------------------------------
# Languages and lexicon
# ----------------------------------------------------------------------------------------------------------

# Bump when a generator changes what a WorldSpec produces (it is part of the world id, hence of every cache key).
WORLD_VERSION = 6  # 5: every statement about a thing in the instruction data agrees with the world's facts;
# 6: the world's tokenizer gives a turn's first word the same token as anywhere else (cft_utils.sandbox.tiny)

_CYRILLIC = {
    "a": "а", "b": "б", "v": "в", "d": "д", "e": "е", "z": "з", "i": "и", "k": "к", "l": "л", "m": "м",
    "n": "н", "o": "о", "p": "п", "r": "р", "u": "у", "y": "ы",
}
_GREEK = {
    "th": "θ", "ph": "φ", "a": "α", "e": "ε", "i": "ι", "o": "ο", "y": "υ", "k": "κ", "l": "λ", "m": "μ",
    "n": "ν", "p": "π", "r": "ρ", "s": "σ", "t": "τ",
}
_KATAKANA = dict(
    zip(
        "ka ki ku ke ko sa si su se so ta ti tu te to na ni nu ne no ha hi hu he ho ma mi mu me mo "
        "ya yi yu ye yo ra ri ru re ro wa wi wu we wo".split(),
        "カキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤイユエヨラリルレロワヰウヱヲ",
        strict=True,
    )
)


def _transliterate(syllables: list[tuple[str, str]], script: str) -> str:
    if script == "Latin":
        return "".join(o + v for o, v in syllables)
    if script == "Katakana":
        return "".join(_KATAKANA[o + v] for o, v in syllables)
    table = _CYRILLIC if script == "Cyrillic" else _GREEK
    out = []
    for o, v in syllables:
        out.append(table[o] if o in table else "".join(table[c] for c in o))
        out.append(table[v])
    return "".join(out)


def make_lexicon(english_words: Iterable[str], languages: list[str], seed: int,
                 shared: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """One generated word per (English word, language), unique within each language, seeded.

    Words in ``shared`` (the world's concept names) are the same in every language, like proper nouns,
    numbers and international words in real languages: they are what lets a task learnt in one language
    produce the same answer tokens in another.
    """
    shared = set(shared)
    words = sorted(set(english_words) - shared)
    lexicon: dict[str, dict[str, str]] = {}
    for lang in languages:
        if lang == "en":
            continue
        if lang not in SANDBOX_LANGUAGES:
            raise ValueError(f"unknown sandbox language {lang!r}; known: {sorted(SANDBOX_LANGUAGES)}")
        inv = SANDBOX_LANGUAGES[lang]
        onsets, vowels = inv["onsets"].split(), inv["vowels"].split()
        rng = random.Random(f"{seed}-{lang}")
        used: set[str] = set()
        table = {}
        for w in words:
            # Longer English words get longer translations (roughly), like natural languages.
            n_syl = 1 if len(w) <= 3 else (2 if len(w) <= 6 else 3)
            for attempt in range(1000):
                syl = [(rng.choice(onsets), rng.choice(vowels)) for _ in range(n_syl + attempt // 50)]
                cand = _transliterate(syl, inv["script"])
                if cand not in used and cand not in words:
                    break
            used.add(cand)
            table[w] = cand
        table.update({w: w for w in shared})
        lexicon[lang] = table
    return lexicon


_WORD = re.compile(r"[a-z]+")


def translate_words(text: str, lexicon: dict[str, dict[str, str]], lang: str) -> str:
    """Word-by-word translation of world English into ``lang`` (digits, punctuation and unknown words kept)."""
    if lang == "en":
        return text
    if lang not in lexicon:
        raise KeyError(f"language {lang!r} is not in this world (have en + {sorted(lexicon)})")
    table = lexicon[lang]
    return _WORD.sub(lambda m: table.get(m.group(0), m.group(0)), text)


# ----------------------------------------------------------------------------------------------------------
# Concepts and facts
# ----------------------------------------------------------------------------------------------------------

CONCEPTS: dict[str, list[str]] = {
    "animal": "fox cat dog cow horse bear wolf fish shark duck owl frog bee goat pig mouse".split(),
    "fruit": "apple pear plum lemon grape peach cherry melon fig".split(),
    "vegetable": "carrot onion bean pea leek kale".split(),
    "tool": "hammer saw knife spoon brush rope nail axe".split(),
    "vehicle": "car bus boat train bike ship truck plane".split(),
    "furniture": "chair table bed lamp shelf desk".split(),
}
COLOURS = "red blue green yellow white black brown grey".split()
PLACES = {
    "animal": ["forest", "farm", "sea", "river", "field"],
    "fruit": ["garden", "market", "kitchen"],
    "vegetable": ["garden", "market", "field"],
    "tool": ["garage", "shop", "kitchen"],
    "vehicle": ["road", "port", "garage", "city"],
    "furniture": ["house", "shop", "office"],
}
ARTICLE = {"animal": "an animal", "fruit": "a fruit", "vegetable": "a vegetable", "tool": "a tool",
           "vehicle": "a vehicle", "furniture": "a piece of furniture"}


@dataclass(frozen=True)
class Fact:
    name: str
    category: str
    colour: str
    place: str
    size: int


def make_facts(seed: int) -> dict[str, Fact]:
    """Seeded facts for every concept: colour, place and size (1-9, digits shared by all languages)."""
    rng = random.Random(f"{seed}-facts")
    facts = {}
    for cat, names in CONCEPTS.items():
        for n in names:
            facts[n] = Fact(n, cat, rng.choice(COLOURS), rng.choice(PLACES[cat]), rng.randint(1, 9))
    return facts


def fact_sentences(f: Fact) -> list[str]:
    return [
        f"the {f.name} is {ARTICLE[f.category]} .",
        f"the {f.name} is {f.colour} .",
        f"the {f.name} is found in the {f.place} .",
        f"the {f.name} has size {f.size} .",
    ]


# ----------------------------------------------------------------------------------------------------------
# Tasks: each returns (system, instruction, response) in world English
# ----------------------------------------------------------------------------------------------------------

SYSTEM_PROMPTS_B = [
    "you are a helpful assistant . think step by step .",
    "you are an assistant that explains its answer .",
    "you are a careful assistant . give your reasons first .",
]


def _pick(rng, facts, k):
    return rng.sample(list(facts), k)


def _lst(items):
    return " , ".join(str(i) for i in items)


ANSWER_MARK = "so the answer is"

# Family A (Alpaca-like seed tasks): short direct answers, computed from the input (copy, order, count,
# extract) or from a category every concept has; what the world's Alpaca and MultiAlpaca both teach.


def task_a_reverse(rng, facts):
    items = _pick(rng, facts, rng.randint(2, 4))
    return None, f"reverse the list : {_lst(items)} .", f"{_lst(items[::-1])} ."


def task_a_last(rng, facts):
    items = _pick(rng, facts, rng.randint(2, 5))
    return None, f"what is the last word in the list : {_lst(items)} ?", items[-1]


def task_a_count(rng, facts):
    items = _pick(rng, facts, rng.randint(1, 6))
    return None, f"how many words are in the list : {_lst(items)} ?", str(len(items))


def task_a_kind(rng, facts):
    n = rng.choice(list(facts))
    return None, f"what kind of thing is the {n} ?", f"the {n} is {ARTICLE[facts[n].category]} ."


def task_a_context(rng, facts):
    """Extractive QA over a short context of statements about a few things (the MLQA/XQuAD-like skill).

    The statements are the world's facts: instruction data that contradicted them taught the models made-up
    colours and erased what pre-training had taught (the MMLU-like benchmark fell to chance after Phase 1)."""
    names = _pick(rng, facts, rng.randint(2, 3))
    k = rng.randrange(len(names))
    if rng.random() < 0.5:  # colours (the XQuAD-like items)
        sents = [f"the {n} is {facts[n].colour} ." for n in names]
        question, answer = f"what colour is the {names[k]} ?", facts[names[k]].colour
    else:  # places (the MLQA-like items)
        sents = [f"the {n} is found in the {facts[n].place} ." for n in names]
        question, answer = f"where is the {names[k]} found ?", facts[names[k]].place
    return None, f"read the text and answer . text : {' '.join(sents)} question : {question}", answer


# Family B (OpenOrca-like): a system prompt and a step-by-step answer ending in "so the answer is ...".


def task_b_bigger(rng, facts):
    a, b = rng.sample(range(1, 10), 2)
    return (rng.choice(SYSTEM_PROMPTS_B), f"which number is bigger : {a} or {b} ? explain .",
            f"{max(a, b)} is more than {min(a, b)} . {ANSWER_MARK} {max(a, b)} .")


def task_b_add(rng, facts):
    a = rng.randint(1, 8)
    b = rng.randint(1, 9 - a)
    return (rng.choice(SYSTEM_PROMPTS_B), f"what is {a} plus {b} ? explain .",
            f"{a} plus {b} is {a + b} . {ANSWER_MARK} {a + b} .")


def task_b_sort(rng, facts):
    nums = rng.sample(range(1, 10), 3)
    s = sorted(nums)
    return (rng.choice(SYSTEM_PROMPTS_B), f"sort the numbers from small to big : {_lst(nums)} .",
            f"the smallest is {s[0]} . the biggest is {s[-1]} . {ANSWER_MARK} {_lst(s)} .")


def task_b_odd(rng, facts):
    c1, c2 = rng.sample(list(CONCEPTS), 2)
    items = rng.sample(CONCEPTS[c1], 2) + [rng.choice(CONCEPTS[c2])]
    odd = items[-1]
    rng.shuffle(items)
    steps = " ".join(f"the {n} is {ARTICLE[facts[n].category]} ." for n in items)
    return (rng.choice(SYSTEM_PROMPTS_B), f"which word does not belong : {_lst(items)} ?",
            f"{steps} {ANSWER_MARK} {odd} .")


def task_b_summary(rng, facts):
    """Name the topic of a short text (the XL-Sum-like skill): the thing most sentences are about."""
    main, other = _pick(rng, facts, 2)
    sents = [f"the {main} is {facts[main].colour} .", f"the {main} is found in the {facts[main].place} .",
             f"the {other} is {facts[other].colour} ."]
    rng.shuffle(sents)
    return (rng.choice(SYSTEM_PROMPTS_B), f"summarize the text in a few words . text : {' '.join(sents)}",
            f"two sentences talk about the {main} . {ANSWER_MARK} the {main} .")


# Family C: general chat tasks only the off-the-shelf "Instruct" mixture covers.


def task_c_repeat(rng, facts):
    n, k = rng.choice(list(facts)), rng.randint(2, 4)
    return None, f"repeat the word {n} {k} times .", " ".join([n] * k)


def task_c_first(rng, facts):
    items = _pick(rng, facts, rng.randint(2, 5))
    return None, f"what is the first word in the list : {_lst(items)} ?", items[0]


def task_c_join(rng, facts):
    items = _pick(rng, facts, rng.randint(2, 4))
    return None, f"join the words with and : {_lst(items)} .", " and ".join(items)


def task_c_sentence(rng, facts):
    n = rng.choice(list(facts))
    c = facts[n].colour
    return None, f"make a sentence with the words {n} and {c} .", f"the {n} is {c} ."


FAMILIES = {
    "A": [task_a_reverse, task_a_last, task_a_count, task_a_kind, task_a_context],
    "B": [task_b_bigger, task_b_add, task_b_sort, task_b_odd, task_b_summary],
    "C": [task_c_repeat, task_c_first, task_c_join, task_c_sentence],
}


def final_answer(text: str, marker: str = ANSWER_MARK) -> str:
    """The answer part of a response: after the last "so the answer is" (in the response's language) when
    present, else the whole response; trailing " ." removed. Used to score step-by-step answers."""
    t = text.strip()
    if marker in t:
        t = t.rsplit(marker, 1)[1].strip()
    return t.removesuffix(" .").strip()


# Verifiable formatting constraints (the IFEval-like skill), applied to a share of records of every family.
END_WORDS = ["done", "thanks", "okay"]


def apply_constraint(rng, instruction: str, response: str) -> tuple[str, str, dict]:
    kind = rng.choice(["end_word", "quotes"])
    if kind == "end_word":
        w = rng.choice(END_WORDS)
        return (f"{instruction} end your answer with the word {w} .", f"{response} {w}",
                {"constraint": "end_word", "word": w})
    return f"{instruction} put your answer in quotes .", f'"{response}"', {"constraint": "quotes"}


# ----------------------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------------------


@dataclass
class WorldSpec:
    """Everything that determines the sandbox world (its hash names the cache folder)."""

    seed: int = 1234
    languages: list[str] = field(default_factory=lambda: ["en", "qaa", "qab", "qac", "qad", "qae"])
    constraint_rate: float = 0.15
    # records per split (English originals; multilingual sets hold this many per language)
    n_phase1: int = 2400
    n_phase2_per_language: int = 240
    n_instruct: int = 2400
    n_test_per_language: int = 60
    instruct_mix: dict[str, float] = field(default_factory=lambda: {"A": 0.2, "B": 0.4, "C": 0.4})
    # pre-training corpus size in documents
    n_corpus_documents: int = 8000
    # share of the monolingual pre-training documents written in English (None: every language the same share)
    english_share: float | None = None
    # concept names are shared by all languages (like proper nouns); function words are translated
    shared_concept_names: bool = True
    # share of the corpus's reading passages whose statements contradict the world's facts (drawn at random), so
    # that their answer must be read from the passage, not recalled (None: 0, every passage states the facts)
    reading_counterfactual_share: float | None = None
    # extra pre-training documents (None: 0): list repetitions ("the list is : a , b . again : a , b ."), the
    # in-context copy that reading builds on, and counterfactual reading passages with a question and its answer
    n_copy_documents: int | None = None
    n_reading_documents: int | None = None
    # pre-training dialogues (None: 0): a user turn and an assistant turn in one language, in the tokenizer's chat
    # format (World.dialogues); real base models have seen question-answer exchanges in many languages
    n_dialogue_documents: int | None = None

    def world_id(self) -> str:
        # WORLD_VERSION changes whenever the generators change, so caches built by older code are not reused.
        # Parameters left at None are left out, so adding one does not rename the worlds built before it.
        fields = {k: v for k, v in self.__dict__.items() if v is not None}
        blob = json.dumps({"version": WORLD_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class World:
    """A generated world: facts, lexicon, corpus, and instruction datasets, all from ``WorldSpec``."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.facts = make_facts(spec.seed)
        self.lexicon = make_lexicon(self._english_vocabulary(), spec.languages, spec.seed,
                                    shared=self.facts if spec.shared_concept_names else ())
        self._instances: dict[tuple[str, str], list[dict]] = {}

    @property
    def other_languages(self) -> list[str]:
        return [lang for lang in self.spec.languages if lang != "en"]

    def _english_vocabulary(self) -> set[str]:
        # Every English word any generator can emit: sample generously from every task and source of text.
        rng = random.Random(0)
        texts = []
        for f in self.facts.values():
            texts += fact_sentences(f)
        for fam in FAMILIES.values():
            for task in fam:
                for _ in range(200):
                    texts += [t for t in task(rng, self.facts) if t]
        for w in END_WORDS:
            texts.append(f"end your answer with the word {w} . put your answer in quotes .")
        texts += SYSTEM_PROMPTS_B + _CORPUS_GLUE
        texts += [st.format(n="fox", place="forest") for steps in STORY_STEPS for st in steps]
        texts += ["the list is : again : the list has words . the first word is the last word is in reverse : with and",
                  "is less than", "text : question : where is the found ? answer :", ANSWER_MARK]
        return {w for t in texts for w in _WORD.findall(t.lower())}

    @property
    def english_words(self) -> set[str]:
        if not hasattr(self, "_en_words"):
            self._en_words = set(next(iter(self.lexicon.values()), {}))
        return self._en_words

    def lexicon_words(self, lang: str) -> set[str]:
        if not hasattr(self, "_lang_words"):
            self._lang_words = {k: set(v.values()) for k, v in self.lexicon.items()}
        return self._lang_words[lang]

    def translate(self, text: str, lang: str) -> str:
        """Exact word-by-word translation of world English into ``lang``."""
        return translate_words(text, self.lexicon, lang)

    # -- instruction data ------------------------------------------------------------------------------
    # Splits partition every task's instance space by a hash of the instruction, so a split's contents do not
    # depend on which other splits were drawn first, and no instruction is in two splits.
    SPLIT_BUCKETS = {"phase1": (0, 35), "phase2": (35, 70), "instruct": (70, 90), "test": (90, 100)}

    def _bucket(self, family: str, instruction: str) -> int:
        h = hashlib.sha1(f"{self.spec.seed}|{family}|{instruction}".encode()).hexdigest()
        return int(h[:8], 16) % 100

    def english_instances(self, family: str, split: str, n: int) -> list[dict]:
        """``n`` English task instances of ``family`` for ``split`` (phase1 / phase2 / instruct / test).

        Tasks are drawn in rotation; a task whose share of instances is used up (the fact questions have
        few) leaves the rotation, so the split is filled by the others.
        """
        key = (family, split)
        if key in self._instances and len(self._instances[key]) >= n:
            return self._instances[key][:n]
        lo, hi = self.SPLIT_BUCKETS[split]
        rng = random.Random(f"{self.spec.seed}-{family}-{split}")
        active = list(FAMILIES[family])
        misses = {t: 0 for t in active}
        out, own = [], set()
        while len(out) < n:
            if not active:
                raise RuntimeError(f"the world has fewer than {n} distinct {family}/{split} instances")
            task = active[len(out) % len(active)]
            system, instr, resp = task(rng, self.facts)
            meta = {"task": task.__name__.removeprefix("task_")}
            if rng.random() < self.spec.constraint_rate:
                instr, resp, c = apply_constraint(rng, instr, resp)
                meta.update(c)
            if instr in own or not lo <= self._bucket(family, instr) < hi:
                misses[task] += 1
                if misses[task] > 400:
                    active.remove(task)
                continue
            misses[task] = 0
            own.add(instr)
            out.append({"id": f"{family}-{split}-{len(out):05d}", "family": family, "system": system,
                        "instruction": instr, "response": resp, **meta})
        self._instances[key] = out
        return out

    def render(self, inst: dict, lang: str, dataset: str) -> dict:
        """One instance as a record of the common chat schema, in ``lang``."""
        tr = lambda s: self.translate(s, lang)  # noqa: E731
        prompt = []
        if inst["system"]:
            prompt.append({"role": "system", "content": tr(inst["system"])})
        prompt.append({"role": "user", "content": tr(inst["instruction"])})
        rec = {
            "id": f"{inst['id']}-{lang}",
            "dataset": dataset,
            "language": lang,
            "counterpart_id": None if lang == "en" else f"{inst['id']}-en",
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": tr(inst["response"])}],
            "task": inst["task"],
        }
        if "constraint" in inst:
            rec["constraint"] = inst["constraint"]
            if "word" in inst:
                rec["constraint_word"] = tr(inst["word"])
        return rec

    def dataset(self, name: str) -> list[dict]:
        """The sandbox analogue of a paper dataset: alpaca, multialpaca, openorca, instruct, or the English
        counterparts ``multialpaca_en`` / ``mopenorca_en`` (replay needs them). ``mopenorca`` is built from
        ``mopenorca_en`` through the selective-translation builder (``cft_utils.data``)."""
        s = self.spec
        if name == "alpaca":
            return [self.render(i, "en", name) for i in self.english_instances("A", "phase1", s.n_phase1)]
        if name == "openorca":
            return [self.render(i, "en", name) for i in self.english_instances("B", "phase1", s.n_phase1)]
        if name in ("multialpaca", "multialpaca_en"):
            langs = self.other_languages
            pool = self.english_instances("A", "phase2", s.n_phase2_per_language * len(langs))
            if name.endswith("_en"):
                return [self.render(i, "en", name) for i in pool]
            # Each English instance appears in exactly one language: fewer records per language, like MultiAlpaca.
            return [self.render(inst, langs[k % len(langs)], name) for k, inst in enumerate(pool)]
        if name == "mopenorca_en":
            # The English originals that the sandbox mOpenOrca translates (each kept in one language).
            langs = self.other_languages
            return [self.render(i, "en", name)
                    for i in self.english_instances("B", "phase2", s.n_phase2_per_language * len(langs))]
        if name == "mopenorca":
            raise ValueError("the sandbox mOpenOrca is built by selective translation of 'mopenorca_en' "
                             "(cft_utils.data.sandbox_mopenorca.build_sandbox_mopenorca), not rendered directly")
        if name == "instruct":
            out = []
            for fam, share in sorted(s.instruct_mix.items()):
                out += [self.render(i, "en", name)
                        for i in self.english_instances(fam, "instruct", round(share * s.n_instruct))]
            random.Random(f"{s.seed}-instruct-shuffle").shuffle(out)
            return out
        raise KeyError(f"no sandbox dataset named {name!r}; known: {SANDBOX_DATASETS}")

    def test_set(self, family: str, lang: str = "en") -> list[dict]:
        """Held-out records of ``family`` in ``lang`` (the same instances in every language)."""
        insts = self.english_instances(family, "test", self.spec.n_test_per_language)
        return [self.render(i, lang, f"test_{family}") for i in insts]

    # -- pre-training corpus --------------------------------------------------------------------------
    def corpus(self) -> list[str]:
        """The raw multilingual pre-training corpus: facts, lists, stories, reading passages with questions,
        parallel and code-switched text.

        The reading passages (a few facts, a question about one, its answer) stand for the question-answer text of
        web corpora in every language: real base models can answer a question about a passage in its language
        before any instruction tuning (the paper's Phase 1 models score 0.18-0.46 on its language benchmarks).
        Without them the sandbox's Phase 1 models answered every non-English question in English (language
        ability at the floor). Passages that state the world's facts can be answered from memory;
        ``reading_counterfactual_share`` makes a share of them contradict the facts, so that only reading answers
        them, and ``n_copy_documents`` / ``n_reading_documents`` add list repetitions and counterfactual passages
        (:meth:`_extra_documents`): a tiny model forms an in-context copy only when the corpus asks for one often
        enough (cft_utils.sandbox.probe.reading_probe measures both)."""
        rng = random.Random(f"{self.spec.seed}-corpus")
        lang_rng = random.Random(f"{self.spec.seed}-corpus-languages")  # its own stream: the documents stay the same
        cf_rng = random.Random(f"{self.spec.seed}-corpus-reading")  # likewise for the counterfactual passages
        cf_share = self.spec.reading_counterfactual_share or 0.0
        langs = self.spec.languages
        others = self.other_languages
        share = self.spec.english_share
        names = list(self.facts)
        docs = []
        for d in range(self.spec.n_corpus_documents):
            kind = d % 7
            # every kind of document in every language (kind and language must not be correlated)
            if kind == 5:
                lang = None
            elif share is None:
                lang = langs[(d // 6) % len(langs)]
            else:
                lang = "en" if lang_rng.random() < share else others[lang_rng.randrange(len(others))]
            if kind == 0:  # facts about a few things
                sents = [s for n in rng.sample(names, 3) for s in fact_sentences(self.facts[n])]
                rng.shuffle(sents)
                text = " ".join(sents)
            elif kind == 1:  # lists: copying, order and counting (every output form of the A tasks)
                items = rng.sample(names, rng.randint(1, 6))
                text = (f"the list is : {_lst(items)} . again : {_lst(items)} . the list has {len(items)} words . "
                        f"the first word is {items[0]} . the last word is {items[-1]} . "
                        f"in reverse : {_lst(items[::-1])} . with and : {' and '.join(items)} .")
            elif kind == 2:  # a short story (the HellaSwag-like continuation skill)
                n = rng.choice(names)
                steps = rng.choice(STORY_STEPS)
                text = " ".join(s.format(n=n, place=self.facts[n].place) for s in steps)
            elif kind == 3:  # reasoning text with the "so the answer is" form
                system, instr, resp = rng.choice(FAMILIES["B"])(rng, self.facts)
                text = resp
            elif kind == 4:  # numbers, comparisons and sums, and glue sentences
                a, b = rng.sample(range(1, 10), 2)
                c = rng.randint(1, 9 - min(a, 8))
                n = rng.choice(names)
                text = (f"{max(a, b)} is more than {min(a, b)} . {min(a, b)} is less than {max(a, b)} . "
                        f"{min(a, 8)} plus {c} is {min(a, 8) + c} . the {n} is {ARTICLE[self.facts[n].category]} . "
                        + rng.choice(_CORPUS_GLUE))
            elif kind == 6:  # a reading passage and a question about it, answered (question-answer web text)
                ns = rng.sample(names, rng.randint(2, 3))
                k = rng.randrange(len(ns))
                counterfactual = cf_share > 0 and cf_rng.random() < cf_share
                text = self._passage(ns, k, rng.random() < 0.5, cf_rng if counterfactual else None)
            else:  # parallel and code-switched text, and dictionary lines: the cross-lingual glue
                other = rng.choice(self.other_languages)
                sents = fact_sentences(self.facts[rng.choice(names)])
                s = rng.choice(sents)
                words = s.split()
                mixed = " ".join(self.translate(w, other) if rng.random() < 0.5 else w for w in words)
                w = rng.choice(words[:3] + [rng.choice(names)])
                text = (f"{s} = {self.translate(s, other)} . {mixed} . "
                        f"{w} = {self.translate(w, other)} .")
                docs.append(text)
                continue
            docs.append(self.translate(text, lang))
        docs += self._extra_documents()
        return docs

    def _passage(self, names: list[str], k: int, colour: bool, counterfactual: random.Random | None) -> str:
        """A reading passage about ``names`` and a question about ``names[k]`` (its colour, else its place), answered.
        With a ``counterfactual`` generator the passage's values are drawn from it instead of the world's facts."""
        if colour:
            val = {n: counterfactual.choice(COLOURS) if counterfactual else self.facts[n].colour for n in names}
            sents, question = [f"the {n} is {val[n]} ." for n in names], f"what colour is the {names[k]} ?"
        else:
            val = {n: counterfactual.choice(PLACES[self.facts[n].category]) if counterfactual else self.facts[n].place
                   for n in names}
            sents, question = [f"the {n} is found in the {val[n]} ." for n in names], f"where is the {names[k]} found ?"
        return f"text : {' '.join(sents)} question : {question} answer : {val[names[k]]} ."

    def _document_language(self, rng: random.Random) -> str:
        """A language for one extra document or dialogue, drawn like the monolingual documents' (``english_share``;
        None: every language alike)."""
        if self.spec.english_share is None:
            return rng.choice(self.spec.languages)
        return "en" if rng.random() < self.spec.english_share else rng.choice(self.other_languages)

    def _extra_documents(self) -> list[str]:
        """``n_copy_documents`` list repetitions and ``n_reading_documents`` counterfactual reading passages, each in
        a language drawn like the monolingual documents' (``english_share``)."""
        spec = self.spec
        rng = random.Random(f"{spec.seed}-corpus-extra")
        names = list(self.facts)
        docs = []
        for _ in range(spec.n_copy_documents or 0):
            lang, items = self._document_language(rng), rng.sample(names, rng.randint(3, 8))
            docs.append(self.translate(f"the list is : {_lst(items)} . again : {_lst(items)} .", lang))
        for _ in range(spec.n_reading_documents or 0):
            lang, ns = self._document_language(rng), rng.sample(names, rng.randint(2, 4))
            docs.append(self.translate(self._passage(ns, rng.randrange(len(ns)), rng.random() < 0.5, rng), lang))
        return docs

    def dialogues(self) -> list[list[dict]]:
        """``n_dialogue_documents`` exchanges of a user and an assistant in one language (drawn like the monolingual
        documents', ``english_share``): a question about a thing's colour or place answered with the fact, or a
        passage with a question answered from it. Pre-training renders them with the tokenizer's chat template."""
        spec = self.spec
        rng = random.Random(f"{spec.seed}-corpus-dialogues")
        names = list(self.facts)
        out = []
        for _ in range(spec.n_dialogue_documents or 0):
            lang = self._document_language(rng)
            if rng.random() < 0.5:
                f = self.facts[rng.choice(names)]
                if rng.random() < 0.5:
                    user, answer = f"what colour is the {f.name} ?", f"the {f.name} is {f.colour} ."
                else:
                    user, answer = f"where is the {f.name} found ?", f"the {f.name} is found in the {f.place} ."
            else:
                ns = rng.sample(names, rng.randint(2, 3))
                text = self._passage(ns, rng.randrange(len(ns)), rng.random() < 0.5, None)
                user, _, answer = text.rpartition(" answer : ")
            out.append([{"role": "user", "content": self.translate(user, lang)},
                        {"role": "assistant", "content": self.translate(answer, lang)}])
        return out

    # -- serialisation ---------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {
            "world_id": self.spec.world_id(),
            "spec": self.spec.__dict__,
            "languages": {k: LANGUAGE_NAMES[k] for k in self.spec.languages},
            "n_concepts": len(self.facts),
            "vocabulary_size": len(next(iter(self.lexicon.values()), {})),
        }


STORY_STEPS = [
    ["the {n} wakes up .", "the {n} goes to the {place} .", "then the {n} eats .", "at night the {n} sleeps ."],
    ["a child sees the {n} .", "the child walks to the {place} .", "the child finds the {n} .", "then the child is happy ."],
    ["the {n} is lost .", "a friend looks in the {place} .", "the friend finds the {n} .", "then they go home ."],
]
_CORPUS_GLUE = [
    "this is a good answer .", "here is the text .", "the question is easy .", "we read the list .",
    "the answer is short .", "people like to talk about things .",
]

_WORLDS: dict[str, World] = {}


def world_for(spec: WorldSpec) -> World:
    """The world of ``spec``, generated once per process (a long-lived executor worker, a notebook kernel) and
    shared by every caller: generation is deterministic and callers only read it (``dataset`` and ``test_set``
    return new records on every call)."""
    key = spec.world_id()
    if key not in _WORLDS:
        if len(_WORLDS) >= 4:  # a study compares few worlds; do not keep every one a long session met
            _WORLDS.pop(next(iter(_WORLDS)))
        _WORLDS[key] = World(spec)
    return _WORLDS[key]


SANDBOX_DATASETS = ("alpaca", "multialpaca", "openorca", "mopenorca", "instruct", "multialpaca_en", "mopenorca_en")


