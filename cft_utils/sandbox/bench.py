"""Sandbox analogues of the paper's benchmarks, generated from the synthetic world (cft_utils.sandbox.world).

Each benchmark becomes one JSONL file per task under ``$CFT_HOME/sandbox/<world>/bench/`` and is run by lm-eval
through the task YAMLs in ``cft_utils/evaluation/tasks/sandbox/`` (wired to the files by :func:`local_data`); the
scoring functions the YAMLs name live in :mod:`cft_utils.evaluation.metrics`.

| paper benchmark | sandbox task(s) | what an item is | scored by |
|---|---|---|---|
| IFEval | ``sb_ifeval`` | an English held-out instruction plus one or two verifiable constraints (end with a word; answer in double quotes) | lm-eval's own IFEval checkers (``startend:end_checker``, ``startend:quotation``) |
| AlpacaEval | ``sb_alpacaeval`` | an English held-out instruction of every task family, its gold answer and the output of the fixed reference system (below) | win rate against the reference with :class:`~cft_utils.evaluation.judge.ReferenceMatchJudge` (token F1 to the gold answer decides) |
| MMLU | ``sb_mmlu`` | a fact of the world (colour or place of a thing) as a 4-option question, options are full sentences | loglikelihood, acc / acc_norm |
| HellaSwag | ``sb_hellaswag`` | the first steps of one of the world's short stories, 4 candidate next steps | loglikelihood, acc / acc_norm |
| XQuAD | ``sb_xquad_<lang>`` | a short context of colour statements (the world's facts) and a colour question, the *same* items in every non-English language (parallel, like XQuAD) | SQuAD EM/F1 (cft_utils.evaluation.metrics) |
| MLQA | ``sb_mlqa_<lang>`` | a context of place statements (the world's facts) and "where is the X found ?", items drawn *separately* per language (like MLQA's per-language contexts) | SQuAD EM/F1 |
| XL-Sum | ``sb_xlsum_<lang>`` | a short text of facts about one thing (and one distracting sentence) with a reference one-sentence summary, per non-English language | ROUGE-1/2/L with the Unicode tokenizer |

**Never trained on.** IFEval- and AlpacaEval-like items come from the world's held-out ``test`` split
(``World.test_set``). The others are drawn with fresh seeds. Every item's instruction is then checked against every
instruction of every training set of the world (all datasets, all languages): an item whose instruction, or the
instruction it was built from, equals a training instruction or starts one, is dropped and counted in the
manifest (``dropped_overlap``).

**The AlpacaEval-like reference system** (the sandbox's text-davinci-003) is fixed and rule-based, so it never
changes with the models: for a seeded half of the instructions it gives the gold answer, for the other half the gold
answer cut to its first half of words (an empty answer if the gold is one word). A model as good as the gold
answers wins about 75% (ties with the complete half, wins against the cut half); a model that answers nothing
loses nearly always.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from ..io import read_json, write_json, write_jsonl
from .world import (
    ARTICLE,
    COLOURS,
    CONCEPTS,
    FAMILIES,
    PLACES,
    SANDBOX_DATASETS,
    STORY_STEPS,
    World,
    apply_constraint,
)

BENCH_VERSION = 4  # 2: MMLU-like questions on sizes too (171 items); 3: QA contexts state the world's facts;
# 4: QA rows carry their language's answer cue ("answer :"), which ends the prompt as lm-eval's "Answer:" does
TA_TASKS = ("sb_ifeval", "sb_alpacaeval", "sb_mmlu", "sb_hellaswag")
LA_BENCHMARKS = {"MLQA": "sb_mlqa", "XQuAD": "sb_xquad", "XLSum": "sb_xlsum"}
# Benchmarks whose items enumerate the world (every fact, every thing's stories): more items need a bigger world,
# not more drawing. The others draw as many items as asked (the held-out split, ``n_la`` per language).
FIXED_SIZE_BENCHMARKS = ("MMLU", "HellaSwag")
# IFEval instruction ids for the world's verifiable constraints (cft_utils.sandbox.world.apply_constraint).
CONSTRAINT_TO_IFEVAL = {"end_word": "startend:end_checker", "quotes": "startend:quotation"}
REFERENCE_GENERATOR = "sandbox-reference-half-gold"

_WORD = re.compile(r"[a-z]+")


def _rng(world: World, name: str) -> random.Random:
    return random.Random(f"{world.spec.seed}-bench-{name}")


def _half(key: str) -> bool:
    return hashlib.sha256(key.encode()).digest()[0] % 2 == 0


# ------------------------------------------------------------------------------------------ training texts


class TrainingInstructions:
    """Every user instruction any training set of the world can hold, for overlap checks.

    The English sets as rendered, plus the English originals of the multilingual sets (MultiAlpaca-like and
    mOpenOrca-like) and their word-by-word translations into every other language: a superset of what the
    Phase 2 sets hold (the mOpenOrca-like set is built by selective translation of its English originals).
    """

    def __init__(self, world: World):
        texts = set()
        for name in SANDBOX_DATASETS:
            if name in ("multialpaca", "mopenorca"):
                continue  # covered by their English originals below
            for r in world.dataset(name):
                texts.add(_user(r))
                if name.endswith("_en"):
                    texts.update(world.translate(_user(r), lang) for lang in world.other_languages)
        self.texts = texts
        self._sorted = sorted(texts)

    def overlaps(self, instruction: str) -> bool:
        """True if ``instruction`` is a training instruction or the beginning of one."""
        import bisect

        if instruction in self.texts:
            return True
        i = bisect.bisect_left(self._sorted, instruction)
        return i < len(self._sorted) and self._sorted[i].startswith(instruction)


def _user(rec: dict) -> str:
    return next(m["content"] for m in rec["prompt"] if m["role"] == "user")


# ------------------------------------------------------------------------------------------ task-ability items


def ifeval_items(world: World, train: TrainingInstructions) -> tuple[list[dict], int]:
    """IFEval-format rows (key, prompt, instruction_id_list, kwargs) from English held-out instructions."""
    rng = _rng(world, "ifeval")
    rows, dropped = [], 0
    for fam in sorted(_families(world)):
        for rec in world.test_set(fam, "en"):
            if rec.get("constraint"):  # already constrained: its base instruction is not known
                continue
            base = _user(rec)
            instr, ids, kwargs = base, [], []
            n_constraints = 2 if rng.random() < 1 / 3 else 1
            for _ in range(20):
                new, _resp, meta = apply_constraint(rng, instr, rec["completion"][0]["content"])
                kind = meta["constraint"]
                if kind not in CONSTRAINT_TO_IFEVAL:
                    raise ValueError(f"sandbox constraint {kind!r} has no IFEval checker; known: {sorted(CONSTRAINT_TO_IFEVAL)}")
                if CONSTRAINT_TO_IFEVAL[kind] in ids:
                    continue
                instr = new
                ids.append(CONSTRAINT_TO_IFEVAL[kind])
                kwargs.append({"end_phrase": meta["word"]} if kind == "end_word" else {})
                if len(ids) == n_constraints:
                    break
            if train.overlaps(base) or train.overlaps(instr):
                dropped += 1
                continue
            rows.append({"key": len(rows), "prompt": instr, "instruction_id_list": ids, "kwargs": kwargs,
                         "source_id": rec["id"]})
    return rows, dropped


def reference_output(gold: str, key: str) -> str:
    """The fixed reference system: the gold answer for a seeded half of instructions, else its first half."""
    if _half(key):
        return gold
    words = gold.split()
    return " ".join(words[: len(words) // 2])


def alpacaeval_items(world: World, train: TrainingInstructions) -> tuple[list[dict], int]:
    """AlpacaEval-format rows (instruction, output = reference system, generator, gold, dataset)."""
    rows, dropped = [], 0
    for fam in sorted(_families(world)):
        for rec in world.test_set(fam, "en"):
            instr, gold = _user(rec), rec["completion"][0]["content"]
            if train.overlaps(instr):
                dropped += 1
                continue
            rows.append({"id": rec["id"], "instruction": instr, "output": reference_output(gold, rec["id"]),
                         "generator": REFERENCE_GENERATOR, "gold": gold, "dataset": f"family_{fam}",
                         "task": rec.get("task")})
    return rows, dropped


def _families(world: World) -> list[str]:
    return list(FAMILIES)


def mmlu_items(world: World, train: TrainingInstructions) -> tuple[list[dict], int]:
    """4-option questions on the world's facts (colour, place, size); the options are full fact sentences."""
    rng = _rng(world, "mmlu")
    places = sorted({p for ps in PLACES.values() for p in ps})
    rows, dropped = [], 0
    for name in sorted(world.facts):
        f = world.facts[name]
        for subject, question, truth, pool, form in (
            ("colour", f"what colour is the {name} ?", f.colour, COLOURS, "the {n} is {v} ."),
            ("place", f"where is the {name} found ?", f.place, places, "the {n} is found in the {v} ."),
            ("size", f"what size does the {name} have ?", str(f.size), [str(k) for k in range(1, 10)],
             "the {n} has size {v} ."),
        ):
            options = [truth, *rng.sample([v for v in pool if v != truth], 3)]
            rng.shuffle(options)
            if train.overlaps(question):
                dropped += 1
                continue
            rows.append({"question": question, "subject": subject,
                         "choices": [form.format(n=name, v=v) for v in options], "answer": options.index(truth)})
    return rows, dropped


def _story_templates() -> list[list[str]]:
    if not STORY_STEPS or not all(len(s) >= 3 for s in STORY_STEPS):
        raise RuntimeError("cft_utils.sandbox.world's short stories (STORY_STEPS) must be lists of >= 3 steps with "
                           "{n} and {place}; the HellaSwag-like benchmark is built from them")
    return STORY_STEPS


def hellaswag_items(world: World, train: TrainingInstructions) -> tuple[list[dict], int]:
    """The world's short stories cut after 1-3 steps; the true next step against 3 steps of other stories."""
    rng = _rng(world, "hellaswag")
    templates = _story_templates()
    rows, dropped = [], 0
    for name in sorted(world.facts):
        place = world.facts[name].place
        stories = [[s.format(n=name, place=place) for s in t] for t in templates]
        for t, story in enumerate(stories):
            k = rng.randint(1, len(story) - 1)
            ctx, ending = " ".join(story[:k]), story[k]
            pool = sorted({s for j, other in enumerate(stories) if j != t for s in other} - set(story))
            if len(pool) < 3:
                raise RuntimeError("the world has too few distinct story steps for 4-option items")
            options = [ending, *rng.sample(pool, 3)]
            rng.shuffle(options)
            if train.overlaps(ctx):
                dropped += 1
                continue
            rows.append({"query": ctx, "choices": options, "label": options.index(ending), "story": t})
    return rows, dropped


# ------------------------------------------------------------------------------------------ language-ability items


_QA_INTRO = "read the text and answer ."
# The QA prompt ends with the answer cue in the item's language (doc_to_text "{{prompt}} {{cue}}"), as lm-eval's
# MLQA and XQuAD prompts end with "Answer:": zero-shot, asked the way question-answer text is written.
_QA_CUE = "answer :"


def _qa_row(world, lang, qid, sentences, k, answer, question, train, from_right=True):
    """One extractive-QA row in ``lang``: the answer is ``answer``'s occurrence in context sentence ``k``
    (its last occurrence there when ``from_right``, else its first)."""
    translated = [world.translate(s, lang) for s in sentences]
    ans = world.translate(answer, lang)
    find = translated[k].rindex if from_right else translated[k].index
    start = sum(len(t) + 1 for t in translated[:k]) + find(ans)
    ctx = " ".join(translated)
    q = world.translate(question, lang)
    prompt = f"{world.translate(_QA_INTRO, lang)} {world.translate('text :', lang)} {ctx} " \
             f"{world.translate('question :', lang)} {q}"
    if ctx[start:start + len(ans)] != ans:  # pragma: no cover - guards the offset arithmetic
        raise AssertionError(f"{qid}: answer offset {start} does not point at {ans!r} in {ctx!r}")
    english = f"{_QA_INTRO} text : {' '.join(sentences)} question : {question}"
    if train.overlaps(prompt) or train.overlaps(english):
        return None
    return {"id": qid, "context": ctx, "question": q, "prompt": prompt, "cue": world.translate(_QA_CUE, lang),
            "answers": {"text": [ans], "answer_start": [start]}, "language": lang}


def xquad_items(world: World, train: TrainingInstructions, n: int) -> dict[str, tuple[list[dict], int]]:
    """Parallel colour questions over contexts of the world's colour facts: the same ``n`` items in every non-English
    language."""
    rng = _rng(world, "xquad")
    items = []
    for i in range(n):
        names = rng.sample(sorted(world.facts), rng.randint(2, 3))
        colours = [world.facts[a].colour for a in names]
        k = rng.randrange(len(names))
        items.append((f"sbx-{i:04d}", [f"the {a} is {c} ." for a, c in zip(names, colours, strict=True)], k, colours[k],
                      f"what colour is the {names[k]} ?"))
    out = {}
    for lang in world.other_languages:
        rows, dropped = [], 0
        for qid, sents, k, ans, q in items:
            r = _qa_row(world, lang, f"{qid}-{lang}", sents, k, ans, q, train)
            if r is None:
                dropped += 1
            else:
                rows.append(r)
        out[lang] = (rows, dropped)
    return out


def mlqa_items(world: World, train: TrainingInstructions, n: int) -> dict[str, tuple[list[dict], int]]:
    """Per-language place questions ("where is the X found ?") over contexts of the world's place facts, drawn
    separately for each language."""
    out = {}
    for lang in world.other_languages:
        rng = _rng(world, f"mlqa-{lang}")
        rows, dropped = [], 0
        for i in range(n):
            names = rng.sample(sorted(world.facts), rng.randint(2, 3))
            where = [world.facts[a].place for a in names]
            k = rng.randrange(len(names))
            sents = [f"the {a} is found in the {p} ." for a, p in zip(names, where, strict=True)]
            # the answer (the place) ends sentence k: find it from the right
            r = _qa_row(world, lang, f"sbm-{i:04d}-{lang}", sents, k, where[k],
                        f"where is the {names[k]} found ?", train)
            if r is None:
                dropped += 1
            else:
                rows.append(r)
        out[lang] = (rows, dropped)
    return out


def xlsum_items(world: World, train: TrainingInstructions, n: int) -> dict[str, tuple[list[dict], int]]:
    """Short texts about one thing (its facts, shuffled, plus a sentence about another thing) and a reference
    summary "the text is about the X , <category> that is <colour> ." in each non-English language."""
    out = {}
    for lang in world.other_languages:
        rng = _rng(world, f"xlsum-{lang}")
        rows, dropped = [], 0
        for i in range(n):
            main, other = rng.sample(sorted(world.facts), 2)
            f, g = world.facts[main], world.facts[other]
            sents = [f"the {main} is {ARTICLE[f.category]} .", f"the {main} is {f.colour} .",
                     f"the {main} is found in the {f.place} .", f"the {other} is {g.colour} ."]
            rng.shuffle(sents)
            text = world.translate(" ".join(sents), lang)
            summary = world.translate(f"the text is about the {main} , {ARTICLE[f.category]} that is {f.colour} .",
                                      lang)
            english = f"summarize the text . text : {' '.join(sents)}"
            prompt = world.translate(english, lang)
            if train.overlaps(prompt) or train.overlaps(english):
                dropped += 1
                continue
            rows.append({"id": f"sbs-{i:04d}-{lang}", "text": text, "summary": summary, "prompt": prompt,
                         "title": main, "language": lang})
        out[lang] = (rows, dropped)
    return out


# ------------------------------------------------------------------------------------------ files


def bench_dir(world_dir: Path) -> Path:
    """``<world dir>/bench``: where a world's benchmark files and manifest live."""
    return Path(world_dir) / "bench"


def untranslated_words(world: World) -> list[str]:
    """English words of the benchmark templates that the world's lexicon cannot translate (left in English)."""
    templates = [_QA_INTRO, _QA_CUE, "text :", "question :", "what colour is the", "where is the found ?",
                 "summarize the text .", "the text is about the , that is .", "the is found in the ."]
    lexicon = next(iter(world.lexicon.values()), {})
    return sorted({w for t in templates for w in _WORD.findall(t)} - set(lexicon))


def build_bench(world: World, out_dir: Path, n_la: int = 40) -> dict:
    """Write every sandbox benchmark file (once per world and version) and return the manifest.

    ``n_la``: items drawn per language for MLQA/XQuAD/XL-Sum (before overlap removal). The task-ability
    sets are as large as the world makes them (IFEval/AlpacaEval: the held-out test split of every family).
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    want = {"version": BENCH_VERSION, "world_id": world.spec.world_id(), "n_la": n_la}
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        if all(manifest.get(k) == v for k, v in want.items()):
            return manifest
    train = TrainingInstructions(world)
    files, counts, dropped = {}, {}, {}

    def put(task, rows, drop):
        if not rows:
            raise RuntimeError(f"sandbox benchmark {task}: every item overlapped training data ({drop} dropped)")
        # Shuffled (seeded), so that a document limit takes a mix of task families and subjects.
        _rng(world, f"order-{task}").shuffle(rows)
        if task == "sb_ifeval":
            rows = [{**r, "key": k} for k, r in enumerate(rows)]
        files[task] = str(write_jsonl(out_dir / f"{task}.jsonl", rows))
        counts[task], dropped[task] = len(rows), drop

    put("sb_ifeval", *ifeval_items(world, train))
    put("sb_alpacaeval", *alpacaeval_items(world, train))
    put("sb_mmlu", *mmlu_items(world, train))
    put("sb_hellaswag", *hellaswag_items(world, train))
    for prefix, fn in (("sb_xquad", xquad_items), ("sb_mlqa", mlqa_items), ("sb_xlsum", xlsum_items)):
        for lang, (rows, drop) in fn(world, train, n_la).items():
            put(f"{prefix}_{lang}", rows, drop)
    manifest = {**want, "files": files, "counts": counts, "dropped_overlap": dropped,
                "languages": world.other_languages, "untranslated_template_words": untranslated_words(world),
                "reference_generator": REFERENCE_GENERATOR}
    write_json(manifest_path, manifest)
    return manifest


def local_data(manifest: dict) -> dict[str, str]:
    """``task -> file`` for :func:`cft_utils.evaluation.tasks.manager.task_manager` (one world's bench files)."""
    return dict(manifest["files"])


def language_tasks(languages: list[str]) -> dict[str, dict[str, str]]:
    """The LA benchmark -> {language: task} mapping for a world's non-English languages."""
    return {b: {lang: f"{p}_{lang}" for lang in languages} for b, p in LA_BENCHMARKS.items()}


__all__ = ["build_bench", "local_data", "language_tasks", "reference_output", "TrainingInstructions",
           "ifeval_items", "alpacaeval_items", "mmlu_items", "hellaswag_items", "xquad_items", "mlqa_items",
           "xlsum_items", "untranslated_words", "bench_dir", "CONCEPTS"]
